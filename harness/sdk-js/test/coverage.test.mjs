// Who holds the keys, end to end against the real binary (raw HTTPS; there is no SDK for these
// emulator extensions): the demo world's "Contoso Operations" environment carries a mixed
// composition (finance and operations apps with Power Platform integration, two Commerce Scale
// Units in two geos, a stand-alone RCS add-in, a flow, connector and environment settings, LCS
// metadata). The test links it to an enterprise policy on the demo key, adds a flow after the
// link, revokes the policy identity's access, and checks component by component that what the
// coverage report calls covered refuses reads (423 EnvironmentLocked) and what it does not keeps
// answering, that the LockCoverage audit event names both sides, and that restoring access and
// re-enabling brings everything back.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import { T, startServer, rawRequest, assertNo5xx, eventually, uniqueName } from "./helpers.mjs";

const BAP = "/providers/Microsoft.BusinessAppPlatform";
const SUB = "00000000-0000-4000-8000-000000000001";
const RG = "cmk-rg";
const TENANT = "72f988bf-0000-4000-8000-00000000c0de";
const KV_ADMIN_APP = "0a000001-0000-4000-8000-00000000a001";
const OPS = "a1b2c3d4-0000-4000-8000-000000000103";
const VAULT_ID = `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.KeyVault/vaults/cmkemu`;

let server;
let armToken;
let bapToken;

async function mint(audience) {
  const r = await server.raw("POST", "/_emulator/tokens", { body: { principal: KV_ADMIN_APP, audience } });
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

const arm = (method, p, body) => server.raw(method, p, { body, headers: { authorization: `Bearer ${armToken}` } });
const bap = (method, p, body) => server.raw(method, p, { body, headers: { authorization: `Bearer ${bapToken}` } });
const comp = (id) => `${BAP}/environments/${OPS}/components/${id}`;

async function coverage() {
  const r = await bap("GET", `${BAP}/scopes/admin/environments/${OPS}/coverage?api-version=2021-04-01`);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

function accountsOf(token) {
  return rawRequest(server.rawAgent, `https://${OPS}.crm.localhost:${server.port}/api/data/v9.2/accounts`, {
    headers: { authorization: `Bearer ${token}` },
  });
}

async function waitOperation(r) {
  assert.equal(r.status, 202, r.text);
  const loc = new URL(r.headers.location);
  let op;
  await eventually(async () => {
    op = await bap("GET", loc.pathname + loc.search);
    return op.status === 200 && ["Succeeded", "Failed"].includes(op.json.state.id);
  }, { what: "the lifecycle operation to end", timeoutMs: 30_000 });
  assert.equal(op.json.state.id, "Succeeded", op.text);
}

async function setAccess(oid, verb) {
  const r = await arm("PUT", `${VAULT_ID}/accessPolicies/${verb}?api-version=2023-07-01`, {
    properties: { accessPolicies: [{ tenantId: TENANT, objectId: oid, permissions: { keys: ["get", "wrapKey", "unwrapKey"] } }] },
  });
  assert.equal(r.status, 200, r.text);
}

before(async () => {
  server = await startServer();
  armToken = await mint("https://management.azure.com");
  bapToken = await mint("https://api.bap.microsoft.com");
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("CMK coverage across an environment's components (lock shows the edges)", () => {
  it("locks a mixed composition: covered components go dark, the rest keep answering", T, async () => {
    // the demo composition on the Microsoft-managed key: every component readable
    let rep = await coverage();
    assert.equal(rep.environment.keyManagedBy, "Microsoft");
    assert.equal(rep.financeOperationsIntegration.enabled, true);
    assert.equal(rep.residency.geo, "unitedstates");
    assert.ok(rep.components.length >= 9, JSON.stringify(rep.components.map((c) => c.name)));
    for (const c of rep.components) {
      assert.equal(c.keyManagedBy, "Microsoft", c.name);
      const w = await bap("PUT", `${comp(c.id)}/records/e2e?api-version=2023-06-01`, { secret: `${c.name} e2e` });
      assert.equal(w.status, 200, `${c.name}: ${w.text}`);
    }

    // an enterprise policy on the demo key, its identity granted, the environment linked
    const name = uniqueName("covpol");
    const pol = await arm("PUT", `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.PowerPlatform/enterprisePolicies/${name}?api-version=2020-10-30`, {
      location: "unitedstates", kind: "Encryption", identity: { type: "SystemAssigned" },
      properties: { encryption: { state: "Enabled", keyVault: { id: VAULT_ID, key: { name: "demo-key", version: "" } } } },
    });
    assert.ok([200, 201].includes(pol.status), pol.text);
    const oid = pol.json.identity.principalId;
    const systemId = pol.json.properties.systemId;
    await setAccess(oid, "add");
    await waitOperation(await bap("POST", `${BAP}/environments/${OPS}/enterprisePolicies/Encryption/link?api-version=2019-10-01`, { SystemId: systemId }));

    // a flow created after the link is covered
    const nf = await bap("POST", `${BAP}/environments/${OPS}/components?api-version=2023-06-01`, { kind: "powerAutomateFlow", name: "Flow after CMK" });
    assert.equal(nf.status, 201, nf.text);
    assert.equal((await bap("PUT", `${comp(nf.json.id)}/records/e2e?api-version=2023-06-01`, { secret: "Flow after CMK e2e" })).status, 200);

    // the sequencing rule holds on a linked environment without integration (demo Production)
    const prod = "a1b2c3d4-0000-4000-8000-000000000101";
    await waitOperation(await bap("POST", `${BAP}/environments/${prod}/enterprisePolicies/Encryption/link?api-version=2019-10-01`, { SystemId: systemId }));
    const seq = await bap("POST", `${BAP}/environments/${prod}/financeOperationsIntegration/enable?api-version=2023-06-01`);
    assert.equal(seq.status, 400, seq.text);
    assert.equal(seq.json.error.code, "CustomerManagedKeyEnabledBeforeIntegration");

    rep = await coverage();
    assert.equal(rep.environment.keyManagedBy, "Customer");
    const expectCovered = {
      Finance: true, "Commerce headquarters": true, "CSU East US": true, "CSU West Europe": false,
      "Tax Calculation (stand-alone RCS)": false, "Invoice approval flow": false, "SharePoint connection": false,
      "Environment settings": false, "LCS project metadata": false, "Flow after CMK": true,
    };
    for (const c of rep.components) {
      assert.ok(c.name in expectCovered, `unexpected component ${c.name}`);
      assert.equal(c.cmkApplies, expectCovered[c.name], `${c.name}: ${JSON.stringify(c.rule)}`);
      assert.equal(c.keyManagedBy, expectCovered[c.name] ? "Customer" : "Microsoft", c.name);
      assert.match(c.rule.seed, /^seeds\/00[0-4]_[0-9a-f]{16}\.txt$/);
      assert.ok(c.rule.quote.length > 20);
    }

    // lock: revoke the identity's access
    await setAccess(oid, "remove");
    await eventually(async () => (await coverage()).environment.locked === true, { what: "the lock" });
    rep = await coverage();
    assert.equal(rep.residency.geo, "unitedstates", "CMK does not move data");
    assert.equal((await accountsOf(bapToken)).status, 423);
    for (const c of rep.components) {
      const r = await bap("GET", `${comp(c.id)}/records/e2e?api-version=2023-06-01`);
      if (expectCovered[c.name]) {
        assert.equal(r.status, 423, `${c.name} must be dark: ${r.text}`);
        assert.equal(r.json.error.code, "EnvironmentLocked");
        assert.equal(c.readable, false, c.name);
        assert.match(c.unreadableReason, /locked/);
      } else {
        assert.equal(r.status, 200, `${c.name} must stay readable: ${r.text}`);
        assert.equal(r.json.secret, `${c.name} e2e`);
        assert.equal(c.readable, true, c.name);
      }
    }
    const nCovered = Object.values(expectCovered).filter(Boolean).length;
    assert.equal(rep.summary.unreadable, nCovered);
    assert.equal(rep.summary.readable, rep.components.length - nCovered);

    const audit = await server.raw("GET", "/_emulator/audit?match=LockCoverage");
    assert.equal(audit.status, 200, audit.text);
    const ev = audit.json.value.filter((e) => e.target.includes(OPS));
    assert.equal(ev.length, 1, audit.text);
    assert.match(ev[0].detail, /went dark.*Finance \(finance, rule fno-integrated\)/);
    assert.match(ev[0].detail, /still readable.*CSU West Europe \(commerceScaleUnit, rule commerce-other-geo\)/);

    // restore and re-enable: everything readable again
    await setAccess(oid, "add");
    await eventually(async () => (await bap("POST", `${BAP}/scopes/admin/environments/${OPS}/enable?api-version=2021-04-01`)).status === 200, { what: "re-enable" });
    for (const c of (await coverage()).components) {
      const r = await bap("GET", `${comp(c.id)}/records/e2e?api-version=2023-06-01`);
      assert.equal(r.status, 200, `${c.name}: ${r.text}`);
    }
  });
});

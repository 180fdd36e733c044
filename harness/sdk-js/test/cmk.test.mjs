// Power Platform customer-managed keys (CMK) end to end, with the unchanged Azure SDK clients for
// everything Azure has an SDK for (@azure/arm-keyvault vaults and access policies,
// @azure/keyvault-keys keys, @azure/arm-resourcesdeployments for Microsoft's enterprise-policy
// template, @azure/arm-resources for policies and resource groups) and raw HTTPS for what has
// none (role assignments, the BAP admin API, Dataverse-style records, /_emulator/*).
//
// One server (--pp-operation-ms 800, so a link/unlink is observable: NotStarted, then Running),
// cases in order:
//   1. the documented flow: vault + key, policy deployment, identity access, Reader for the
//      Power Platform admin (403 without it), link (202, operation polled, environment disabled
//      meanwhile), write a record, revoke -> locked (423 EnvironmentLocked, policy Unhealthy),
//      restore -> Healthy but still locked, re-enable -> the record reads back.
//   2. every lock trigger, one `it` each, with restore + re-enable and the audit's Lock cause.
//   3. rotation without downtime (follow the key's current version; a pinned policy stays).
//   4. swap to another policy while linked, then revert to the Microsoft-managed key.
//   5. lock expiry by the emulated clock (sandbox: 7 days -> deleted).
//   6. key deleted and purged by the clock -> permanently unrecoverable.
//   7. no record plaintext anywhere in the data dir.
// The emulator clock only moves forward, so cases 5 and 6 come last but one and account for
// what earlier cases left (a sandbox locked in case 2 expires in case 5, on purpose).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { readFileSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { KeyVaultManagementClient } from "@azure/arm-keyvault";
import { ResourceManagementClient } from "@azure/arm-resources";
import { DeploymentsClient } from "@azure/arm-resourcesdeployments";

import { T, startServer, rawRequest, assertNo5xx, recordingCredential, sleep, withWire, DAY_MS } from "./helpers.mjs";

const TENANT = "72f988bf-0000-4000-8000-00000000c0de";
const SUB = "00000000-0000-4000-8000-000000000001";
const RG = "cmk-rg";
const BAP = "/providers/Microsoft.BusinessAppPlatform";
const EP_API = "2020-10-30";
const LINK_API = "api-version=2019-10-01";
const ENV_API = "api-version=2021-04-01";
const RA_API = "api-version=2022-04-01";
const POLL = { updateIntervalInMs: 50 };
const KKPOLL = { intervalInMs: 50 };
const OP_MS = 800;

const PROD = "a1b2c3d4-0000-4000-8000-000000000101";
const SANDBOX = "a1b2c3d4-0000-4000-8000-000000000102";
const PP_ADMIN = { clientId: "0a000002-0000-4000-8000-00000000a002", oid: "0b000002-0000-4000-8000-00000000b002" };
const NO_RIGHTS = { clientId: "0a000004-0000-4000-8000-00000000a004", oid: "0b000004-0000-4000-8000-00000000b004" };
const ROLE_READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7";
const ROLE_CSEU = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
const PERMS = ["get", "wrapKey", "unwrapKey"];
const VERSION_RE = /^[0-9a-f]{32}$/;

const here = path.dirname(fileURLToPath(import.meta.url));
const templates = path.join(here, "..", "..", "..", "fixtures", "templates");

let server;
let kvArm; // KeyVaultManagementClient
let resArm; // ResourceManagementClient
let deployments; // DeploymentsClient
let ppToken; // pp-admin-app, audience BAP
let noRightsToken;

/** State the later cases build on (case 1 sets it up). */
const doc = {};

const vaultId = (name, rg = RG) => `/subscriptions/${SUB}/resourceGroups/${rg}/providers/Microsoft.KeyVault/vaults/${name}`;
const policyArmId = (name, rg = RG) => `/subscriptions/${SUB}/resourceGroups/${rg}/providers/Microsoft.PowerPlatform/enterprisePolicies/${name}`;

// ---------------------------------------------------------------------------------------------
// small helpers (raw HTTPS for the APIs without an SDK)
// ---------------------------------------------------------------------------------------------

async function mint(principal, audience) {
  const r = await server.raw("POST", "/_emulator/tokens", { body: { principal, audience } });
  assert.equal(r.status, 200, `POST /_emulator/tokens ${principal} -> ${r.status} ${r.text}`);
  return r.json.access_token;
}

function show(method, p, r) {
  return `${method} ${p} -> ${r.status} ${r.text}`;
}

/** BAP admin API call as the Power Platform admin (or the given token). */
async function bap(method, p, body, token = ppToken) {
  const r = await server.raw(method, p, { body, headers: { authorization: `Bearer ${token}` } });
  r.show = show(method, p, r);
  return r;
}

/** ARM call with an opaque token (permissive mode: the default principal kv-admin-app). */
async function armRaw(method, p, body) {
  const r = await server.raw(method, p, { body, headers: { authorization: "Bearer cmkemu-sdk-js-test-token" } });
  r.show = show(method, p, r);
  return r;
}

async function getEnv(id) {
  return bap("GET", `${BAP}/environments/${id}?api-version=2016-11-01`);
}

async function envProps(id) {
  const r = await getEnv(id);
  assert.equal(r.status, 200, r.show);
  return { props: r.json.properties, show: r.show };
}

function instance(id) {
  return `https://${id}.crm.localhost:${server.port}`;
}

async function records(id, method, p, body, headers = {}) {
  const url = `${instance(id)}/api/data/v9.2/${p}`;
  const r = await rawRequest(server.rawAgent, url, { method, body, headers: { authorization: `Bearer ${ppToken}`, ...headers } });
  r.show = show(method, url, r);
  return r;
}

async function writeRecord(envId, fields) {
  const r = await records(envId, "POST", "accounts", fields, { prefer: "return=representation" });
  assert.equal(r.status, 201, r.show);
  return r.json.accountid;
}

async function readRecord(envId, rid) {
  return records(envId, "GET", `accounts(${rid})`);
}

async function assertReadable(envId, rid, what, expect = {}) {
  const r = await readRecord(envId, rid);
  assert.equal(r.status, 200, `${what}: the record should be readable: ${r.show}`);
  for (const [k, v] of Object.entries(expect)) assert.equal(r.json[k], v, `${what}: ${k}: ${r.show}`);
  return r;
}

async function assertLocked(envId, rid, what, causeRe) {
  const r = await readRecord(envId, rid);
  assert.equal(r.status, 423, `${what}: the record should answer 423: ${r.show}`);
  assert.equal(r.json?.error?.code, "EnvironmentLocked", `${what}: ${r.show}`);
  if (causeRe) assert.match(r.json.error.message, causeRe, `${what}: the lock message should name the cause: ${r.show}`);
  const { props, show: s } = await envProps(envId);
  assert.equal(props.states.runtime.id, "Disabled", `${what}: ${s}`);
  assert.equal(props.states.runtime.runtimeReasonCode, "CustomerManagedKeyLocked", `${what}: ${s}`);
  assert.ok(props.cmkLock, `${what}: properties.cmkLock while locked: ${s}`);
  return { record: r, props };
}

async function reenable(envId, token = ppToken) {
  return bap("POST", `${BAP}/environments/${envId}/enable?${ENV_API}`, undefined, token);
}

/** GET /_emulator/audit since `since`, filtered by `match`; events of envId only when given. */
async function audit(since, match, envId) {
  const q = `/_emulator/audit?since=${since}&limit=1000&match=${encodeURIComponent(match)}`;
  const r = await server.raw("GET", q);
  assert.equal(r.status, 200, show("GET", q, r));
  const events = r.json.value.filter((e) => !envId || (e.target ?? "").includes(envId));
  return { events, lastId: r.json.lastId, text: JSON.stringify(events) };
}

async function auditMark() {
  return (await audit(0, "__nothing__")).lastId;
}

async function policy(name, rg = RG) {
  return resArm.resources.getById(policyArmId(name, rg), EP_API);
}

async function policyHealth(name, rg = RG) {
  return (await policy(name, rg)).properties.healthStatus;
}

/** A vault with soft delete (7 days) and purge protection, through @azure/arm-keyvault. */
async function createVault(name) {
  const v = await kvArm.vaults.createOrUpdate(
    RG,
    name,
    {
      location: "eastus",
      properties: {
        tenantId: TENANT,
        sku: { family: "A", name: "standard" },
        accessPolicies: [],
        enableSoftDelete: true,
        softDeleteRetentionInDays: 7,
        enablePurgeProtection: true,
      },
    },
    POLL,
  );
  assert.equal(v.properties.enablePurgeProtection, true);
  assert.equal(v.properties.softDeleteRetentionInDays, 7);
  return v;
}

function accessPolicy(oid, keys) {
  return { properties: { accessPolicies: [{ tenantId: TENANT, objectId: oid, permissions: { keys } }] } };
}

async function grant(vault, oid, keys = PERMS) {
  await kvArm.vaults.updateAccessPolicy(RG, vault, "add", accessPolicy(oid, keys));
}

async function revoke(vault, oid, keys = PERMS) {
  await kvArm.vaults.updateAccessPolicy(RG, vault, "remove", accessPolicy(oid, keys));
}

async function roleAssignment(method, scope, name, role, principalId) {
  const body =
    method === "PUT"
      ? {
          properties: {
            roleDefinitionId: `/subscriptions/${SUB}/providers/Microsoft.Authorization/roleDefinitions/${role}`,
            principalId,
            principalType: "ServicePrincipal",
          },
        }
      : undefined;
  return armRaw(method, `${scope}/providers/Microsoft.Authorization/roleAssignments/${name}?${RA_API}`, body);
}

async function grantReader(policyId, oid = PP_ADMIN.oid) {
  const r = await roleAssignment("PUT", policyId, randomUUID(), ROLE_READER, oid);
  assert.equal(r.status, 201, r.show);
}

/** A policy through the generic ARM client (the documented template shape). */
async function createPolicy(name, vault, { keyName = "cmk", keyVersion = "", rg = RG } = {}) {
  const p = await resArm.resources.beginCreateOrUpdateByIdAndWait(
    policyArmId(name, rg),
    EP_API,
    {
      location: "unitedstates",
      kind: "Encryption",
      identity: { type: "SystemAssigned" },
      properties: {
        lockbox: null,
        encryption: { state: "Enabled", keyVault: { id: vaultId(vault), key: { name: keyName, version: keyVersion } } },
        networkInjection: null,
      },
    },
    POLL,
  );
  return { name, rg, id: p.id, systemId: p.properties.systemId, oid: p.identity.principalId, vault };
}

/** POST link/unlink; returns the raw 202 answer (or the refusal). */
async function linkCall(envId, verb, systemId, token = ppToken) {
  return bap("POST", `${BAP}/environments/${envId}/enterprisePolicies/Encryption/${verb}?${LINK_API}`, systemId ? { SystemId: systemId } : {}, token);
}

/** Polls a lifecycle operation to its end; returns the final body and the states seen. */
async function pollOperation(location, { during } = {}) {
  const seen = [];
  let op;
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const r = await rawRequest(server.rawAgent, location, { headers: { authorization: `Bearer ${ppToken}` } });
    assert.equal(r.status, 200, show("GET", location, r));
    op = r.json;
    const st = op.state?.id;
    if (seen[seen.length - 1] !== st) seen.push(st);
    if (st === "Succeeded" || st === "Failed") return { op, seen, text: r.text };
    if (during) await during(st);
    await sleep(40);
  }
  throw new Error(`operation ${location} did not end within 30 s; states seen ${seen.join(" -> ")}`);
}

/** link (or unlink) and wait for Succeeded. */
async function linkAndWait(envId, verb, systemId) {
  const r = await linkCall(envId, verb, systemId);
  assert.equal(r.status, 202, r.show);
  const { op, seen, text } = await pollOperation(r.headers.location);
  assert.equal(op.state.id, "Succeeded", `${verb} ${envId}: states ${seen.join(" -> ")}; ${text}`);
  return op;
}

/** A new environment through the BAP API (creation completes at once). */
async function createEnvironment(displayName, sku) {
  const r = await bap("POST", `${BAP}/environments?api-version=2023-06-01`, {
    location: "unitedstates",
    properties: { displayName, environmentSku: sku, governanceConfiguration: { protectionLevel: "Standard" } },
  });
  assert.equal(r.status, 202, r.show);
  const { op, text } = await pollOperation(r.headers.location);
  assert.equal(op.state.id, "Succeeded", text);
  return r.json.name;
}

/** A vault + key "cmk" + policy whose identity holds get/wrapKey/unwrapKey, Reader for the PP admin. */
async function cmkSetup(vault, policyName, { keyVersion } = {}) {
  await createVault(vault);
  const key = await server.keyClient(vault).createRsaKey("cmk", { keySize: 2048 });
  const pol = await createPolicy(policyName, vault, { keyVersion: keyVersion ?? "" });
  await grant(vault, pol.oid);
  await grantReader(pol.id);
  return { ...pol, key, keys: server.keyClient(vault) };
}

/** Every file under dir, recursively. */
function walk(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) walk(p, out);
    else if (st.isFile()) out.push(p);
  }
  return out;
}

function filesContaining(dir, marker) {
  const needles = [Buffer.from(marker, "utf8"), Buffer.from(marker, "utf16le")];
  const hits = [];
  for (const f of walk(dir)) {
    let buf;
    try {
      buf = readFileSync(f);
    } catch {
      continue; // vanished meanwhile (a journal)
    }
    for (const n of needles) if (buf.includes(n)) hits.push(`${path.relative(dir, f)} (${n === needles[0] ? "utf8" : "utf16le"})`);
  }
  return hits;
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  server = await startServer({ extraArgs: ["--pp-operation-ms", String(OP_MS)] });
  const opts = () => ({ endpoint: server.url, ...server.clientOptions(undefined, {}) });
  kvArm = new KeyVaultManagementClient(recordingCredential(), SUB, opts());
  resArm = new ResourceManagementClient(recordingCredential(), SUB, opts());
  deployments = new DeploymentsClient(recordingCredential(), SUB, opts());
  ppToken = await mint(PP_ADMIN.clientId, "https://api.bap.microsoft.com");
  noRightsToken = await mint(NO_RIGHTS.clientId, "https://api.bap.microsoft.com");
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("Power Platform customer-managed keys (SDK + BAP API)", () => {
  // -------------------------------------------------------------------------------------------
  it("1. the documented flow: vault, key, policy deployment, access, Reader, link, lock, restore, re-enable", T, async (t) => {
    await withWire(server, async () => {
      // Key Vault admin: vault with soft delete + purge protection, RSA 2048 key
      await createVault("cmkdoc");
      const keys = server.keyClient("cmkdoc");
      const key = await keys.createRsaKey("cmk", { keySize: 2048 });
      assert.match(key.properties.version, VERSION_RE);

      // the enterprise policy: Microsoft's template, placeholders filled, through DeploymentsClient
      const values = {
        EnterprisePolicyName: "cmkdoc-policy",
        "location where EnterprisePolicy needs to be created": "unitedstates",
        keyVaultId: vaultId("cmkdoc"),
        keyName: "cmk",
        keyVersion: "",
      };
      const text = readFileSync(path.join(templates, "enterprise-policy.json"), "utf8").replace(/\{([A-Za-z][A-Za-z ]*)\}/g, (m, n) => {
        if (!(n in values)) throw new Error(`no value for placeholder ${m}`);
        return JSON.stringify(values[n]);
      });
      const dep = await deployments.deployments.createOrUpdate(
        RG,
        "cmkdoc-policy-deployment",
        { properties: { mode: "Incremental", template: JSON.parse(text), parameters: {} } },
        POLL,
      );
      assert.equal(dep.properties.provisioningState, "Succeeded");
      const pid = dep.properties.outputResources[0].id;
      assert.equal(pid.toLowerCase(), policyArmId("cmkdoc-policy").toLowerCase());
      const p = await policy("cmkdoc-policy");
      assert.match(p.properties.systemId, /^\/regions\/unitedstates\/providers\/Microsoft\.PowerPlatform\/enterprisePolicies\/[0-9a-f-]{36}$/);
      assert.ok(p.identity.principalId, "the policy has a system-assigned identity");
      Object.assign(doc, { vault: "cmkdoc", policyName: "cmkdoc-policy", id: p.id, systemId: p.properties.systemId, oid: p.identity.principalId, keys, key });

      // the policy identity: get, wrapKey, unwrapKey
      await grant("cmkdoc", doc.oid);
      const v = await kvArm.vaults.get(RG, "cmkdoc");
      const ap = v.properties.accessPolicies.find((a) => a.objectId === doc.oid);
      assert.deepEqual([...ap.permissions.keys].sort(), [...PERMS].sort());
    });

    // without Reader on the policy: 403 (pp-admin-app has no role yet; no-rights-app never has)
    for (const [who, token] of [["no-rights-app", noRightsToken], ["pp-admin-app", ppToken]]) {
      const r = await linkCall(PROD, "link", doc.systemId, token);
      assert.equal(r.status, 403, `${who} without Reader: ${r.show}`);
      assert.match(r.json.error.message, /Reader/, r.show);
    }
    const still = await envProps(PROD);
    assert.equal(still.props.protectionStatus.keyManagedBy, "Microsoft", still.show);
    assert.equal(still.props.states.runtime.id, "Enabled", still.show);

    // the Power Platform admin gets Reader on the policy
    await grantReader(doc.id);

    // a record before linking
    doc.rid = await writeRecord(PROD, { name: "Fabrikam (before CMK)", revenue: 1 });

    // link -> 202; the environment is disabled while the operation runs
    const lr = await linkCall(PROD, "link", doc.systemId);
    assert.equal(lr.status, 202, lr.show);
    const location = lr.headers.location;
    assert.match(location, /\/providers\/Microsoft\.BusinessAppPlatform\/lifecycleOperations\/[0-9a-f-]{36}/, lr.show);
    assert.ok(lr.headers["operation-location"], `Operation-Location: ${JSON.stringify(lr.headers)}`);
    assert.ok(lr.headers["retry-after"], `Retry-After: ${JSON.stringify(lr.headers)}`);
    let checkedDuring = false;
    const during = async (state) => {
      if (checkedDuring) return;
      checkedDuring = true;
      const { props, show: s } = await envProps(PROD);
      assert.equal(props.states.runtime.id, "Disabled", `while ${state}: ${s}`);
      assert.equal(props.states.runtime.runtimeReasonCode, "CustomerManagedKeyOperationInProgress", `while ${state}: ${s}`);
      assert.equal(props.enterprisePolicies?.customerManagedKeys?.linkStatus, "Linking", `while ${state}: ${s}`);
      const rec = await readRecord(PROD, doc.rid);
      assert.equal(rec.status, 423, `record while ${state}: ${rec.show}`);
      assert.equal(rec.json.error.code, "EnvironmentDisabled", rec.show);
      const again = await linkCall(PROD, "link", doc.systemId);
      assert.equal(again.status, 409, `a second link while ${state}: ${again.show}`);
      assert.equal(again.json.error.code, "OperationInProgress", again.show);
    };
    const { op, seen, text } = await pollOperation(location, { during });
    assert.equal(op.state.id, "Succeeded", `states ${seen.join(" -> ")}: ${text}`);
    assert.ok(seen.includes("NotStarted") || seen.includes("Running"), `the operation was observed before its end: ${seen.join(" -> ")}`);
    assert.ok(checkedDuring, `the environment was checked while the operation ran (states ${seen.join(" -> ")})`);
    t.diagnostic(`link operation states observed: ${seen.join(" -> ")}`);

    const linked = await envProps(PROD);
    assert.equal(linked.props.protectionStatus.keyManagedBy, "Customer", linked.show);
    assert.equal(linked.props.states.runtime.id, "Enabled", linked.show);
    const cmk = linked.props.enterprisePolicies.customerManagedKeys;
    assert.equal(cmk.linkStatus, "Linked", linked.show);
    assert.equal(cmk.systemId, doc.systemId, linked.show);
    assert.equal(cmk.keyVersion, doc.key.properties.version, linked.show);
    assert.equal(await policyHealth(doc.policyName), "Healthy");
    await assertReadable(PROD, doc.rid, "after link", { name: "Fabrikam (before CMK)" });
    doc.rid2 = await writeRecord(PROD, { name: "Fabrikam (under CMK)", revenue: 2 });

    // revoke the identity's access -> locked
    await revoke("cmkdoc", doc.oid);
    const { props: lp } = await assertLocked(PROD, doc.rid2, "access revoked", /lacks the get key permission/);
    assert.equal(lp.cmkLock.retentionDays, 30, JSON.stringify(lp.cmkLock));
    assert.ok(lp.cmkLock.lockedSince && lp.cmkLock.scheduledDeletionTime && lp.cmkLock.reason, JSON.stringify(lp.cmkLock));
    assert.equal(Date.parse(lp.cmkLock.scheduledDeletionTime) - Date.parse(lp.cmkLock.lockedSince), 30 * DAY_MS, JSON.stringify(lp.cmkLock));
    assert.equal(await policyHealth(doc.policyName), "Unhealthy");
    const refused = await reenable(PROD);
    assert.equal(refused.status, 423, `re-enable while the key is unusable: ${refused.show}`);

    // restore -> Healthy, still locked until re-enabled
    await grant("cmkdoc", doc.oid);
    assert.equal(await policyHealth(doc.policyName), "Healthy");
    const stillLocked = await readRecord(PROD, doc.rid2);
    assert.equal(stillLocked.status, 423, `restored but not re-enabled: ${stillLocked.show}`);
    const en = await reenable(PROD);
    assert.equal(en.status, 200, en.show);
    assert.equal(en.json.properties.states.runtime.id, "Enabled", en.show);
    await assertReadable(PROD, doc.rid2, "after re-enable", { name: "Fabrikam (under CMK)", revenue: 2 });
    await assertReadable(PROD, doc.rid, "after re-enable", { name: "Fabrikam (before CMK)" });
  });

  // -------------------------------------------------------------------------------------------
  describe("2. each lock trigger locks, restore + re-enable unlocks", () => {
    /** break -> 423 with cause + audit Lock naming it; fix -> Healthy, still 423; re-enable -> 200. */
    async function trigger(what, brk, fix, causeRe) {
      assert.ok(doc.systemId && doc.rid2, "case 1 linked Contoso Production (it failed?)");
      await assertReadable(PROD, doc.rid2, `${what}: before`);
      const mark = await auditMark();
      await brk();
      await assertLocked(PROD, doc.rid2, what, causeRe);
      assert.equal(await policyHealth(doc.policyName), "Unhealthy", `${what}: policy health`);
      const locks = await audit(mark, "environments/Lock", PROD);
      assert.ok(locks.events.some((e) => e.operation === "PowerPlatform/environments/Lock" && causeRe.test(e.detail ?? "")), `${what}: an audit Lock event naming the cause ${causeRe}: ${locks.text}`);
      const refused = await reenable(PROD);
      assert.equal(refused.status, 423, `${what}: re-enable while broken: ${refused.show}`);
      await fix();
      assert.equal(await policyHealth(doc.policyName), "Healthy", `${what}: policy health after the fix`);
      const still = await readRecord(PROD, doc.rid2);
      assert.equal(still.status, 423, `${what}: still locked until re-enabled: ${still.show}`);
      const unlock = await audit(mark, "environments/Unlock", PROD);
      assert.ok(unlock.events.some((e) => e.outcome === "AccessRestored"), `${what}: audit Unlock AccessRestored: ${unlock.text}`);
      const en = await reenable(PROD);
      assert.equal(en.status, 200, `${what}: re-enable: ${en.show}`);
      await assertReadable(PROD, doc.rid2, `${what}: after re-enable`, { name: "Fabrikam (under CMK)" });
      const re = await audit(mark, "environments/Reenable", PROD);
      assert.ok(re.events.some((e) => e.outcome === "Succeeded"), `${what}: audit Reenable Succeeded: ${re.text}`);
    }

    it("access policy: only unwrapKey removed (replace with get + wrapKey)", T, async () => {
      await trigger(
        "unwrapKey revoked",
        () => kvArm.vaults.updateAccessPolicy(RG, doc.vault, "replace", accessPolicy(doc.oid, ["get", "wrapKey"])),
        () => kvArm.vaults.updateAccessPolicy(RG, doc.vault, "replace", accessPolicy(doc.oid, PERMS)),
        /lacks the unwrapKey key permission/,
      );
    });

    it("access policy removed entirely", T, async () => {
      await trigger("access policy removed", () => revoke(doc.vault, doc.oid), () => grant(doc.vault, doc.oid), /lacks the get key permission/);
    });

    it("key disabled (updateKeyProperties enabled false / true)", T, async () => {
      await trigger(
        "key disabled",
        () => doc.keys.updateKeyProperties("cmk", { enabled: false }),
        () => doc.keys.updateKeyProperties("cmk", { enabled: true }),
        /is disabled/,
      );
    });

    it("key expired (expiresOn in the past / cleared)", T, async () => {
      const now = (await server.getClock()).now;
      await trigger(
        "key expired",
        () => doc.keys.updateKeyProperties("cmk", { expiresOn: new Date(now.getTime() - 60_000) }),
        async () => {
          const k = await doc.keys.updateKeyProperties("cmk", { expiresOn: null });
          assert.equal(k.properties.expiresOn, undefined, "expiresOn: null clears exp");
        },
        /expired at/,
      );
    });

    it("key not yet valid (notBefore in the future / cleared)", T, async () => {
      const now = (await server.getClock()).now;
      await trigger(
        "key not yet valid",
        () => doc.keys.updateKeyProperties("cmk", { notBefore: new Date(now.getTime() + DAY_MS) }),
        async () => {
          const k = await doc.keys.updateKeyProperties("cmk", { notBefore: null });
          assert.equal(k.properties.notBefore, undefined, "notBefore: null clears nbf");
        },
        /is not valid before/,
      );
    });

    it("key deleted (beginDeleteKey / beginRecoverDeletedKey)", T, async () => {
      await trigger(
        "key deleted",
        async () => (await doc.keys.beginDeleteKey("cmk", KKPOLL)).pollUntilDone(),
        async () => (await doc.keys.beginRecoverDeletedKey("cmk", KKPOLL)).pollUntilDone(),
        /is deleted \(recoverable until/,
      );
    });

    it("vault switched to RBAC; the identity's Crypto Service Encryption User role removed", T, async () => {
      const scope = vaultId(doc.vault);
      // RBAC without a role for the identity: locked
      await trigger(
        "vault switched to RBAC without a role",
        async () => {
          const v = await kvArm.vaults.update(RG, doc.vault, { properties: { enableRbacAuthorization: true } });
          assert.equal(v.properties.enableRbacAuthorization, true);
        },
        async () => {
          doc.roleName = randomUUID();
          const r = await roleAssignment("PUT", scope, doc.roleName, ROLE_CSEU, doc.oid);
          assert.equal(r.status, 201, r.show);
        },
        /RBAC role assignment/,
      );
      // the role assignment deleted: locked; PUT again: restored
      await trigger(
        "role assignment removed",
        async () => {
          const r = await roleAssignment("DELETE", scope, doc.roleName);
          assert.equal(r.status, 200, r.show);
        },
        async () => {
          doc.roleName = randomUUID();
          const r = await roleAssignment("PUT", scope, doc.roleName, ROLE_CSEU, doc.oid);
          assert.equal(r.status, 201, r.show);
        },
        /RBAC role assignment/,
      );
      // back to access policies (the identity's access policy is still there): stays readable
      const v = await kvArm.vaults.update(RG, doc.vault, { properties: { enableRbacAuthorization: false } });
      assert.equal(v.properties.enableRbacAuthorization, false);
      await assertReadable(PROD, doc.rid2, "back to access policies");
      assert.equal(await policyHealth(doc.policyName), "Healthy");
    });

    it("vault deleted (ARM delete / createMode recover)", T, async () => {
      let saved;
      await trigger(
        "vault deleted",
        async () => {
          saved = await kvArm.vaults.get(RG, doc.vault);
          await kvArm.vaults.delete(RG, doc.vault);
        },
        async () => {
          const rec = await kvArm.vaults.createOrUpdate(
            RG,
            doc.vault,
            { location: saved.location, properties: { tenantId: TENANT, sku: { family: "A", name: "standard" }, accessPolicies: [], createMode: "recover" } },
            POLL,
          );
          assert.equal(rec.name, doc.vault);
          const ap = rec.properties.accessPolicies.find((a) => a.objectId === doc.oid);
          assert.ok(ap, `the recovered vault keeps its access policies: ${JSON.stringify(rec.properties.accessPolicies)}`);
        },
        /key vault '[^']+' is deleted/,
      );
    });

    it("enterprise policy deleted out of band (its resource group deleted): Contoso Sandbox locked for good", T, async () => {
      const rg = "cmk-oob-rg";
      await resArm.resourceGroups.createOrUpdate(rg, { location: "eastus" });
      const pol = await createPolicy("oob-policy", doc.vault, { rg });
      await grant(doc.vault, pol.oid);
      await grantReader(pol.id);
      const rid = await writeRecord(SANDBOX, { name: "Sandbox row" });
      await linkAndWait(SANDBOX, "link", pol.systemId);
      await assertReadable(SANDBOX, rid, "sandbox linked");
      // a linked policy cannot be deleted directly
      const direct = await armRaw("DELETE", `${pol.id}?api-version=${EP_API}`);
      assert.equal(direct.status, 409, direct.show);
      assert.equal(direct.json.error.code, "EnterprisePolicyInUse", direct.show);

      const mark = await auditMark();
      await resArm.resourceGroups.beginDeleteAndWait(rg, POLL);
      const { props } = await assertLocked(SANDBOX, rid, "policy deleted", /no longer exists/);
      assert.equal(props.cmkLock.retentionDays, 7, JSON.stringify(props.cmkLock));
      const locks = await audit(mark, "environments/Lock", SANDBOX);
      assert.ok(locks.events.some((e) => /no longer exists/.test(e.detail ?? "")), `audit Lock naming the cause: ${locks.text}`);
      const en = await reenable(SANDBOX);
      assert.equal(en.status, 423, `re-enable without a policy: ${en.show}`);
      doc.sandboxLocked = true;
      // Production (another policy) is untouched
      await assertReadable(PROD, doc.rid2, "production after the sandbox policy went");
    });
  });

  // -------------------------------------------------------------------------------------------
  it("3. rotation: the key's new version re-wraps the data key with no downtime; a pinned policy stays", T, async () => {
    assert.ok(doc.systemId && doc.rid2, "case 1 linked Contoso Production (it failed?)");
    const v1 = (await envProps(PROD)).props.enterprisePolicies.customerManagedKeys.keyVersion;
    assert.match(v1, VERSION_RE);

    // a second environment pinned to the current version
    const cur = await doc.keys.getKey("cmk");
    assert.equal(cur.properties.version, v1);
    const pinned = await createPolicy("cmkdoc-pinned", doc.vault, { keyVersion: v1 });
    await grant(doc.vault, pinned.oid);
    await grantReader(pinned.id);
    const pinnedEnv = await createEnvironment("CMK pinned", "Production");
    const prid = await writeRecord(pinnedEnv, { name: "pinned row" });
    await linkAndWait(pinnedEnv, "link", pinned.systemId);

    const mark = await auditMark();
    const rotated = await doc.keys.rotateKey("cmk");
    const v2 = rotated.properties.version;
    assert.notEqual(v2, v1);
    await assertReadable(PROD, doc.rid2, "right after rotateKey");
    let { props, show: s } = await envProps(PROD);
    assert.equal(props.enterprisePolicies.customerManagedKeys.keyVersion, v2, `follows the new version: ${s}`);
    assert.equal(props.states.runtime.id, "Enabled", s);
    const rot = await audit(mark, "environments/Rotate", PROD);
    assert.ok(rot.events.some((e) => (e.detail ?? "").includes(v2)), `audit Rotate naming ${v2}: ${rot.text}`);
    ({ props, show: s } = await envProps(pinnedEnv));
    assert.equal(props.enterprisePolicies.customerManagedKeys.keyVersion, v1, `pinned stays: ${s}`);
    await assertReadable(pinnedEnv, prid, "pinned after rotation");

    // createKey again with the same name is a new version too
    const v3 = (await doc.keys.createRsaKey("cmk", { keySize: 2048 })).properties.version;
    await assertReadable(PROD, doc.rid2, "right after createKey (new version)");
    ({ props, show: s } = await envProps(PROD));
    assert.equal(props.enterprisePolicies.customerManagedKeys.keyVersion, v3, s);

    // the old version no longer wraps Production's data key: disabling it is harmless for it,
    // but v1 still wraps the pinned environment's
    await doc.keys.updateKeyProperties("cmk", v1, { enabled: false });
    await assertReadable(PROD, doc.rid2, "old version disabled");
    await assertLocked(pinnedEnv, prid, "pinned version disabled", /is disabled/);
    await doc.keys.updateKeyProperties("cmk", v1, { enabled: true });
    const en = await reenable(pinnedEnv);
    assert.equal(en.status, 200, en.show);
    await assertReadable(pinnedEnv, prid, "pinned re-enabled");
    doc.pinnedEnv = pinnedEnv;
  });

  // -------------------------------------------------------------------------------------------
  it("4. swap to a second vault/key/policy while linked, then revert to the Microsoft-managed key", T, async () => {
    assert.ok(doc.systemId && doc.rid2, "case 1 linked Contoso Production (it failed?)");
    const b = await cmkSetup("cmkswap", "cmkswap-policy");
    await linkAndWait(PROD, "link", b.systemId);
    let { props, show: s } = await envProps(PROD);
    assert.equal(props.protectionStatus.keyManagedBy, "Customer", s);
    assert.equal(props.enterprisePolicies.customerManagedKeys.systemId, b.systemId, s);
    assert.equal(props.enterprisePolicies.customerManagedKeys.linkStatus, "Linked", s);
    assert.equal(props.enterprisePolicies.customerManagedKeys.keyVersion, b.key.properties.version, s);
    await assertReadable(PROD, doc.rid2, "after swap", { name: "Fabrikam (under CMK)" });

    // the OLD policy's key no longer matters for Production (the pinned env of case 3 is on the
    // pinned policy, whose identity keeps its access)
    await revoke(doc.vault, doc.oid);
    await assertReadable(PROD, doc.rid2, "old policy's access revoked after the swap");

    // revert
    await linkAndWait(PROD, "unlink", b.systemId);
    ({ props, show: s } = await envProps(PROD));
    assert.equal(props.protectionStatus.keyManagedBy, "Microsoft", s);
    assert.equal(props.enterprisePolicies?.customerManagedKeys, undefined, s);
    await revoke("cmkswap", b.oid);
    await assertReadable(PROD, doc.rid2, "on the Microsoft key after revoking the new policy's access too", { revenue: 2 });
    await grant(doc.vault, doc.oid); // leave the first policy healthy
  });

  // -------------------------------------------------------------------------------------------
  it("5. lock expiry: a sandbox locked for more than 7 days (emulated clock) is deleted", T, async () => {
    const pol = await cmkSetup("cmkexpiry", "cmkexpiry-policy");
    const env = await createEnvironment("CMK expiry sandbox", "Sandbox");
    const rid = await writeRecord(env, { name: "doomed row" });
    await linkAndWait(env, "link", pol.systemId);
    await revoke("cmkexpiry", pol.oid);
    const { props } = await assertLocked(env, rid, "expiry: locked", /lacks the get key permission/);
    assert.equal(props.cmkLock.retentionDays, 7, JSON.stringify(props.cmkLock));

    const mark = await auditMark();
    await server.advanceClock("P8D");
    const gone = await getEnv(env);
    assert.equal(gone.status, 404, `after 8 days: ${gone.show}`);
    const rec = await readRecord(env, rid);
    assert.equal(rec.status, 404, `its records are gone: ${rec.show}`);
    const del = await audit(mark, "environments/Delete", env);
    assert.ok(del.events.some((e) => /more than 7 days/.test(e.detail ?? "")), `audit Delete "more than 7 days": ${del.text}`);
    if (doc.sandboxLocked) {
      const sb = await getEnv(SANDBOX);
      assert.equal(sb.status, 404, `Contoso Sandbox (locked in case 2) is deleted too: ${sb.show}`);
    }
    // the clock cannot be put back: it only moves forward
    const back = await server.raw("POST", "/_emulator/clock", { body: { advance: "-P8D" } });
    assert.equal(back.status, 400, `the clock refuses to move back: ${back.status} ${back.text}`);
    // production environments on healthy keys are untouched
    if (doc.pinnedEnv) assert.equal((await getEnv(doc.pinnedEnv)).status, 200);
    if (doc.rid2) await assertReadable(PROD, doc.rid2, "Contoso Production after the clock moved");
  });

  // -------------------------------------------------------------------------------------------
  it("6. key deleted and purged after the vault's retention: permanently unrecoverable", T, async () => {
    const pol = await cmkSetup("cmkpurge", "cmkpurge-policy");
    const env = await createEnvironment("CMK purge production", "Production");
    const rid = await writeRecord(env, { name: "shredded row" });
    await linkAndWait(env, "link", pol.systemId);
    await assertReadable(env, rid, "purge: linked");

    const deleted = await (await pol.keys.beginDeleteKey("cmk", KKPOLL)).pollUntilDone();
    await assertLocked(env, rid, "purge: key deleted", /is deleted \(recoverable until/);
    const left = deleted.properties.scheduledPurgeDate.getTime() - (await server.getClock()).now.getTime();
    assert.ok(left > 6 * DAY_MS && left <= 7 * DAY_MS + 60_000, `scheduled purge ~7 days ahead: ${deleted.properties.scheduledPurgeDate.toISOString()}`);

    const mark = await auditMark();
    await server.advanceClock("P7DT1H");
    await assert.rejects(pol.keys.getDeletedKey("cmk"), (e) => e.statusCode === 404, "the deleted key was purged by the scheduled purge");
    const { record, props } = await assertLocked(env, rid, "purge: key purged", /permanently unrecoverable/);
    assert.equal(props.cmkLock.retentionDays, 30, JSON.stringify(props.cmkLock));
    const locks = await audit(mark, "environments/Lock", env);
    assert.ok(locks.events.some((e) => /permanently unrecoverable/.test(e.detail ?? "")), `audit Lock "permanently unrecoverable": ${locks.text} (record: ${record.text})`);
    const en = await reenable(env);
    assert.equal(en.status, 423, en.show);
    assert.match(en.json.error.message, /unrecoverable/, en.show);

    // a new key with the same name is a different key
    await pol.keys.createRsaKey("cmk", { keySize: 2048 });
    const en2 = await reenable(env);
    assert.equal(en2.status, 423, `a new key of the same name does not unlock: ${en2.show}`);
    assert.match(en2.json.error.message, /unrecoverable/, en2.show);
    assert.equal((await getEnv(env)).status, 200, "production: still there after 7 days (deleted after 30)");
    // the record's lock message still says why (after the new key appeared, the cause gains
    // "(a key of that name exists now, but it is a different key)")
    await assertLocked(env, rid, "purge: new key of the same name", /permanently unrecoverable/);
  });

  // -------------------------------------------------------------------------------------------
  it("7. no record plaintext on disk (data dir incl. SQLite WAL), the API still reads it", T, async () => {
    const marker = `canary-${randomUUID()}`;
    const display = `display-${randomUUID()}`;
    // Contoso Production (Microsoft-managed key by now) and a CMK-linked environment
    const pol = await cmkSetup("cmkcanary", "cmkcanary-policy");
    const env = await createEnvironment(display, "Production");
    await linkAndWait(env, "link", pol.systemId);
    const ridCmk = await writeRecord(env, { name: marker, description: `${marker} in a CMK environment` });
    const ridMs = await writeRecord(PROD, { name: marker, description: `${marker} under the Microsoft-managed key` });

    // positive controls: the API reads the marker back; the scanner sees fresh plaintext metadata
    await assertReadable(env, ridCmk, "canary (CMK)", { name: marker });
    await assertReadable(PROD, ridMs, "canary (Microsoft key)", { name: marker });
    const displayHits = filesContaining(server.dataDir, display);
    assert.ok(displayHits.length > 0, `scanner control: the environment's display name (not covered by CMK) is found in ${server.dataDir}`);

    const files = walk(server.dataDir);
    assert.ok(files.some((f) => /-wal$/.test(f)) || files.some((f) => /\.(db|sqlite3?)$/.test(f)), `a SQLite file in the data dir: ${files.join(", ")}`);
    const hits = filesContaining(server.dataDir, marker);
    assert.deepEqual(hits, [], `record plaintext found on disk (${files.length} files scanned)`);
  });
});

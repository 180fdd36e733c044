// Power Platform environments over HTTPS (there is no official SDK for the BAP admin API, so
// raw requests): create an environment, poll its lifecycle operation, write and read records at
// its instance URL https://{id}.crm.localhost:PORT (the helpers' lookup maps *.localhost to
// 127.0.0.1 and the certificate covers *.crm.localhost), disable -> 423, enable -> readable.
// Tokens are minted for the Power Platform admin app with POST /_emulator/tokens.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import { T, startServer, rawRequest, assertNo5xx } from "./helpers.mjs";

const BAP = "/providers/Microsoft.BusinessAppPlatform";
const PP_ADMIN_APP = "0a000002-0000-4000-8000-00000000a002";
const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DEMO_PROD = "a1b2c3d4-0000-4000-8000-000000000101";

let server;
let bapToken;

async function mint(audience) {
  const r = await server.raw("POST", "/_emulator/tokens", { body: { principal: PP_ADMIN_APP, audience } });
  assert.equal(r.status, 200, r.text);
  return r.json.access_token;
}

function bap(method, pathAndQuery, body) {
  return server.raw(method, pathAndQuery, { body, headers: { authorization: `Bearer ${bapToken}` } });
}

function instance(id) {
  return `https://${id}.crm.localhost:${server.port}`;
}

function records(id, method, path, { body, headers = {}, token = bapToken } = {}) {
  return rawRequest(server.rawAgent, `${instance(id)}/api/data/v9.2/${path}`, {
    method,
    body,
    headers: { authorization: `Bearer ${token}`, ...headers },
  });
}

before(async () => {
  server = await startServer();
  bapToken = await mint("https://api.bap.microsoft.com");
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("Power Platform environments (BAP API + Dataverse Web API shape)", () => {
  it("the demo world has Contoso Production and Contoso Sandbox with accounts", T, async () => {
    const r = await bap("GET", `${BAP}/scopes/admin/environments?api-version=2021-04-01`);
    assert.equal(r.status, 200, r.text);
    const names = r.json.value.map((e) => e.properties.displayName);
    assert.ok(names.includes("Contoso Production") && names.includes("Contoso Sandbox"), names.join(", "));
    const prod = r.json.value.find((e) => e.name === DEMO_PROD);
    assert.equal(prod.properties.environmentSku, "Production");
    assert.equal(prod.properties.protectionStatus.keyManagedBy, "Microsoft");
    assert.equal(prod.properties.governanceConfiguration.protectionLevel, "Standard");
    const rows = await records(DEMO_PROD, "GET", "accounts");
    assert.equal(rows.status, 200, rows.text);
    assert.ok(rows.json.value.length >= 3);
    assert.ok(rows.json.value.some((a) => a.name === "Fourth Coffee"));
  });

  it("create, poll the operation, records CRUD at the instance URL, disable -> 423, enable", T, async () => {
    const created = await bap("POST", `${BAP}/environments?api-version=2023-06-01`, {
      location: "unitedstates",
      properties: {
        displayName: "SDK test environment",
        environmentSku: "Sandbox",
        governanceConfiguration: { protectionLevel: "Standard" },
      },
    });
    assert.equal(created.status, 202, created.text);
    const opUrl = created.headers.location;
    assert.ok(opUrl, "Location header");
    let op;
    for (let i = 0; i < 50; i++) {
      op = await rawRequest(server.rawAgent, opUrl, { headers: { authorization: `Bearer ${bapToken}` } });
      assert.equal(op.status, 200, op.text);
      if (op.json.state.id === "Succeeded" || op.json.state.id === "Failed") break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(op.json.state.id, "Succeeded");
    const id = created.json.name;
    assert.match(id, GUID_RE);

    const env = await bap("GET", `${BAP}/environments/${id}?api-version=2016-11-01`);
    assert.equal(env.status, 200, env.text);
    assert.equal(env.json.properties.linkedEnvironmentMetadata.instanceUrl, `${instance(id)}/`);
    assert.equal(env.json.properties.states.runtime.id, "Enabled");

    // create: 204 + OData-EntityId; then 201 with the row
    const c1 = await records(id, "POST", "accounts", { body: { name: "Northwind", revenue: 42 } });
    assert.equal(c1.status, 204, c1.text);
    const entityId = c1.headers["odata-entityid"];
    assert.match(entityId, new RegExp(`^${instance(id)}/api/data/v9\\.2/accounts\\([0-9a-f-]{36}\\)$`));
    const c2 = await records(id, "POST", "accounts", {
      body: { name: "Contoso Pharmaceuticals" },
      headers: { prefer: "return=representation" },
    });
    assert.equal(c2.status, 201, c2.text);
    assert.match(c2.json.accountid, GUID_RE);

    // read, update, list with paging
    const rowPath = entityId.slice(entityId.indexOf("accounts("));
    const got = await records(id, "GET", rowPath);
    assert.equal(got.status, 200, got.text);
    assert.equal(got.json.name, "Northwind");
    const upd = await records(id, "PATCH", rowPath, { body: { revenue: 43 } });
    assert.equal(upd.status, 204, upd.text);
    const page1 = await records(id, "GET", "accounts?$top=1");
    assert.equal(page1.json.value.length, 1);
    const next = page1.json["@odata.nextLink"];
    assert.ok(next, "nextLink");
    const page2 = await rawRequest(server.rawAgent, next, { headers: { authorization: `Bearer ${bapToken}` } });
    assert.equal(page2.status, 200, page2.text);
    assert.equal(page2.json.value.length, 1);
    assert.equal(page2.json["@odata.nextLink"], undefined);

    // a token for the instance URL works too; one for Key Vault does not
    const instToken = await mint(`${instance(id)}/`);
    assert.equal((await records(id, "GET", rowPath, { token: instToken })).status, 200);
    const kvToken = await mint("https://vault.azure.net");
    assert.equal((await records(id, "GET", rowPath, { token: kvToken })).status, 401);

    // disable -> 423 EnvironmentDisabled
    const dis = await bap("POST", `${BAP}/scopes/admin/environments/${id}/disable?api-version=2021-04-01`);
    assert.equal(dis.status, 200, dis.text);
    assert.equal(dis.json.properties.states.runtime.id, "Disabled");
    const locked = await records(id, "GET", rowPath);
    assert.equal(locked.status, 423, locked.text);
    assert.equal(locked.json.error.code, "EnvironmentDisabled");
    assert.match(locked.json.error.message, /enable/);
    assert.equal((await records(id, "POST", "accounts", { body: { name: "x" } })).status, 423);

    // enable -> readable, data intact
    const en = await bap("POST", `${BAP}/environments/${id}/enable?api-version=2021-04-01`);
    assert.equal(en.status, 200, en.text);
    const back = await records(id, "GET", rowPath);
    assert.equal(back.status, 200, back.text);
    assert.equal(back.json.revenue, 43);

    // delete the environment: its instance URL is gone
    const del = await bap("DELETE", `${BAP}/scopes/admin/environments/${id}?api-version=2021-04-01`);
    assert.equal(del.status, 202, del.text);
    assert.equal((await records(id, "GET", rowPath)).status, 404);
  });

  it("validation answers 400 with a reason", T, async () => {
    const r = await bap("POST", `${BAP}/environments?api-version=2023-06-01`, {
      location: "eastus",
      properties: { displayName: "x", environmentSku: "Sandbox" },
    });
    assert.equal(r.status, 400, r.text);
    assert.match(r.json.error.message, /Power Platform region/);
    const noAuth = await server.raw("GET", `${BAP}/environments?api-version=2023-06-01`);
    assert.equal(noAuth.status, 401);
  });
});

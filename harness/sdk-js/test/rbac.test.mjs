// Role assignments and the Key Vault RBAC decision with unchanged SDK clients and real tokens
// (ClientSecretCredential against the emulator's token service: the data plane only judges
// callers this emulator vouched for; permissive mode's default principal is always allowed).
//
//   1. kv-admin-app creates an RBAC vault with @azure/arm-keyvault (enableRbacAuthorization).
//   2. Owner of the subscription is control plane only: creating a key is 403 ForbiddenByRbac
//      until a raw REST PUT gives kv-admin-app Key Vault Administrator on the vault.
//   3. contoso-app: unwrapKey 403 ForbiddenByRbac -> 200 after Key Vault Crypto Service
//      Encryption User at key scope -> 403 again after the assignment is deleted.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";

import { ClientSecretCredential } from "@azure/identity";
import { KeyClient, CryptographyClient } from "@azure/keyvault-keys";
import { KeyVaultManagementClient } from "@azure/arm-keyvault";

import { T, startServer, expectRestError, withWire, assertNo5xx } from "./helpers.mjs";

const TENANT = "72f988bf-0000-4000-8000-00000000c0de";
const SUB = "00000000-0000-4000-8000-000000000001";
const RG = "cmk-rg";
const VAULT = "rbac-sdk";
const KV_ADMIN = { clientId: "0a000001-0000-4000-8000-00000000a001", secret: "kv-admin-secret", oid: "0b000001-0000-4000-8000-00000000b001" };
const CONTOSO = { clientId: "0a000003-0000-4000-8000-00000000a003", secret: "contoso-app-secret", oid: "0b000003-0000-4000-8000-00000000b003" };
const ROLE_KV_ADMIN = "00482a5a-887f-4fb3-b363-3b7fe8e74483";
const ROLE_CSEU = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
const VAULT_ID = `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.KeyVault/vaults/${VAULT}`;
const AV = "api-version=2022-04-01";

let server;

function credential(who) {
  return new ClientSecretCredential(TENANT, who.clientId, who.secret, {
    authorityHost: server.url,
    disableInstanceDiscovery: true,
    agent: server.agent(),
  });
}

/** PUT/DELETE/GET a role assignment over raw REST with an ARM token of `who`. */
async function roleAssignment(method, scope, name, who, body) {
  const token = (await credential(who).getToken("https://management.azure.com/.default")).token;
  return server.raw(method, `${scope}/providers/Microsoft.Authorization/roleAssignments/${name}?${AV}`, {
    headers: { Authorization: `Bearer ${token}` },
    body,
  });
}

function assignmentBody(role, principalId) {
  return {
    properties: {
      roleDefinitionId: `/subscriptions/${SUB}/providers/Microsoft.Authorization/roleDefinitions/${role}`,
      principalId,
      principalType: "ServicePrincipal",
    },
  };
}

before(async () => {
  server = await startServer();
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("RBAC vaults: role assignments decide the data plane", () => {
  let key;
  let wrapped;
  const secret = randomBytes(32);

  it("kv-admin-app creates an RBAC vault and needs a Key Vault data role to create a key", T, async () => {
    const admin = credential(KV_ADMIN);
    const arm = new KeyVaultManagementClient(admin, SUB, { endpoint: server.url, ...server.clientOptions(undefined, {}) });
    const vault = await arm.vaults.createOrUpdate(
      RG,
      VAULT,
      {
        location: "eastus",
        properties: { tenantId: TENANT, sku: { family: "A", name: "standard" }, accessPolicies: [], enableRbacAuthorization: true },
      },
      { updateIntervalInMs: 50 },
    );
    assert.equal(vault.properties.enableRbacAuthorization, true);
    assert.equal(vault.id, VAULT_ID);

    const kc = new KeyClient(server.vaultUrl(VAULT), admin, server.clientOptions(VAULT));
    const { body } = await expectRestError(server, kc.createRsaKey("cmk"), { status: 403, inner: "ForbiddenByRbac" });
    assert.match(body.error.message, /Microsoft\.KeyVault\/vaults\/keys\/create\/action/);

    const name = randomUUID();
    const put = await roleAssignment("PUT", VAULT_ID, name, KV_ADMIN, assignmentBody(ROLE_KV_ADMIN, KV_ADMIN.oid));
    assert.equal(put.status, 201, put.text);
    assert.equal(put.json.properties.scope, VAULT_ID);
    assert.equal(put.json.name, name);
    // the same principal, role and scope again under another name
    const dup = await roleAssignment("PUT", VAULT_ID, randomUUID(), KV_ADMIN, assignmentBody(ROLE_KV_ADMIN, KV_ADMIN.oid));
    assert.equal(dup.status, 409, dup.text);
    assert.equal(dup.json.error.code, "RoleAssignmentExists");

    await withWire(server, async () => {
      key = await kc.createRsaKey("cmk");
      assert.equal(key.name, "cmk");
      const cc = new CryptographyClient(key, admin, server.clientOptions(VAULT));
      wrapped = (await cc.wrapKey("RSA-OAEP", secret)).result;
      assert.ok(wrapped.length > 0);
    });
  });

  it("contoso-app: unwrapKey 403, then 200 with Crypto Service Encryption User at key scope, then 403 after DELETE", T, async () => {
    assert.ok(key && wrapped, "the previous test created the key");
    const contoso = credential(CONTOSO);
    const cc = new CryptographyClient(key, contoso, server.clientOptions(VAULT));
    const keyScope = `${VAULT_ID}/keys/cmk`;

    const denied = await expectRestError(server, cc.unwrapKey("RSA-OAEP", wrapped), { status: 403, inner: "ForbiddenByRbac" });
    const msg = denied.body.error.message;
    assert.match(msg, /Caller is not authorized to perform action on resource/);
    assert.ok(msg.includes(`appid=${CONTOSO.clientId};oid=${CONTOSO.oid};iss=https://sts.windows.net/${TENANT}/`), msg);
    assert.ok(msg.includes("Action: 'Microsoft.KeyVault/vaults/keys/unwrap/action'"), msg);
    assert.ok(msg.includes(`Resource: '${keyScope}'`), msg);
    assert.ok(msg.includes("DeniedWithNoValidRBAC"), msg);
    assert.ok(msg.includes(`Vault: ${VAULT};location=eastus`), msg);

    // contoso-app may not grant itself the role (no roleAssignments/write)
    const self = await roleAssignment("PUT", keyScope, randomUUID(), CONTOSO, assignmentBody(ROLE_CSEU, CONTOSO.oid));
    assert.equal(self.status, 403, self.text);
    assert.equal(self.json.error.code, "AuthorizationFailed");

    const name = randomUUID();
    const put = await roleAssignment("PUT", keyScope, name, KV_ADMIN, assignmentBody(ROLE_CSEU, CONTOSO.oid));
    assert.equal(put.status, 201, put.text);
    const got = await roleAssignment("GET", keyScope, name, KV_ADMIN);
    assert.equal(got.status, 200, got.text);
    assert.equal(got.json.properties.principalId, CONTOSO.oid);

    await withWire(server, async () => {
      const unwrapped = await cc.unwrapKey("RSA-OAEP", wrapped);
      assert.deepEqual(Buffer.from(unwrapped.result), secret);
    });

    const del = await roleAssignment("DELETE", keyScope, name, KV_ADMIN);
    assert.equal(del.status, 200, del.text);
    await expectRestError(server, cc.unwrapKey("RSA-OAEP", wrapped), { status: 403, inner: "ForbiddenByRbac" });
    const again = await roleAssignment("DELETE", keyScope, name, KV_ADMIN);
    assert.equal(again.status, 204, again.text);
  });
});

// @azure/arm-keyvault (KeyVaultManagementClient, unchanged) against cmkemu's ARM endpoints:
// vault lifecycle (create, get, update, list, delete, list deleted, recover, purge), access
// policies (add, remove), the irreversible purge protection, and the data plane following the
// vault's state (a deleted vault stops answering; a recovered one answers with its keys).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import { KeyVaultManagementClient } from "@azure/arm-keyvault";

import { T, startServer, expectRestError, withWire, collect, assertNo5xx, recordingCredential } from "./helpers.mjs";

const SUB = "00000000-0000-4000-8000-000000000001";
const RG = "cmk-rg";
const TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OID = "11111111-2222-4333-8444-555555555555";
const POLL = { updateIntervalInMs: 50 };

let server;
let arm;

function params(extra = {}) {
  return {
    location: "eastus",
    properties: {
      tenantId: TENANT,
      sku: { family: "A", name: "standard" },
      accessPolicies: [],
      ...extra,
    },
  };
}

before(async () => {
  server = await startServer();
  const credential = recordingCredential();
  arm = new KeyVaultManagementClient(credential, SUB, {
    endpoint: server.url,
    ...server.clientOptions(undefined, {}),
  });
});

after(async () => {
  if (server) assertNo5xx(server);
  await server?.stop();
});

describe("Microsoft.KeyVault/vaults", () => {
  it("the demo vaults are listed under cmk-rg", T, async () => {
    await withWire(server, async () => {
      const names = (await collect(arm.vaults.listByResourceGroup(RG))).map((v) => v.name).sort();
      assert.deepEqual(names, ["cmkemu", "contoso-cmk", "scratch"]);
      const v = await arm.vaults.get(RG, "cmkemu");
      assert.equal(v.properties.vaultUri, `https://cmkemu.vault.localhost:${server.port}/`);
      assert.equal(v.properties.enablePurgeProtection, true);
    });
  });

  it("create, get, update, list by subscription, delete, list deleted, recover, purge", T, async () => {
    await withWire(server, async () => {
      const created = await arm.vaults.createOrUpdate(RG, "sdk-life", params({ softDeleteRetentionInDays: 7 }), POLL);
      assert.equal(created.name, "sdk-life");
      assert.equal(created.properties.provisioningState, "Succeeded");
      assert.equal(created.properties.softDeleteRetentionInDays, 7);
      assert.equal(created.properties.vaultUri, `https://sdk-life.vault.localhost:${server.port}/`);

      const got = await arm.vaults.get(RG, "sdk-life");
      assert.equal(got.id, `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.KeyVault/vaults/sdk-life`);

      const updated = await arm.vaults.update(RG, "sdk-life", { tags: { env: "test" }, properties: { enableRbacAuthorization: true } });
      assert.deepEqual(updated.tags, { env: "test" });
      assert.equal(updated.properties.enableRbacAuthorization, true);

      const all = (await collect(arm.vaults.listBySubscription())).map((v) => v.name);
      assert.ok(all.includes("sdk-life"), `${all}`);

      await arm.vaults.delete(RG, "sdk-life");
      await expectRestError(server, arm.vaults.get(RG, "sdk-life"), { status: 404, code: "ResourceNotFound" });
      const deleted = (await collect(arm.vaults.listDeleted())).map((d) => d.name);
      assert.ok(deleted.includes("sdk-life"), `${deleted}`);
      const dv = await arm.vaults.getDeleted("sdk-life", "eastus");
      assert.equal(dv.properties.location, "eastus");
      assert.ok(dv.properties.scheduledPurgeDate instanceof Date);

      // the name is held by the soft-deleted vault
      await expectRestError(server, arm.vaults.createOrUpdate(RG, "sdk-life", params(), POLL), { status: 409, code: "VaultAlreadyExists" });

      const recovered = await arm.vaults.createOrUpdate(RG, "sdk-life", params({ createMode: "recover" }), POLL);
      assert.equal(recovered.name, "sdk-life");
      assert.deepEqual(recovered.tags, { env: "test" });
      await arm.vaults.get(RG, "sdk-life");

      await arm.vaults.delete(RG, "sdk-life");
      await arm.vaults.purgeDeleted("sdk-life", "eastus", POLL);
      const after = (await collect(arm.vaults.listDeleted())).map((d) => d.name);
      assert.ok(!after.includes("sdk-life"), `${after}`);
    });
  });

  it("access policies: add merges, remove takes permissions away", T, async () => {
    await withWire(server, async () => {
      await arm.vaults.createOrUpdate(RG, "sdk-ap", params(), POLL);
      const add = (keys) => ({ properties: { accessPolicies: [{ tenantId: TENANT, objectId: OID, permissions: { keys } }] } });
      await arm.vaults.updateAccessPolicy(RG, "sdk-ap", "add", add(["get", "wrapKey"]));
      await arm.vaults.updateAccessPolicy(RG, "sdk-ap", "add", add(["unwrapKey"]));
      let v = await arm.vaults.get(RG, "sdk-ap");
      assert.equal(v.properties.accessPolicies.length, 1);
      assert.deepEqual([...v.properties.accessPolicies[0].permissions.keys].sort(), ["get", "unwrapKey", "wrapKey"]);
      await arm.vaults.updateAccessPolicy(RG, "sdk-ap", "remove", add(["wrapKey"]));
      v = await arm.vaults.get(RG, "sdk-ap");
      assert.deepEqual([...v.properties.accessPolicies[0].permissions.keys].sort(), ["get", "unwrapKey"]);
      await arm.vaults.updateAccessPolicy(RG, "sdk-ap", "remove", add(["get", "unwrapKey"]));
      v = await arm.vaults.get(RG, "sdk-ap");
      assert.equal(v.properties.accessPolicies.length, 0);
    });
  });

  it("purge protection cannot be turned off, and protects a deleted vault from purge", T, async () => {
    await withWire(server, async () => {
      await arm.vaults.createOrUpdate(RG, "sdk-pp", params({ enablePurgeProtection: true }), POLL);
      const { err } = await expectRestError(server, arm.vaults.update(RG, "sdk-pp", { properties: { enablePurgeProtection: false } }), {
        status: 400,
        code: "BadRequest",
      });
      assert.match(err.message, /enablePurgeProtection.*irreversible/);
      const v = await arm.vaults.get(RG, "sdk-pp");
      assert.equal(v.properties.enablePurgeProtection, true);
      await arm.vaults.delete(RG, "sdk-pp");
      await expectRestError(server, arm.vaults.purgeDeleted("sdk-pp", "eastus", POLL), { status: 409, code: "InvalidOperation" });
    });
  });

  it("a deleted vault disappears from the data plane and comes back with its keys", T, async () => {
    await withWire(server, async () => {
      const keys = server.keyClient("scratch");
      const key = await keys.createRsaKey("arm-follow", { keySize: 2048 });
      await arm.vaults.delete(RG, "scratch");
      await expectRestError(server, keys.getKey("arm-follow"), { status: 404, code: "VaultNotFound" });
      await arm.vaults.createOrUpdate(RG, "scratch", params({ createMode: "recover" }), POLL);
      const back = await keys.getKey("arm-follow");
      assert.equal(back.id, key.id);
    });
  });
});

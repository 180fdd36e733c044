// KeyClient against cmkemu: demo world, create/get/update, versions, soft delete with the
// beginDeleteKey / beginRecoverDeletedKey pollers, purge, backup/restore, rotation and rotation
// policy, paging with small pages.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import {
  T,
  DAY_MS,
  VERSION_RE,
  startServer,
  uniqueName,
  assertKeyId,
  expectRestError,
  withWire,
  collect,
  collectPages,
  assertNo5xx,
} from "./helpers.mjs";

const POLL = { intervalInMs: 100 };
const ALL_RSA_OPS = ["decrypt", "encrypt", "sign", "unwrapKey", "verify", "wrapKey"];

let server;
let contoso; // named vault, purge protection on, 90 days; challenge verification ON
let scratch; // named vault, purge protection off, 7 days; challenge verification ON
let dflt; // default vault https://localhost:PORT (verification disabled)

before(async () => {
  server = await startServer();
  contoso = server.keyClient("contoso-cmk");
  scratch = server.keyClient("scratch");
  dflt = server.keyClient();
});

after(async () => {
  await server?.stop();
});

describe("demo world", () => {
  it("the default vault holds demo-key (RSA 2048, purge protection, 90 days)", T, async () => {
    await withWire(server, async () => {
      const key = await dflt.getKey("demo-key");
      assert.equal(key.name, "demo-key");
      assertKeyId(key.id, server.url, "demo-key");
      assert.equal(key.properties.vaultUrl, server.url);
      assert.match(key.properties.version, VERSION_RE);
      assert.ok(["RSA", "RSA-HSM"].includes(key.keyType), `kty ${key.keyType}`);
      assert.equal(key.key.n.length, 256, "RSA 2048 modulus is 256 bytes (no leading zero)");
      assert.deepEqual([...key.key.e], [1, 0, 1]);
      assert.equal(key.properties.enabled, true);
      assert.equal(key.properties.recoveryLevel, "Recoverable");
      assert.equal(key.properties.recoverableDays, 90);
      assert.ok(key.keyOperations.includes("wrapKey") && key.keyOperations.includes("unwrapKey"), `${key.keyOperations}`);
      assert.ok(key.properties.createdOn instanceof Date && !Number.isNaN(key.properties.createdOn.getTime()));
    });
  });

  it("the three vaults are distinct: a key created in scratch is not visible in contoso-cmk or the default vault", T, async () => {
    const name = uniqueName("iso");
    const k = await scratch.createRsaKey(name);
    assertKeyId(k.id, server.vaultUrl("scratch"), name);
    await expectRestError(server, contoso.getKey(name), { status: 404, code: "KeyNotFound" });
    await expectRestError(server, dflt.getKey(name), { status: 404, code: "KeyNotFound" });
  });
});

describe("create, get, update", () => {
  it("createRsaKey with size, ops and tags returns a complete KeyBundle", T, async () => {
    const name = uniqueName("create");
    const before = Date.now();
    const key = await withWire(server, () =>
      contoso.createRsaKey(name, {
        keySize: 3072,
        keyOps: ["wrapKey", "unwrapKey"],
        tags: { purpose: "cmk", team: "sdk-js" },
      }),
    );
    assert.equal(key.name, name);
    assertKeyId(key.id, server.vaultUrl("contoso-cmk"), name);
    assert.equal(key.properties.vaultUrl, server.vaultUrl("contoso-cmk"));
    assert.match(key.properties.version, VERSION_RE);
    assert.equal(key.keyType, "RSA");
    assert.equal(key.key.n.length, 384, "RSA 3072 modulus is 384 bytes");
    assert.notEqual(key.key.n[0], 0, "n has no leading zero byte");
    assert.deepEqual([...key.key.e], [1, 0, 1]);
    assert.deepEqual([...key.keyOperations].sort(), ["unwrapKey", "wrapKey"]);
    assert.deepEqual(key.properties.tags, { purpose: "cmk", team: "sdk-js" });
    assert.equal(key.properties.enabled, true);
    assert.equal(key.properties.recoveryLevel, "Recoverable");
    assert.equal(key.properties.recoverableDays, 90);
    // timestamps are unix seconds: created within this test's wall-clock window (fresh clock)
    const created = key.properties.createdOn.getTime();
    assert.ok(created >= Math.floor(before / 1000) * 1000 - 5000 && created <= Date.now() + 5000, `createdOn ${key.properties.createdOn.toISOString()}`);
    assert.equal(key.properties.updatedOn.getTime(), created);
    assert.equal(created % 1000, 0, "timestamps are whole seconds");

    const latest = await contoso.getKey(name);
    assert.equal(latest.id, key.id);
    assert.deepEqual([...latest.key.n], [...key.key.n]);
    const byVersion = await contoso.getKey(name, { version: key.properties.version });
    assert.equal(byVersion.id, key.id);
    assert.deepEqual(byVersion.properties.tags, { purpose: "cmk", team: "sdk-js" });
  });

  it("an RSA key created without key_ops gets the six RSA operations", T, async () => {
    const name = uniqueName("defops");
    const key = await contoso.createKey(name, "RSA");
    assert.equal(key.key.n.length, 256, "default RSA size is 2048");
    assert.deepEqual([...key.keyOperations].sort(), ALL_RSA_OPS);
  });

  it("creating an existing name adds a version; latest follows; old versions stay readable", T, async () => {
    const name = uniqueName("versions");
    const v1 = await contoso.createRsaKey(name, { tags: { v: "1" } });
    const v2 = await contoso.createRsaKey(name, { tags: { v: "2" } });
    assert.notEqual(v1.properties.version, v2.properties.version);
    assert.notDeepEqual([...v1.key.n], [...v2.key.n], "a new version has new key material");
    const latest = await contoso.getKey(name);
    assert.equal(latest.properties.version, v2.properties.version);
    assert.deepEqual(latest.properties.tags, { v: "2" });
    const old = await contoso.getKey(name, { version: v1.properties.version });
    assert.equal(old.id, v1.id);
    assert.deepEqual(old.properties.tags, { v: "1" });

    const versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    assert.deepEqual(versions.map((p) => p.version).sort(), [v1.properties.version, v2.properties.version].sort());
    for (const p of versions) {
      assertKeyId(p.id, server.vaultUrl("contoso-cmk"), name);
      assert.equal(p.name, name);
    }
  });

  it("updateKeyProperties changes tags, enabled, nbf/exp and key_ops of one version only", T, async () => {
    const name = uniqueName("update");
    const v1 = await contoso.createRsaKey(name);
    const v2 = await contoso.createRsaKey(name);
    const nbf = new Date(Math.floor(Date.now() / 1000) * 1000 - 3600_000);
    const exp = new Date(Math.floor(Date.now() / 1000) * 1000 + 400 * DAY_MS);
    const updated = await withWire(server, () =>
      contoso.updateKeyProperties(name, v1.properties.version, {
        enabled: false,
        tags: { state: "retired" },
        notBefore: nbf,
        expiresOn: exp,
        keyOps: ["unwrapKey"],
      }),
    );
    assert.equal(updated.id, v1.id);
    assert.equal(updated.properties.enabled, false);
    assert.deepEqual(updated.properties.tags, { state: "retired" });
    assert.equal(updated.properties.notBefore.getTime(), nbf.getTime());
    assert.equal(updated.properties.expiresOn.getTime(), exp.getTime());
    assert.deepEqual([...updated.keyOperations], ["unwrapKey"]);
    assert.ok(updated.properties.updatedOn >= updated.properties.createdOn);

    const reread = await contoso.getKey(name, { version: v1.properties.version });
    assert.equal(reread.properties.enabled, false);
    assert.deepEqual(reread.properties.tags, { state: "retired" });
    assert.deepEqual([...reread.keyOperations], ["unwrapKey"]);

    const latest = await contoso.getKey(name);
    assert.equal(latest.properties.version, v2.properties.version);
    assert.equal(latest.properties.enabled, true, "updating v1 does not touch the latest version");
    assert.deepEqual(latest.properties.tags ?? {}, {}, "latest version has no tags");

    // the versionless update (PATCH /keys/{n}/) targets the latest version
    const latestUpdated = await contoso.updateKeyProperties(name, { tags: { latest: "yes" } });
    assert.equal(latestUpdated.properties.version, v2.properties.version);
    assert.deepEqual(latestUpdated.properties.tags, { latest: "yes" });
    // the disabled version is still listed with enabled=false
    const versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    const v1Item = versions.find((p) => p.version === v1.properties.version);
    assert.ok(v1Item, "v1 listed");
    assert.equal(v1Item.enabled, false);
  });
});

describe("soft delete, recover, purge (pollers)", () => {
  it("beginDeleteKey / beginRecoverDeletedKey round trip under purge protection (contoso-cmk)", T, async () => {
    const name = uniqueName("lifecycle");
    const v1 = await contoso.createRsaKey(name, { tags: { keep: "me" } });
    const v2 = await contoso.createRsaKey(name);

    const t0 = Date.now();
    const deletePoller = await withWire(server, () => contoso.beginDeleteKey(name, POLL));
    const deleted = await withWire(server, () => deletePoller.pollUntilDone());
    assert.equal(deleted.name, name);
    assert.equal(deleted.properties.recoveryId, `${server.vaultUrl("contoso-cmk")}/deletedkeys/${name}`);
    assert.equal(deleted.properties.version, v2.properties.version, "the deleted bundle is the latest version");
    assert.ok(deleted.properties.deletedOn instanceof Date, "deletedDate present");
    assert.ok(Math.abs(deleted.properties.deletedOn.getTime() - t0) < 60_000, `deletedOn ${deleted.properties.deletedOn.toISOString()}`);
    assert.equal(
      deleted.properties.scheduledPurgeDate.getTime() - deleted.properties.deletedOn.getTime(),
      90 * DAY_MS,
      "scheduledPurgeDate = deletedDate + 90 days",
    );

    // the live key is gone
    await expectRestError(server, contoso.getKey(name), { status: 404, code: "KeyNotFound" });
    await expectRestError(server, contoso.getKey(name, { version: v1.properties.version }), { status: 404, code: "KeyNotFound" });
    // the deleted key is readable and listed
    const dk = await contoso.getDeletedKey(name);
    assert.equal(dk.properties.recoveryId, deleted.properties.recoveryId);
    assert.equal(dk.properties.scheduledPurgeDate.getTime(), deleted.properties.scheduledPurgeDate.getTime());
    assert.deepEqual(dk.properties.tags ?? {}, {}, "v2 had no tags");
    const listed = await collect(contoso.listDeletedKeys());
    const item = listed.find((d) => d.name === name);
    assert.ok(item, `${name} in listDeletedKeys`);
    assert.equal(item.properties.recoveryId, deleted.properties.recoveryId);
    assert.equal(item.properties.scheduledPurgeDate.getTime(), deleted.properties.scheduledPurgeDate.getTime());
    const live = await collect(contoso.listPropertiesOfKeys());
    assert.ok(!live.some((p) => p.name === name), "a deleted key is not in listPropertiesOfKeys");

    // the name cannot be reused, purge is refused, deleting again is 404
    await expectRestError(server, contoso.createRsaKey(name), { status: 409, code: "Conflict", inner: "ObjectIsDeletedButRecoverable" });
    await expectRestError(server, contoso.purgeDeletedKey(name), { status: 403, code: "Forbidden", message: /purge protection/i });
    await expectRestError(server, () => contoso.beginDeleteKey(name, POLL), { status: 404, code: "KeyNotFound" });

    // recover
    const recoverPoller = await withWire(server, () => contoso.beginRecoverDeletedKey(name, POLL));
    const recovered = await withWire(server, () => recoverPoller.pollUntilDone());
    assert.equal(recovered.name, name);
    assert.equal(recovered.id, v2.id);
    const back = await contoso.getKey(name);
    assert.equal(back.id, v2.id);
    assert.deepEqual([...back.key.n], [...v2.key.n]);
    const oldBack = await contoso.getKey(name, { version: v1.properties.version });
    assert.deepEqual(oldBack.properties.tags, { keep: "me" }, "older versions come back with their tags");
    const versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    assert.equal(versions.length, 2);
    await expectRestError(server, contoso.getDeletedKey(name), { status: 404, code: "KeyNotFound" });
    // and the name is usable again: a create adds a third version
    const v3 = await contoso.createRsaKey(name);
    assert.notEqual(v3.properties.version, v2.properties.version);
  });

  it("purge in a vault without purge protection (scratch) removes the key for good", T, async () => {
    const name = uniqueName("purge");
    const key = await scratch.createRsaKey(name);
    assert.equal(key.properties.recoveryLevel, "CustomizedRecoverable+Purgeable");
    assert.equal(key.properties.recoverableDays, 7);

    const poller = await scratch.beginDeleteKey(name, POLL);
    const deleted = await poller.pollUntilDone();
    assert.equal(deleted.properties.scheduledPurgeDate.getTime() - deleted.properties.deletedOn.getTime(), 7 * DAY_MS);

    const mark = server.recorder.mark();
    await withWire(server, () => scratch.purgeDeletedKey(name));
    const purgeCall = server.recorder.since(mark).find((e) => e.method === "DELETE" && /\/deletedkeys\//i.test(e.url));
    assert.equal(purgeCall?.status, 204, "purge answers 204");

    await expectRestError(server, scratch.getDeletedKey(name), { status: 404, code: "KeyNotFound" });
    await expectRestError(server, scratch.getKey(name), { status: 404, code: "KeyNotFound" });
    await expectRestError(server, scratch.purgeDeletedKey(name), { status: 404, code: "KeyNotFound" });
    const deletedList = await collect(scratch.listDeletedKeys());
    assert.ok(!deletedList.some((d) => d.name === name), "purged key not in listDeletedKeys");

    // the name is free again and starts over with a single version
    const again = await scratch.createRsaKey(name);
    assert.notEqual(again.properties.version, key.properties.version);
    const versions = await collect(scratch.listPropertiesOfKeyVersions(name));
    assert.deepEqual(versions.map((v) => v.version), [again.properties.version]);
  });

  it("beginRecoverDeletedKey on a key that is not deleted fails with 404", T, async () => {
    await expectRestError(server, async () => {
      const p = await contoso.beginRecoverDeletedKey(uniqueName("never-existed"), POLL);
      await p.pollUntilDone();
    }, { status: 404, code: "KeyNotFound" });
  });

  it("getDeletedKey of a live key is 404 KeyNotFound", T, async () => {
    const name = uniqueName("live");
    await contoso.createRsaKey(name);
    await expectRestError(server, contoso.getDeletedKey(name), { status: 404, code: "KeyNotFound" });
  });
});

describe("backup and restore", () => {
  it("backupKey / restoreKeyBackup brings back every version with the same ids and material", T, async () => {
    const name = uniqueName("backup");
    const v1 = await scratch.createRsaKey(name, { tags: { gen: "1" } });
    const v2 = await scratch.createRsaKey(name, { tags: { gen: "2" } });
    const blob = await withWire(server, () => scratch.backupKey(name));
    assert.ok(blob instanceof Uint8Array && blob.length > 0, "backup returns bytes");

    // restore onto an existing name is refused
    await expectRestError(server, scratch.restoreKeyBackup(blob), { status: 409 });

    // restore onto a soft-deleted name is refused with ObjectIsDeletedButRecoverable
    await (await scratch.beginDeleteKey(name, POLL)).pollUntilDone();
    await expectRestError(server, scratch.restoreKeyBackup(blob), { status: 409, code: "Conflict", inner: "ObjectIsDeletedButRecoverable" });

    // after purge the restore succeeds and is identical
    await scratch.purgeDeletedKey(name);
    const restored = await withWire(server, () => scratch.restoreKeyBackup(blob));
    assert.equal(restored.name, name);
    assert.equal(restored.id, v2.id, "restore answers the latest version, same version id");
    assert.deepEqual([...restored.key.n], [...v2.key.n]);
    assert.deepEqual(restored.properties.tags, { gen: "2" });
    const versions = await collect(scratch.listPropertiesOfKeyVersions(name));
    assert.deepEqual(versions.map((v) => v.version).sort(), [v1.properties.version, v2.properties.version].sort());
    const oldV = await scratch.getKey(name, { version: v1.properties.version });
    assert.deepEqual([...oldV.key.n], [...v1.key.n]);
    assert.deepEqual(oldV.properties.tags, { gen: "1" });
  });

  it("a backup of a key in scratch restores into contoso-cmk (same subscription and geography)", T, async () => {
    const name = uniqueName("xvault");
    const k = await scratch.createRsaKey(name);
    const blob = await scratch.backupKey(name);
    const restored = await withWire(server, () => contoso.restoreKeyBackup(blob));
    assert.equal(restored.name, name);
    assertKeyId(restored.id, server.vaultUrl("contoso-cmk"), name);
    assert.equal(restored.properties.version, k.properties.version);
    assert.deepEqual([...restored.key.n], [...k.key.n]);
    assert.equal(restored.properties.recoveryLevel, "Recoverable", "the restored key takes the target vault's recovery level");
  });

  it("a corrupt backup blob is 400 BadParameter", T, async () => {
    await expectRestError(server, contoso.restoreKeyBackup(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])), { status: 400, code: "BadParameter" });
  });
});

describe("rotation", () => {
  it("rotateKey creates a new version with new material and the same shape", T, async () => {
    const name = uniqueName("rotate");
    const v1 = await contoso.createRsaKey(name, { keySize: 2048, keyOps: ["wrapKey", "unwrapKey"], tags: { a: "b" } });
    const rotated = await withWire(server, () => contoso.rotateKey(name));
    assert.equal(rotated.name, name);
    assertKeyId(rotated.id, server.vaultUrl("contoso-cmk"), name);
    assert.notEqual(rotated.properties.version, v1.properties.version);
    assert.notDeepEqual([...rotated.key.n], [...v1.key.n]);
    assert.equal(rotated.key.n.length, 256);
    assert.equal(rotated.keyType, v1.keyType);
    assert.deepEqual([...rotated.keyOperations].sort(), ["unwrapKey", "wrapKey"]);
    const latest = await contoso.getKey(name);
    assert.equal(latest.id, rotated.id);
    const versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    assert.equal(versions.length, 2);
  });

  it("rotation policy: set, read back (service adds Notify before expiry), update", T, async () => {
    const name = uniqueName("policy");
    await contoso.createRsaKey(name);
    const set = await withWire(server, () =>
      contoso.updateKeyRotationPolicy(name, {
        lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P30D" }],
        expiresIn: "P90D",
      }),
    );
    assert.equal(set.id, `${server.vaultUrl("contoso-cmk")}/keys/${name}/rotationpolicy`);
    assert.equal(set.expiresIn, "P90D");
    const rotate = set.lifetimeActions.find((a) => a.action === "Rotate");
    assert.ok(rotate, `a Rotate action: ${JSON.stringify(set.lifetimeActions)}`);
    assert.equal(rotate.timeAfterCreate, "P30D");
    const notify = set.lifetimeActions.find((a) => a.action === "Notify");
    assert.ok(notify, `the service adds a Notify action: ${JSON.stringify(set.lifetimeActions)}`);
    assert.equal(notify.timeBeforeExpiry, "P30D");
    assert.ok(set.createdOn instanceof Date && set.updatedOn instanceof Date, "policy attributes carry created/updated");

    const got = await contoso.getKeyRotationPolicy(name);
    assert.equal(got.id, set.id);
    assert.equal(got.expiresIn, "P90D");
    assert.deepEqual(
      got.lifetimeActions.map((a) => [a.action, a.timeAfterCreate, a.timeBeforeExpiry]).sort(),
      set.lifetimeActions.map((a) => [a.action, a.timeAfterCreate, a.timeBeforeExpiry]).sort(),
    );

    const changed = await contoso.updateKeyRotationPolicy(name, {
      lifetimeActions: [
        { action: "Rotate", timeBeforeExpiry: "P10D" },
        { action: "Notify", timeBeforeExpiry: "P20D" },
      ],
      expiresIn: "P60D",
    });
    assert.equal(changed.expiresIn, "P60D");
    const r2 = changed.lifetimeActions.find((a) => a.action === "Rotate");
    assert.equal(r2.timeBeforeExpiry, "P10D");
    assert.equal(r2.timeAfterCreate, undefined);
    const n2 = changed.lifetimeActions.filter((a) => a.action === "Notify");
    assert.deepEqual(n2.map((a) => a.timeBeforeExpiry), ["P20D"], "an explicit Notify is kept as given, not doubled");
    const reread = await contoso.getKeyRotationPolicy(name);
    assert.equal(reread.expiresIn, "P60D");
  });

  it("getKeyRotationPolicy of a key without a policy answers a policy document", T, async () => {
    const name = uniqueName("nopolicy");
    await contoso.createRsaKey(name);
    const p = await withWire(server, () => contoso.getKeyRotationPolicy(name));
    assert.equal(p.id, `${server.vaultUrl("contoso-cmk")}/keys/${name}/rotationpolicy`);
    assert.ok(!(p.lifetimeActions ?? []).some((a) => a.action === "Rotate"), "no automatic rotation unless asked");
  });

  it("rotateKey of a missing key is 404 KeyNotFound", T, async () => {
    await expectRestError(server, contoso.rotateKey(uniqueName("missing")), { status: 404, code: "KeyNotFound" });
  });
});

describe("paging with small pages", () => {
  it("listPropertiesOfKeys byPage(maxPageSize 2) follows nextLink through every key", T, async () => {
    const prefix = uniqueName("page");
    const names = [];
    for (let i = 0; i < 7; i++) {
      const n = `${prefix}-${i}`;
      await contoso.createRsaKey(n);
      names.push(n);
    }
    const mark = server.recorder.mark();
    const pages = await withWire(server, () => collectPages(contoso.listPropertiesOfKeys(), 2));
    const listCalls = server.recorder.since(mark).filter((e) => e.method === "GET" && e.status === 200);
    assert.ok(listCalls.length >= 1 && /maxresults=2/.test(listCalls[0].url), `first list call asks for maxresults=2: ${listCalls[0]?.url}`);
    for (const page of pages) assert.ok(page.length <= 2, `a page has ${page.length} > 2 items`);
    const all = pages.flat();
    const total = all.length;
    assert.ok(pages.length >= Math.ceil(total / 2), `${pages.length} pages for ${total} keys`);
    assert.ok(pages.length >= 4, "7+ keys need at least 4 pages of 2");
    const seen = all.map((p) => p.name);
    assert.equal(new Set(seen).size, seen.length, "no key is listed twice across pages");
    for (const n of names) assert.ok(seen.includes(n), `${n} listed`);
    for (const p of all) {
      assertKeyId(p.id, server.vaultUrl("contoso-cmk"), p.name, { versioned: false });
      assert.equal(p.version, undefined, "KeyItem ids in /keys are versionless");
      assert.equal(typeof p.enabled, "boolean");
    }
    // the flat iterator (default page size) sees the same set
    const flat = (await collect(contoso.listPropertiesOfKeys())).map((p) => p.name);
    assert.deepEqual([...flat].sort(), [...seen].sort());
  });

  it("listPropertiesOfKeyVersions byPage(maxPageSize 2) returns every version, versioned ids", T, async () => {
    const name = uniqueName("vpage");
    const made = [];
    for (let i = 0; i < 5; i++) made.push((await contoso.createRsaKey(name)).properties.version);
    const pages = await withWire(server, () => collectPages(contoso.listPropertiesOfKeyVersions(name), 2));
    for (const page of pages) assert.ok(page.length <= 2, `a page has ${page.length} > 2 items`);
    assert.ok(pages.length >= 3, `5 versions need at least 3 pages, got ${pages.length}`);
    const all = pages.flat();
    assert.deepEqual(all.map((p) => p.version).sort(), [...made].sort());
    for (const p of all) assertKeyId(p.id, server.vaultUrl("contoso-cmk"), name);
  });

  it("listDeletedKeys byPage(maxPageSize 2) returns every deleted key with its schedule", T, async () => {
    const prefix = uniqueName("dpage");
    const names = [];
    for (let i = 0; i < 5; i++) {
      const n = `${prefix}-${i}`;
      await scratch.createRsaKey(n);
      await (await scratch.beginDeleteKey(n, POLL)).pollUntilDone();
      names.push(n);
    }
    const pages = await withWire(server, () => collectPages(scratch.listDeletedKeys(), 2));
    for (const page of pages) assert.ok(page.length <= 2, `a page has ${page.length} > 2 items`);
    const all = pages.flat();
    assert.ok(pages.length >= Math.ceil(all.length / 2));
    for (const n of names) {
      const d = all.find((x) => x.name === n);
      assert.ok(d, `${n} listed as deleted`);
      assert.equal(d.properties.recoveryId, `${server.vaultUrl("scratch")}/deletedkeys/${n}`);
      assert.equal(d.properties.scheduledPurgeDate.getTime() - d.properties.deletedOn.getTime(), 7 * DAY_MS);
    }
  });
});

describe("random bytes", () => {
  it("getRandomBytes returns the requested count, different each time", T, async () => {
    const a = await withWire(server, () => contoso.getRandomBytes(32));
    const b = await contoso.getRandomBytes(32);
    assert.equal(a.length, 32);
    assert.equal(b.length, 32);
    assert.notDeepEqual([...a], [...b]);
  });
});

describe("wire hygiene", () => {
  it("no exchange in this file was answered with a 5xx", T, () => {
    assertNo5xx(server);
  });
});

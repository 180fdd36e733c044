// Time-driven behaviour through POST /_emulator/clock: scheduled purge after the retention
// period, automatic rotation from a rotation policy, expiry of keys. The emulator clock only moves
// forward and belongs to this file's data dir, so the tests run in order and account for the
// time that earlier tests moved.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";

import {
  T,
  DAY_MS,
  startServer,
  uniqueName,
  expectRestError,
  withWire,
  collect,
  assertNo5xx,
} from "./helpers.mjs";

const POLL = { intervalInMs: 100 };

let server;
let contoso;
let scratch;

before(async () => {
  server = await startServer();
  contoso = server.keyClient("contoso-cmk");
  scratch = server.keyClient("scratch");
});

after(async () => {
  await server?.stop();
});

describe("emulator clock", () => {
  it("GET /_emulator/clock reads the time and POST advance moves it forward", T, async () => {
    const before = await server.getClock();
    assert.ok(before.now, `GET /_emulator/clock answer carries a time: ${before.text}`);
    assert.ok(Math.abs(before.now.getTime() - Date.now()) < 5 * 60_000, `a fresh data dir starts near wall time: ${before.text}`);
    await server.advanceClock("PT1H");
    const after = await server.getClock();
    const moved = after.now.getTime() - before.now.getTime();
    assert.ok(moved >= 3600_000 && moved < 3600_000 + 60_000, `advanced by ~1h, got ${moved} ms (${before.text} -> ${after.text})`);
  });

  it("a key created after the clock moved carries the emulator's time", T, async () => {
    const now = (await server.getClock()).now;
    const k = await contoso.createRsaKey(uniqueName("clocked"));
    assert.ok(Math.abs(k.properties.createdOn.getTime() - now.getTime()) < 60_000, `createdOn ${k.properties.createdOn.toISOString()} vs emulator ${now.toISOString()}`);
  });
});

describe("time passes", () => {
  it("scheduled purge: scratch (7 days) forgets a deleted key after P8D; contoso-cmk (90 days) keeps it", T, async () => {
    const sName = uniqueName("sched-scratch");
    const cName = uniqueName("sched-contoso");
    await scratch.createRsaKey(sName);
    await contoso.createRsaKey(cName);
    const sDeleted = await (await scratch.beginDeleteKey(sName, POLL)).pollUntilDone();
    const cDeleted = await (await contoso.beginDeleteKey(cName, POLL)).pollUntilDone();
    assert.equal(sDeleted.properties.scheduledPurgeDate.getTime() - sDeleted.properties.deletedOn.getTime(), 7 * DAY_MS);

    // not yet due after 6 days
    await server.advanceClock("P6D");
    const still = await withWire(server, () => scratch.getDeletedKey(sName));
    assert.equal(still.properties.scheduledPurgeDate.getTime(), sDeleted.properties.scheduledPurgeDate.getTime());

    // due after 8 days in total
    await server.advanceClock("P2D");
    await expectRestError(server, scratch.getDeletedKey(sName), { status: 404, code: "KeyNotFound" });
    const deletedList = await collect(scratch.listDeletedKeys());
    assert.ok(!deletedList.some((d) => d.name === sName), "purged by schedule: not listed");
    // the name is free again
    const reborn = await withWire(server, () => scratch.createRsaKey(sName));
    assert.equal(reborn.name, sName);

    // the 90-day vault still holds its deleted key, and purge is still refused
    const c = await withWire(server, () => contoso.getDeletedKey(cName));
    assert.equal(c.properties.scheduledPurgeDate.getTime(), cDeleted.properties.scheduledPurgeDate.getTime());
    await expectRestError(server, contoso.purgeDeletedKey(cName), { status: 403, code: "Forbidden" });
  });

  it("automatic rotation: Rotate timeAfterCreate P30D makes a new version after P31D", T, async () => {
    const name = uniqueName("autorot");
    const v1 = await contoso.createRsaKey(name, { keyOps: ["wrapKey", "unwrapKey"] });
    const policy = await withWire(server, () =>
      contoso.updateKeyRotationPolicy(name, {
        lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P30D" }],
        expiresIn: "P90D",
      }),
    );
    assert.ok(policy.lifetimeActions.some((a) => a.action === "Rotate" && a.timeAfterCreate === "P30D"));
    const cek = crypto.randomBytes(32);
    const wrapped = await server.cryptoClient(v1.id).wrapKey("RSA-OAEP", cek);

    await server.advanceClock("P29D");
    let versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    assert.equal(versions.length, 1, "not rotated before 30 days");

    await server.advanceClock("P2D");
    versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    assert.equal(versions.length, 2, `rotated once after 31 days: ${versions.map((v) => v.version)}`);
    const latest = await contoso.getKey(name);
    assert.notEqual(latest.properties.version, v1.properties.version);
    assert.notDeepEqual([...latest.key.n], [...v1.key.n]);
    assert.deepEqual([...latest.keyOperations].sort(), ["unwrapKey", "wrapKey"], "the new version keeps key_ops");
    // the rotated version expires per the policy's expiryTime
    assert.ok(latest.properties.expiresOn, "the rotated version gets an expiry from expiryTime P90D");
    assert.equal(latest.properties.expiresOn.getTime() - latest.properties.createdOn.getTime(), 90 * DAY_MS);
    // the old version still unwraps
    const u = await withWire(server, () => server.cryptoClient(v1.id).unwrapKey("RSA-OAEP", wrapped.result));
    assert.deepEqual(Buffer.from(u.result), cek);

    // 30 more days after the new version: another rotation
    await server.advanceClock("P31D");
    versions = await collect(contoso.listPropertiesOfKeyVersions(name));
    assert.equal(versions.length, 3, "rotation repeats from the newest version's creation");
  });

  it("an expired key still unwraps, but the server refuses wrap with it (403)", T, async () => {
    const name = uniqueName("expiring");
    const clockNow = (await server.getClock()).now;
    // expires one day after the (already advanced) emulator time; wall time is far behind, so
    // the SDK's own expiry check (wall clock) does not interfere: the refusal is the server's
    const k = await contoso.createRsaKey(name, { expiresOn: new Date(clockNow.getTime() + DAY_MS) });
    const cc = server.cryptoClient(k);
    const cek = crypto.randomBytes(32);
    const wrapped = await cc.wrapKey("RSA-OAEP", cek); // local
    const w256 = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek)); // server, still valid

    await server.advanceClock("P2D");
    await expectRestError(server, cc.wrapKey("RSA-OAEP-256", cek), { status: 403, code: "Forbidden" });
    await expectRestError(server, cc.sign("RS256", crypto.createHash("sha256").update("x").digest()), { status: 403, code: "Forbidden" });
    const u1 = await withWire(server, () => cc.unwrapKey("RSA-OAEP", wrapped.result));
    assert.deepEqual(Buffer.from(u1.result), cek);
    const u2 = await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", w256.result));
    assert.deepEqual(Buffer.from(u2.result), cek);
  });

  it("a not-yet-valid key (nbf in the emulator's future) refuses wrap but unwraps", T, async () => {
    const name = uniqueName("notyet");
    const k = await contoso.createRsaKey(name);
    const cc = server.cryptoClient(k);
    const cek = crypto.randomBytes(32);
    const wrapped = await cc.wrapKey("RSA-OAEP", cek);
    const clockNow = (await server.getClock()).now;
    await contoso.updateKeyProperties(name, k.properties.version, { notBefore: new Date(clockNow.getTime() + 10 * DAY_MS) });
    await expectRestError(server, cc.wrapKey("RSA-OAEP-256", cek), { status: 403, code: "Forbidden" });
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP", wrapped.result));
    assert.deepEqual(Buffer.from(u.result), cek);
    await server.advanceClock("P11D");
    const w = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek));
    assert.equal(w.result.length, 256, "valid once nbf has passed");
  });

  it("the clock cannot go backwards", T, async () => {
    const before = await server.getClock();
    const r = await server.raw("POST", "/_emulator/clock", { body: { advance: "-P1D" } });
    assert.equal(r.status, 400, `negative advance is refused with 400: ${r.status} ${r.text}`);
    const after = await server.getClock();
    assert.ok(after.now.getTime() >= before.now.getTime());
  });
});

describe("wire hygiene", () => {
  it("no exchange in this file was answered with a 5xx", T, () => {
    assertNo5xx(server);
  });
});

// Durability: keys, versions, tags, deleted keys and their schedules, rotation policies, the
// emulator clock and the key material in the token survive a restart of cmkemu on the same data
// dir (graceful SIGTERM, and SIGKILL for an acknowledged write).
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

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

function clients() {
  return { contoso: server.keyClient("contoso-cmk"), scratch: server.keyClient("scratch"), dflt: server.keyClient() };
}

async function restart(opts) {
  const port = server.port;
  const stopped = await server.restart(opts);
  assert.equal(server.port, port, "restarted on the same port");
  return stopped;
}

describe("restart on the same data dir", () => {
  const state = {};

  it("set up: keys with versions and tags, a deleted key in each vault, a rotation policy, a moved clock", T, async () => {
    const { contoso, scratch, dflt } = clients();
    state.demo = await dflt.getKey("demo-key");

    state.name = uniqueName("durable");
    state.v1 = await contoso.createRsaKey(state.name, { tags: { gen: "1" }, keyOps: ["wrapKey", "unwrapKey"] });
    state.v2 = await contoso.createRsaKey(state.name, { tags: { gen: "2" } });
    await contoso.updateKeyProperties(state.name, state.v1.properties.version, { enabled: false });
    // a separate key carries the rotation policy, so a policy problem cannot hide the rest
    state.pName = uniqueName("durable-policy");
    state.p1 = await contoso.createRsaKey(state.pName);
    state.policy = await contoso.updateKeyRotationPolicy(state.pName, {
      lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P60D" }],
      expiresIn: "P180D",
    });

    state.cek = crypto.randomBytes(32);
    state.wrapped = await server.cryptoClient(state.v2.id).wrapKey("RSA-OAEP", state.cek);
    state.wrapped256 = await withWire(server, () => server.cryptoClient(state.v2.id).wrapKey("RSA-OAEP-256", state.cek));

    state.sDeletedName = uniqueName("gone-scratch");
    await scratch.createRsaKey(state.sDeletedName);
    state.sDeleted = await (await scratch.beginDeleteKey(state.sDeletedName, POLL)).pollUntilDone();

    state.cDeletedName = uniqueName("gone-contoso");
    await contoso.createRsaKey(state.cDeletedName);
    state.cDeleted = await (await contoso.beginDeleteKey(state.cDeletedName, POLL)).pollUntilDone();

    await server.advanceClock("P2D");
    state.clock = (await server.getClock()).now;
    assert.ok(state.clock, "clock readable");
  });

  it("cmkemu stops cleanly on SIGTERM and starts again on the same data dir", T, async () => {
    assert.ok(state.v2, "set-up ran");
    const stopped = await restart({ signal: "SIGTERM" });
    assert.ok(stopped.code === 0 || stopped.signal === "SIGTERM", `cmkemu stops cleanly on SIGTERM: ${JSON.stringify(stopped)}`);
  });

  it("after the restart: the demo world is not loaded a second time", T, async () => {
    const { dflt } = clients();
    await withWire(server, async () => {
      const demo = await dflt.getKey("demo-key");
      assert.equal(demo.id, state.demo.id, "demo-key keeps its version");
      const demoVersions = await collect(dflt.listPropertiesOfKeyVersions("demo-key"));
      assert.equal(demoVersions.length, 1, "demo-key was not re-created on the second start");
    });
  });

  it("after the restart: keys, versions, tags, enabled flags and key_ops are still there", T, async () => {
    const { contoso } = clients();
    await withWire(server, async () => {
      const latest = await contoso.getKey(state.name);
      assert.equal(latest.id, state.v2.id);
      assert.deepEqual([...latest.key.n], [...state.v2.key.n]);
      assert.deepEqual(latest.properties.tags, { gen: "2" });
      const old = await contoso.getKey(state.name, { version: state.v1.properties.version });
      assert.equal(old.properties.enabled, false);
      assert.deepEqual(old.properties.tags, { gen: "1" });
      assert.deepEqual([...old.keyOperations].sort(), ["unwrapKey", "wrapKey"]);
      assert.equal(old.properties.createdOn.getTime(), state.v1.properties.createdOn.getTime());
      const versions = await collect(contoso.listPropertiesOfKeyVersions(state.name));
      assert.deepEqual(versions.map((v) => v.version).sort(), [state.v1.properties.version, state.v2.properties.version].sort());
    });
  });

  it("after the restart: a key with a rotation policy and its policy are still there", T, async () => {
    const { contoso } = clients();
    await withWire(server, async () => {
      const k = await contoso.getKey(state.pName);
      assert.equal(k.id, state.p1.id);
      const policy = await contoso.getKeyRotationPolicy(state.pName);
      assert.equal(policy.expiresIn, "P180D");
      assert.ok(policy.lifetimeActions.some((a) => a.action === "Rotate" && a.timeAfterCreate === "P60D"));
    });
  });

  it("after the restart: deleted keys keep deletedDate and scheduledPurgeDate, and their names stay taken", T, async () => {
    const { contoso, scratch } = clients();
    await withWire(server, async () => {
      const s = await scratch.getDeletedKey(state.sDeletedName);
      assert.equal(s.properties.deletedOn.getTime(), state.sDeleted.properties.deletedOn.getTime());
      assert.equal(s.properties.scheduledPurgeDate.getTime(), state.sDeleted.properties.scheduledPurgeDate.getTime());
      const c = await contoso.getDeletedKey(state.cDeletedName);
      assert.equal(c.properties.scheduledPurgeDate.getTime(), state.cDeleted.properties.scheduledPurgeDate.getTime());
    });
    await expectRestError(server, contoso.createRsaKey(state.cDeletedName), { status: 409, code: "Conflict", inner: "ObjectIsDeletedButRecoverable" });
  });

  it("after the restart: the emulator clock did not go back", T, async () => {
    const clock = (await server.getClock()).now;
    assert.ok(clock.getTime() >= state.clock.getTime(), `the emulator clock jumped back on restart: ${clock.toISOString()} < ${state.clock.toISOString()}`);
  });

  it("key material survived in the token: ciphertexts from before the restart unwrap", T, async () => {
    const cc = server.cryptoClient(state.v2.id);
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP", state.wrapped.result));
    assert.deepEqual(Buffer.from(u.result), state.cek);
    const u256 = await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", state.wrapped256.result));
    assert.deepEqual(Buffer.from(u256.result), state.cek);
  });

  it("after the restart: a deleted key recovers with its material", T, async () => {
    const { contoso } = clients();
    const recovered = await withWire(server, async () => (await contoso.beginRecoverDeletedKey(state.cDeletedName, POLL)).pollUntilDone());
    assert.equal(recovered.name, state.cDeletedName);
    assert.equal(recovered.id, state.cDeleted.id);
    const cek = crypto.randomBytes(32);
    const cc = server.cryptoClient(recovered.id);
    const w = await cc.wrapKey("RSA-OAEP", cek);
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP", w.result));
    assert.deepEqual(Buffer.from(u.result), cek);
  });

  it("after the restart: schedules still apply (scratch purge at +7 days, rotation at +60 days)", T, async () => {
    const { contoso, scratch } = clients();
    // the scratch key was deleted 2 days before the restart; 6 more days make it due
    await server.advanceClock("P6D");
    await expectRestError(server, scratch.getDeletedKey(state.sDeletedName), { status: 404, code: "KeyNotFound" });
    // the rotation policy (P60D after creation) fires after the restart too: 2 + 6 + 53 = 61 days
    await server.advanceClock("P53D");
    const versions = await withWire(server, () => collect(contoso.listPropertiesOfKeyVersions(state.pName)));
    assert.equal(versions.length, 2, "the rotation policy survived the restart and rotated once");
  });

  it("an acknowledged write survives SIGKILL", T, async () => {
    const { contoso, scratch } = clients();
    const name = uniqueName("crash");
    const k = await contoso.createRsaKey(name, { tags: { crash: "test" } });
    const cek = crypto.randomBytes(32);
    const w = await server.cryptoClient(k.id).wrapKey("RSA-OAEP", cek);
    const delName = uniqueName("crash-del");
    await scratch.createRsaKey(delName);
    await (await scratch.beginDeleteKey(delName, POLL)).pollUntilDone();

    await restart({ signal: "SIGKILL" });
    const c2 = clients();
    const back = await withWire(server, () => c2.contoso.getKey(name));
    assert.equal(back.id, k.id);
    assert.deepEqual(back.properties.tags, { crash: "test" });
    const u = await withWire(server, () => server.cryptoClient(k.id).unwrapKey("RSA-OAEP", w.result));
    assert.deepEqual(Buffer.from(u.result), cek);
    const d = await withWire(server, () => c2.scratch.getDeletedKey(delName));
    assert.equal(d.properties.scheduledPurgeDate.getTime() - d.properties.deletedOn.getTime(), 7 * DAY_MS);
  });

  it("restore of a backup taken before a restart works after it", T, async () => {
    const { scratch } = clients();
    const name = uniqueName("bk-restart");
    const k = await scratch.createRsaKey(name);
    const blob = await scratch.backupKey(name);
    await (await scratch.beginDeleteKey(name, POLL)).pollUntilDone();
    await scratch.purgeDeletedKey(name);
    await restart({ signal: "SIGTERM" });
    const restored = await withWire(server, () => clients().scratch.restoreKeyBackup(blob));
    assert.equal(restored.id, k.id);
    assert.deepEqual([...restored.key.n], [...k.key.n]);
  });
});

describe("wire hygiene", () => {
  it("no exchange in this file was answered with a 5xx", T, () => {
    assertNo5xx(server); // the recorder lives on across restarts
  });
});

// CryptographyClient against cmkemu: RSA-OAEP and RSA1_5 wrap done locally by the SDK (from the
// key's n/e) and unwrapped in the HSM; RSA-OAEP-256 round trips through the server; ciphertexts
// made with plain Node crypto; an imported key proves the server's own wrap output is standard;
// sign/verify; server-side refusals (disabled key, operation outside key_ops, bad algorithm).
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";

import {
  T,
  startServer,
  uniqueName,
  expectRestError,
  withWire,
  formatEntry,
  assertNo5xx,
} from "./helpers.mjs";

let server;
let contoso;
let dflt;

before(async () => {
  server = await startServer();
  contoso = server.keyClient("contoso-cmk");
  dflt = server.keyClient();
});

after(async () => {
  await server?.stop();
});

const b64u = (u8) => Buffer.from(u8).toString("base64url");

function publicKeyOf(kvKey) {
  return crypto.createPublicKey({ key: { kty: "RSA", n: b64u(kvKey.key.n), e: b64u(kvKey.key.e) }, format: "jwk" });
}

/** Runs fn, returns [result, exchanges seen on the wire meanwhile]. */
async function traced(fn) {
  const mark = server.recorder.mark();
  const result = await withWire(server, fn);
  return [result, server.recorder.since(mark)];
}

const isOp = (op) => (e) => e.method === "POST" && new RegExp(`/${op}(\\?|$)`, "i").test(e.url);

describe("wrap / unwrap", () => {
  let key;
  before(async () => {
    key = await contoso.createRsaKey(uniqueName("wrap"), { keySize: 2048 });
  });

  it("RSA-OAEP: the SDK wraps locally from n/e, the server unwraps", T, async () => {
    const cc = server.cryptoClient(key.id);
    const cek = crypto.randomBytes(32);
    const [wrapped, wrapWire] = await traced(() => cc.wrapKey("RSA-OAEP", cek));
    assert.equal(wrapWire.filter(isOp("wrapkey")).length, 0, "RSA-OAEP wrap must not go to the server:\n" + wrapWire.map(formatEntry).join("\n"));
    assert.ok(wrapWire.some((e) => e.method === "GET" && e.status === 200), "the SDK fetched the key (GET) first");
    assert.equal(wrapped.result.length, 256);
    assert.equal(wrapped.keyID, key.id);

    const [unwrapped, unwrapWire] = await traced(() => cc.unwrapKey("RSA-OAEP", wrapped.result));
    const call = unwrapWire.find(isOp("unwrapkey"));
    assert.ok(call, "unwrap went to the server");
    assert.equal(call.status, 200);
    assert.deepEqual(Buffer.from(unwrapped.result), cek);
    assert.equal(unwrapped.keyID, key.id, "the unwrap answer's kid is the versioned key id");
  });

  it("RSA-OAEP: ciphertext made by plain Node crypto (SHA-1, MGF1-SHA1, empty label) unwraps", T, async () => {
    const cek = crypto.randomBytes(32);
    const ct = crypto.publicEncrypt({ key: publicKeyOf(key), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" }, cek);
    const cc = server.cryptoClient(key.id);
    const r = await withWire(server, () => cc.unwrapKey("RSA-OAEP", ct));
    assert.deepEqual(Buffer.from(r.result), cek);
  });

  it("RSA-OAEP-256: wrap goes to the server, round trip, and Node-made ciphertext unwraps", T, async () => {
    const cc = server.cryptoClient(key.id);
    const cek = crypto.randomBytes(32);
    const [wrapped, wire] = await traced(() => cc.wrapKey("RSA-OAEP-256", cek));
    const call = wire.find(isOp("wrapkey"));
    assert.ok(call && call.status === 200, "RSA-OAEP-256 wrap is done by the server");
    assert.equal(wrapped.result.length, 256);
    assert.equal(wrapped.keyID, key.id);
    const again = await cc.wrapKey("RSA-OAEP-256", cek);
    assert.notDeepEqual([...again.result], [...wrapped.result], "OAEP is randomized");

    const un = await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", wrapped.result));
    assert.deepEqual(Buffer.from(un.result), cek);
    const un2 = await cc.unwrapKey("RSA-OAEP-256", again.result);
    assert.deepEqual(Buffer.from(un2.result), cek);

    const ct = crypto.publicEncrypt({ key: publicKeyOf(key), padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, cek);
    const un3 = await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", ct));
    assert.deepEqual(Buffer.from(un3.result), cek);
  });

  it("RSA1_5: the SDK wraps locally, the server unwraps", T, async () => {
    const cc = server.cryptoClient(key.id);
    const cek = crypto.randomBytes(32);
    const [wrapped, wire] = await traced(() => cc.wrapKey("RSA1_5", cek));
    assert.equal(wire.filter(isOp("wrapkey")).length, 0, "RSA1_5 wrap is local in the SDK");
    const un = await withWire(server, () => cc.unwrapKey("RSA1_5", wrapped.result));
    assert.deepEqual(Buffer.from(un.result), cek);
  });

  it("encrypt / decrypt: RSA-OAEP (local encrypt) and RSA-OAEP-256 (server encrypt)", T, async () => {
    const cc = server.cryptoClient(key.id);
    const msg = Buffer.from("customer-managed key says hello");
    const [enc1, wire1] = await traced(() => cc.encrypt({ algorithm: "RSA-OAEP", plaintext: msg }));
    assert.equal(wire1.filter(isOp("encrypt")).length, 0, "RSA-OAEP encrypt is local");
    const dec1 = await withWire(server, () => cc.decrypt({ algorithm: "RSA-OAEP", ciphertext: enc1.result }));
    assert.deepEqual(Buffer.from(dec1.result), msg);

    const [enc2, wire2] = await traced(() => cc.encrypt({ algorithm: "RSA-OAEP-256", plaintext: msg }));
    assert.ok(wire2.some(isOp("encrypt")), "RSA-OAEP-256 encrypt goes to the server");
    const dec2 = await withWire(server, () => cc.decrypt({ algorithm: "RSA-OAEP-256", ciphertext: enc2.result }));
    assert.deepEqual(Buffer.from(dec2.result), msg);

    const enc3 = await cc.encrypt({ algorithm: "RSA1_5", plaintext: msg });
    const dec3 = await withWire(server, () => cc.decrypt({ algorithm: "RSA1_5", ciphertext: enc3.result }));
    assert.deepEqual(Buffer.from(dec3.result), msg);
  });

  it("a versionless CryptographyClient (/keys/{name}) works against the latest version", T, async () => {
    const name = uniqueName("verless");
    const k = await contoso.createRsaKey(name);
    const cc = server.cryptoClient(`${server.vaultUrl("contoso-cmk")}/keys/${name}`);
    const cek = crypto.randomBytes(32);
    const w = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek));
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", w.result));
    assert.deepEqual(Buffer.from(u.result), cek);
    const w2 = await cc.wrapKey("RSA-OAEP", cek);
    const u2 = await withWire(server, () => cc.unwrapKey("RSA-OAEP", w2.result));
    assert.deepEqual(Buffer.from(u2.result), cek);
    assert.equal(u2.keyID, k.id);
  });

  it("KeyClient.getCryptographyClient shares the KeyClient pipeline and works", T, async () => {
    const cc = contoso.getCryptographyClient(key.name, { keyVersion: key.properties.version });
    const cek = crypto.randomBytes(16);
    const w = await cc.wrapKey("RSA-OAEP", cek);
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP", w.result));
    assert.deepEqual(Buffer.from(u.result), cek);
  });

  it("after rotation an old version still unwraps what was wrapped under it", T, async () => {
    const name = uniqueName("rot-unwrap");
    const v1 = await contoso.createRsaKey(name);
    const cc1 = server.cryptoClient(v1.id);
    const cek = crypto.randomBytes(32);
    const w = await cc1.wrapKey("RSA-OAEP", cek);
    const v2 = await contoso.rotateKey(name);
    assert.notEqual(v2.id, v1.id);
    const u = await withWire(server, () => server.cryptoClient(v1.id).unwrapKey("RSA-OAEP", w.result));
    assert.deepEqual(Buffer.from(u.result), cek);
    // the new version cannot unwrap it: a 4xx, never a 5xx or the wrong bytes
    let err;
    try {
      const wrong = await server.cryptoClient(v2.id).unwrapKey("RSA-OAEP", w.result);
      assert.notDeepEqual(Buffer.from(wrong.result), cek);
    } catch (e) {
      err = e;
    }
    assert.ok(err, "unwrapping with the wrong key version must fail");
    assert.ok(err.statusCode >= 400 && err.statusCode < 500, `expected a 4xx, got ${err.statusCode} ${err.code}: ${err.message}`);
  });

  it("RSA 4096 key: RSA-OAEP-256 round trip and a local RSA-OAEP wrap", T, async () => {
    const k = await contoso.createRsaKey(uniqueName("rsa4096"), { keySize: 4096 });
    assert.equal(k.key.n.length, 512);
    const cc = server.cryptoClient(k.id);
    const cek = crypto.randomBytes(32);
    const w = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek));
    assert.equal(w.result.length, 512);
    assert.deepEqual(Buffer.from((await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", w.result))).result), cek);
    const w2 = await cc.wrapKey("RSA-OAEP", cek);
    assert.deepEqual(Buffer.from((await withWire(server, () => cc.unwrapKey("RSA-OAEP", w2.result))).result), cek);
  });

  it("the default vault's demo-key round trips (disableChallengeResourceVerification)", T, async () => {
    const demo = await dflt.getKey("demo-key");
    const cc = server.cryptoClient(demo.id);
    const cek = crypto.randomBytes(32);
    const w = await cc.wrapKey("RSA-OAEP", cek);
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP", w.result));
    assert.deepEqual(Buffer.from(u.result), cek);
    const w256 = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek));
    const u256 = await withWire(server, () => cc.unwrapKey("RSA-OAEP-256", w256.result));
    assert.deepEqual(Buffer.from(u256.result), cek);
  });
});

describe("imported key: the server's own output is standard", () => {
  let imported;
  let privateKey;
  before(async () => {
    const pair = crypto.generateKeyPairSync("rsa", { modulusLength: 2048, publicExponent: 65537 });
    privateKey = pair.privateKey;
    const jwk = pair.privateKey.export({ format: "jwk" });
    const bytes = (s) => new Uint8Array(Buffer.from(s, "base64url"));
    imported = await withWire(server, () =>
      contoso.importKey(uniqueName("imported"), {
        kty: "RSA",
        n: bytes(jwk.n),
        e: bytes(jwk.e),
        d: bytes(jwk.d),
        p: bytes(jwk.p),
        q: bytes(jwk.q),
        dp: bytes(jwk.dp),
        dq: bytes(jwk.dq),
        qi: bytes(jwk.qi),
        keyOps: ["encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify"],
      }),
    );
    imported.expectedN = Buffer.from(jwk.n, "base64url");
  });

  it("importKey answers the public part only, same modulus", T, () => {
    assert.deepEqual(Buffer.from(imported.key.n), imported.expectedN);
    assert.deepEqual([...imported.key.e], [1, 0, 1]);
    for (const priv of ["d", "p", "q", "dp", "dq", "qi"]) {
      assert.equal(imported.key[priv], undefined, `private component ${priv} must never be returned`);
    }
  });

  it("server RSA-OAEP-256 and RSA-OAEP wraps decrypt with Node's private key", T, async () => {
    const cc = server.cryptoClient(imported.id);
    const cek = crypto.randomBytes(32);
    const w256 = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek));
    const p256 = crypto.privateDecrypt({ key: privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" }, Buffer.from(w256.result));
    assert.deepEqual(p256, cek);
    // force a server-side RSA-OAEP wrap by constructing the client from the id only
    // (the local provider is used when possible, so use the raw REST API for RSA-OAEP)
    const r = await server.raw("POST", `/keys/${imported.name}/${imported.properties.version}/wrapkey?api-version=7.5`, {
      vault: "contoso-cmk",
      body: { alg: "RSA-OAEP", value: cek.toString("base64url") },
      headers: { authorization: "Bearer x" },
    });
    assert.equal(r.status, 200, `server RSA-OAEP wrap: ${r.status} ${r.text}`);
    assert.equal(r.json.kid, imported.id);
    const p1 = crypto.privateDecrypt({ key: privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha1" }, Buffer.from(r.json.value, "base64url"));
    assert.deepEqual(p1, cek);
  });

  it("sign (server) verifies with Node, and verify (server) accepts good and rejects tampered signatures", T, async () => {
    const cc = server.cryptoClient(imported.id);
    const data = Buffer.from("sign me, HSM");
    const signed = await withWire(server, () => cc.signData("RS256", data));
    assert.equal(signed.result.length, 256);
    assert.ok(crypto.verify("sha256", data, { key: privateKey, padding: crypto.constants.RSA_PKCS1_PADDING }, Buffer.from(signed.result)), "RS256 signature verifies with Node");
    // SDK local verify from n/e
    const localOk = await cc.verifyData("RS256", data, signed.result);
    assert.equal(localOk.result, true);
    // server-side verify with the digest
    const digest = crypto.createHash("sha256").update(data).digest();
    const ok = await withWire(server, () => cc.verify("RS256", digest, signed.result));
    assert.equal(ok.result, true);
    const bad = Buffer.from(signed.result);
    bad[10] ^= 0xff;
    const notOk = await withWire(server, () => cc.verify("RS256", digest, bad));
    assert.equal(notOk.result, false);
    // PS256 from the server verifies with Node too
    const ps = await withWire(server, () => cc.sign("PS256", digest));
    assert.ok(
      crypto.verify("sha256", data, { key: privateKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, Buffer.from(ps.result)),
      "PS256 signature verifies with Node (salt length 32)",
    );
  });
});

describe("server-side refusals", () => {
  it("a disabled key refuses unwrap and wrap with 403 Forbidden", T, async () => {
    const name = uniqueName("disabled");
    const k = await contoso.createRsaKey(name);
    const cek = crypto.randomBytes(32);
    const wrapped = await server.cryptoClient(k.id).wrapKey("RSA-OAEP", cek);
    await contoso.updateKeyProperties(name, k.properties.version, { enabled: false });
    // a client holding the KeyVaultKey object does not GET it again: the refusal must come from the server
    const cc = server.cryptoClient(k);
    await expectRestError(server, cc.unwrapKey("RSA-OAEP", wrapped.result), { status: 403, code: "Forbidden" });
    await expectRestError(server, cc.wrapKey("RSA-OAEP-256", cek), { status: 403, code: "Forbidden" });
    // re-enabled, it works again
    await contoso.updateKeyProperties(name, k.properties.version, { enabled: true });
    const u = await withWire(server, () => cc.unwrapKey("RSA-OAEP", wrapped.result));
    assert.deepEqual(Buffer.from(u.result), cek);
  });

  it("an operation outside key_ops is refused with 403 Forbidden", T, async () => {
    const name = uniqueName("ops");
    const k = await contoso.createRsaKey(name); // all six operations
    const cek = crypto.randomBytes(32);
    const wrapped = await server.cryptoClient(k.id).wrapKey("RSA-OAEP", cek);
    await contoso.updateKeyProperties(name, k.properties.version, { keyOps: ["wrapKey"] });
    const cc = server.cryptoClient(k); // still believes unwrapKey is allowed
    await expectRestError(server, cc.unwrapKey("RSA-OAEP", wrapped.result), { status: 403, code: "Forbidden" });
    await expectRestError(server, cc.decrypt({ algorithm: "RSA-OAEP", ciphertext: wrapped.result }), { status: 403, code: "Forbidden" });
    await expectRestError(server, cc.sign("RS256", crypto.createHash("sha256").update("x").digest()), { status: 403, code: "Forbidden" });
    // the allowed one still works on the server
    const w = await withWire(server, () => cc.wrapKey("RSA-OAEP-256", cek));
    assert.equal(w.result.length, 256);
  });

  it("an unknown algorithm is 400 BadParameter", T, async () => {
    const k = await contoso.createRsaKey(uniqueName("badalg"));
    const cc = server.cryptoClient(k);
    await expectRestError(server, cc.unwrapKey("RSA-OAEP-1024", new Uint8Array(256)), { status: 400, code: "BadParameter" });
    await expectRestError(server, cc.wrapKey("A256KW", new Uint8Array(32)), { status: 400, code: "BadParameter" });
  });

  it("a ciphertext of the wrong length is a 400 BadParameter, not a crash", T, async () => {
    const k = await contoso.createRsaKey(uniqueName("badlen"));
    const cc = server.cryptoClient(k);
    await expectRestError(server, cc.unwrapKey("RSA-OAEP", new Uint8Array(10)), { status: 400, code: "BadParameter" });
    // and the server still answers afterwards
    const cek = crypto.randomBytes(32);
    const w = await cc.wrapKey("RSA-OAEP", cek);
    assert.deepEqual(Buffer.from((await withWire(server, () => cc.unwrapKey("RSA-OAEP", w.result))).result), cek);
  });

  it("unwrap on a missing key is 404 KeyNotFound", T, async () => {
    const cc = server.cryptoClient(`${server.vaultUrl("contoso-cmk")}/keys/${uniqueName("ghost")}/0123456789abcdef0123456789abcdef`);
    await expectRestError(server, cc.unwrapKey("RSA-OAEP", new Uint8Array(256)), { status: 404, code: "KeyNotFound" });
  });
});

describe("wire hygiene", () => {
  it("no exchange in this file was answered with a 5xx", T, () => {
    assertNo5xx(server);
  });
});

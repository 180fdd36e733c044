// The challenge-based authentication the SDK does against cmkemu, with challenge resource
// verification left ON for *.vault.localhost vaults; the README recipe (NODE_EXTRA_CA_CERTS,
// no custom agent) in a child process; generic 400 BadParameter cases.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { KeyClient } from "@azure/keyvault-keys";

import {
  T,
  startServer,
  uniqueName,
  expectRestError,
  withWire,
  recordingCredential,
  assertNo5xx,
} from "./helpers.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

describe("challenge-based authentication", () => {
  it("a named vault passes challenge verification; the SDK asks for https://vault.localhost/.default", T, async () => {
    const kc = server.keyClient("contoso-cmk");
    const mark = server.recorder.mark();
    const name = uniqueName("auth");
    const key = await withWire(server, () => kc.createRsaKey(name));
    assert.equal(key.name, name);
    const wire = server.recorder.since(mark);
    // first attempt: no Authorization, no body -> 401 with the challenge; then the real request
    assert.equal(wire[0].auth, undefined, "the first request carries no token");
    assert.equal(wire[0].status, 401);
    assert.match(
      wire[0].wwwAuthenticate,
      /^Bearer authorization="https:\/\/[^"\/]+(:\d+)?\/[^"\/]+", resource="https:\/\/vault\.localhost"$/,
      `challenge header shape: ${wire[0].wwwAuthenticate}`,
    );
    assert.equal(wire[1].auth, "Bearer ...");
    assert.equal(wire[1].status, 200);
    assert.ok(wire[1].requestBody && wire[1].requestBody.includes('"kty"'), "the body is sent after the challenge");
    // the credential was asked for the resource from the challenge and the tenant from its path
    const calls = kc.testCredential.calls;
    assert.ok(calls.length >= 1);
    assert.deepEqual(calls[0].scopes, ["https://vault.localhost/.default"]);
    const tenant = /authorization="https:\/\/[^"\/]+\/([^"\/]+)"/.exec(wire[0].wwwAuthenticate)[1];
    assert.equal(calls[0].tenantId, tenant);
    // later requests reuse the token without a new challenge
    const mark2 = server.recorder.mark();
    await kc.getKey(name);
    const wire2 = server.recorder.since(mark2);
    assert.equal(wire2.length, 1);
    assert.equal(wire2[0].status, 200);
  });

  it("the default vault cannot pass challenge verification (resource vault.localhost vs host localhost)", T, async () => {
    const kc = new KeyClient(server.url, recordingCredential(), {
      agent: server.agent(),
      additionalPolicies: [{ policy: server.recorder.policy, position: "perRetry" }],
    });
    await assert.rejects(kc.getKey("demo-key"), /challenge resource 'vault\.localhost' does not match the requested domain/);
  });

  it("a request without a token gets 401 Unauthorized with the Key Vault error body", T, async () => {
    const r = await server.raw("GET", "/keys/demo-key?api-version=7.5");
    assert.equal(r.status, 401);
    assert.equal(r.json?.error?.code, "Unauthorized");
    assert.match(r.headers["www-authenticate"], /^Bearer authorization="[^"]+", resource="https:\/\/vault\.localhost"$/);
  });

  it("the README recipe: NODE_EXTRA_CA_CERTS and an unchanged KeyClient on the default vault", T, async () => {
    const script = `
      import { KeyClient } from "@azure/keyvault-keys";
      const cred = { getToken: async () => ({ token: "x", expiresOnTimestamp: Date.now() + 3600e3 }) };
      const kc = new KeyClient(process.env.VAULT_URL, cred, { disableChallengeResourceVerification: true });
      const k = await kc.getKey("demo-key");
      console.log(JSON.stringify({ id: k.id, n: k.key.n.length }));
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      cwd: path.join(here, ".."),
      env: { ...process.env, NODE_EXTRA_CA_CERTS: path.join(server.dataDir, "tls", "cert.pem"), VAULT_URL: server.url },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (c) => (out += c));
    child.stderr.on("data", (c) => (err += c));
    const code = await new Promise((resolve) => child.on("exit", resolve));
    assert.equal(code, 0, `child failed: ${err}`);
    const got = JSON.parse(out.trim().split("\n").pop());
    assert.match(got.id, new RegExp(`^${server.url.replace(/\./g, "\\.")}/keys/demo-key/[0-9a-f]{32}$`));
    assert.equal(got.n, 256);
  });
});

describe("request handling", () => {
  it("an unknown api-version is 400 BadParameter", T, async () => {
    const kc = server.keyClient("contoso-cmk", { serviceVersion: "1.0" });
    await expectRestError(server, kc.getKey("whatever"), { status: 400, code: "BadParameter" });
  });

  it("every api-version in use today is accepted (7.4, 7.5, 7.6, 2025-07-01)", T, async () => {
    for (const v of ["7.4", "7.5", "7.6", "2025-07-01"]) {
      const kc = server.keyClient(undefined, { serviceVersion: v });
      const k = await withWire(server, () => kc.getKey("demo-key"));
      assert.equal(k.name, "demo-key", `api-version ${v}`);
    }
  });

  it("an invalid key name is 400 BadParameter", T, async () => {
    const kc = server.keyClient("contoso-cmk");
    await expectRestError(server, kc.createRsaKey("bad_name_with_underscores"), { status: 400, code: "BadParameter" });
    await expectRestError(server, kc.createRsaKey("x".repeat(128)), { status: 400, code: "BadParameter" });
  });

  it("an unsupported RSA size or key type is 400 BadParameter", T, async () => {
    const kc = server.keyClient("contoso-cmk");
    await expectRestError(server, kc.createRsaKey(uniqueName("size"), { keySize: 1000 }), { status: 400, code: "BadParameter" });
    await expectRestError(server, kc.createKey(uniqueName("kty"), "FOO"), { status: 400, code: "BadParameter" });
  });

  it("a rotation policy with expiryTime under 28 days is 400 BadParameter", T, async () => {
    const kc = server.keyClient("contoso-cmk");
    const name = uniqueName("shortpolicy");
    await kc.createRsaKey(name);
    await expectRestError(
      server,
      kc.updateKeyRotationPolicy(name, { lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P7D" }], expiresIn: "P7D" }),
      { status: 400, code: "BadParameter" },
    );
  });

  it("getRandomBytes outside 1..128 is 400 BadParameter", T, async () => {
    const kc = server.keyClient("contoso-cmk");
    await expectRestError(server, kc.getRandomBytes(0), { status: 400, code: "BadParameter" });
    await expectRestError(server, kc.getRandomBytes(129), { status: 400, code: "BadParameter" });
    assert.equal((await kc.getRandomBytes(128)).length, 128);
  });

  it("a key in another vault is 404 KeyNotFound, an unknown version is 404 KeyNotFound", T, async () => {
    const kc = server.keyClient("contoso-cmk");
    await expectRestError(server, kc.getKey("demo-key"), { status: 404, code: "KeyNotFound" });
    await expectRestError(server, server.keyClient().getKey("demo-key", { version: "0123456789abcdef0123456789abcdef" }), { status: 404, code: "KeyNotFound" });
  });
});

describe("wire hygiene", () => {
  it("no exchange in this file was answered with a 5xx", T, () => {
    assertNo5xx(server);
  });
});

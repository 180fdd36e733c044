// The token service with the unchanged @azure/identity: ClientSecretCredential against the
// emulator as authority host, ManagedIdentityCredential through IDENTITY_ENDPOINT, and strict
// mode refusing tokens this emulator did not sign.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

import { ClientSecretCredential } from "@azure/identity";
import { KeyClient } from "@azure/keyvault-keys";

import { T, startServer, uniqueName } from "./helpers.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));

const TENANT = "72f988bf-0000-4000-8000-00000000c0de";
const KV_ADMIN = { clientId: "0a000001-0000-4000-8000-00000000a001", secret: "kv-admin-secret" };
const MI_CLIENT_ID = "0a000005-0000-4000-8000-00000000a005";

function decodeJwt(token) {
  const [h, c] = token.split(".");
  return {
    header: JSON.parse(Buffer.from(h, "base64url").toString()),
    claims: JSON.parse(Buffer.from(c, "base64url").toString()),
  };
}

function secretCredential(server, { clientId = KV_ADMIN.clientId, secret = KV_ADMIN.secret } = {}) {
  return new ClientSecretCredential(TENANT, clientId, secret, {
    authorityHost: server.url,
    disableInstanceDiscovery: true,
    agent: server.agent(),
  });
}

for (const mode of ["permissive", "strict"]) {
  describe(`identity (${mode} mode)`, () => {
    let server;
    before(async () => {
      server = await startServer({ extraArgs: ["--auth", mode] });
    });
    after(async () => {
      await server?.stop();
    });

    it("ClientSecretCredential gets an RS256 token for the vault audience", T, async () => {
      const cred = secretCredential(server);
      const at = await cred.getToken("https://vault.localhost/.default");
      assert.ok(at.token && at.expiresOnTimestamp > Date.now());
      const { header, claims } = decodeJwt(at.token);
      assert.equal(header.alg, "RS256");
      assert.equal(claims.aud, "https://vault.localhost");
      assert.equal(claims.iss, `https://sts.windows.net/${TENANT}/`);
      assert.equal(claims.appid, KV_ADMIN.clientId);
      assert.equal(claims.tid, TENANT);
      // the JWKS publishes the signing key under the token's kid
      const jwks = await server.raw("GET", `/${TENANT}/discovery/v2.0/keys`);
      assert.equal(jwks.status, 200);
      assert.ok(jwks.json.keys.some((k) => k.kid === header.kid && k.kty === "RSA"));
    });

    it("a wrong client secret is refused with invalid_client", T, async () => {
      const cred = secretCredential(server, { secret: "wrong" });
      await assert.rejects(cred.getToken("https://vault.localhost/.default"), (e) => {
        assert.match(String(e.message), /invalid_client|7000215/);
        return true;
      });
    });

    it("a KeyClient with ClientSecretCredential works against a named vault", T, async () => {
      const kc = new KeyClient(server.vaultUrl("contoso-cmk"), secretCredential(server), {
        agent: server.agent(),
      });
      const name = uniqueName("idn");
      const key = await kc.createRsaKey(name);
      assert.equal(key.name, name);
      const got = await kc.getKey(name);
      assert.equal(got.properties.version, key.properties.version);
    });

    it("KeyVaultManagementClient authenticates with ClientSecretCredential (ARM audience)", T, async () => {
      const { KeyVaultManagementClient } = await import("@azure/arm-keyvault");
      const client = new KeyVaultManagementClient(secretCredential(server), "00000000-0000-4000-8000-000000000001", {
        endpoint: server.url,
        agent: server.agent(),
      });
      const names = [];
      for await (const v of client.vaults.listBySubscription()) names.push(v.name);
      assert.ok(names.includes("contoso-cmk"), names.join(","));
      // a Key Vault token is refused by ARM (wrong audience)
      const kvToken = (await secretCredential(server).getToken("https://vault.localhost/.default")).token;
      const r = await server.raw("GET", "/subscriptions/00000000-0000-4000-8000-000000000001/providers/Microsoft.KeyVault/vaults?api-version=2024-11-01", { headers: { Authorization: `Bearer ${kvToken}` } });
      assert.equal(r.status, 401, r.text);
      assert.match(r.json.error.message, /audience/);
    });

    it("access policy add/remove with KeyVaultManagementClient decides 403/200 for a second principal", T, async () => {
      const { KeyVaultManagementClient } = await import("@azure/arm-keyvault");
      const SUB = "00000000-0000-4000-8000-000000000001";
      const arm = new KeyVaultManagementClient(secretCredential(server), SUB, { endpoint: server.url, agent: server.agent() });
      const admin = new KeyClient(server.vaultUrl("scratch"), secretCredential(server), { agent: server.agent() });
      const name = uniqueName("ap");
      const key = await admin.createRsaKey(name);
      const NO_RIGHTS = { clientId: "0a000004-0000-4000-8000-00000000a004", secret: "no-rights-secret", oid: "0b000004-0000-4000-8000-00000000b004" };
      const token = (await secretCredential(server, NO_RIGHTS).getToken("https://vault.localhost/.default")).token;
      const auth = { Authorization: `Bearer ${token}` };
      const get = () => server.raw("GET", `/keys/${name}?api-version=7.5`, { vault: "scratch", headers: auth });
      const unwrap = () => server.raw("POST", `/keys/${name}/${key.properties.version}/unwrapkey?api-version=7.5`, { vault: "scratch", headers: auth, body: { alg: "RSA-OAEP", value: Buffer.alloc(256).toString("base64url") } });
      let r = await get();
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.error.innererror.code, "ForbiddenByPolicy");
      assert.match(r.json.error.message, new RegExp(`oid=${NO_RIGHTS.oid}`));
      const policy = (keys) => ({ properties: { accessPolicies: [{ tenantId: TENANT, objectId: NO_RIGHTS.oid, permissions: { keys } }] } });
      await arm.vaults.updateAccessPolicy("cmk-rg", "scratch", "add", policy(["get"]));
      r = await get();
      assert.equal(r.status, 200, r.text);
      r = await unwrap();
      assert.equal(r.status, 403, r.text);
      assert.match(r.json.error.message, /unwrapKey/);
      await arm.vaults.updateAccessPolicy("cmk-rg", "scratch", "remove", policy(["get"]));
      r = await get();
      assert.equal(r.status, 403, r.text);
    });

    it("ManagedIdentityCredential gets a token through IDENTITY_ENDPOINT", T, async () => {
      // MSAL's managed identity client makes its own connections: run it the way an app would,
      // in a fresh Node process that trusts the emulator through NODE_EXTRA_CA_CERTS.
      const script = `
        import { ManagedIdentityCredential } from "@azure/identity";
        const cred = new ManagedIdentityCredential({ clientId: "${MI_CLIENT_ID}" });
        const at = await cred.getToken("https://vault.localhost/.default");
        process.stdout.write(JSON.stringify({ token: at.token, expiresOn: at.expiresOnTimestamp }));
      `;
      const env = {
        ...process.env,
        IDENTITY_ENDPOINT: `https://127.0.0.1:${server.port}/msi/token`,
        IDENTITY_HEADER: "cmkemu-identity-header",
        NODE_EXTRA_CA_CERTS: path.join(server.dataDir, "tls", "cert.pem"),
      };
      delete env.MSI_ENDPOINT;
      delete env.MSI_SECRET;
      const out = await new Promise((resolve, reject) => {
        const child = spawn(process.execPath, ["--input-type=module", "-e", script], { env, cwd: path.join(here, "..") });
        let stdout = "", stderr = "";
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => (stderr += d));
        child.on("error", reject);
        child.on("close", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`child exited ${code}: ${stderr}`))));
      });
      const { token, expiresOn } = JSON.parse(out);
      assert.ok(expiresOn > Date.now());
      const { claims } = decodeJwt(token);
      assert.equal(claims.aud, "https://vault.localhost");
      assert.equal(claims.appid, MI_CLIENT_ID);
      assert.equal(claims.oid, "0b000005-0000-4000-8000-00000000b005");
      // access policies decide: the identity has get/wrapKey/unwrapKey on contoso-cmk, not list
      const admin = new KeyClient(server.vaultUrl("contoso-cmk"), secretCredential(server), { agent: server.agent() });
      const name = uniqueName("mi");
      await admin.createRsaKey(name);
      const auth = { Authorization: `Bearer ${token}` };
      const got = await server.raw("GET", `/keys/${name}?api-version=7.5`, { vault: "contoso-cmk", headers: auth });
      assert.equal(got.status, 200, got.text);
      const listed = await server.raw("GET", "/keys?api-version=7.5", { vault: "contoso-cmk", headers: auth });
      assert.equal(listed.status, 403, listed.text);
      assert.equal(listed.json.error.innererror.code, "ForbiddenByPolicy");
      assert.match(listed.json.error.message, /oid=0b000005-0000-4000-8000-00000000b005/);
      assert.match(listed.json.error.message, /keys list permission/);
    });

    it(`tokens this emulator did not sign: ${mode === "strict" ? "refused" : "mapped to the default principal"}`, T, async () => {
      const forgedClaims = Buffer.from(
        JSON.stringify({ aud: "https://vault.localhost", iss: `https://sts.windows.net/${TENANT}/`, tid: TENANT, oid: "0b000001-0000-4000-8000-00000000b001", exp: Math.floor(Date.now() / 1000) + 3600 }),
      ).toString("base64url");
      const forgedHeader = Buffer.from(JSON.stringify({ alg: "RS256", kid: "forged" })).toString("base64url");
      const forged = `${forgedHeader}.${forgedClaims}.${Buffer.from("x".repeat(256)).toString("base64url")}`;
      // a token claiming this issuer is verified in both modes
      const r1 = await server.raw("GET", "/keys/demo-key?api-version=7.5", { headers: { Authorization: `Bearer ${forged}` } });
      assert.equal(r1.status, 401, r1.text);
      // an opaque token from elsewhere
      const r2 = await server.raw("GET", "/keys/demo-key?api-version=7.5", { headers: { Authorization: "Bearer opaque-token" } });
      assert.equal(r2.status, mode === "strict" ? 401 : 200, r2.text);
      if (mode === "strict") assert.match(r2.json.error.message, /JWT|token/i);
    });
  });
}

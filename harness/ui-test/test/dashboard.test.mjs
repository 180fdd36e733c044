// The trainer dashboard in a real browser (Debian chromium, headless) against a throw-away
// emulator started by harness/with-emulator.sh (CMKH_URL). It runs a scenario step by step in
// the page, then drives the controls a trainer uses in front of a room: revoke the policy
// identity's access, see the environment lock without a reload and a record read fail, restore
// the access, re-enable, read again. Screenshots go to UI_ARTIFACTS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { chromium } from "playwright-core";

const URL_BASE = process.env.CMKH_URL;
const ART = process.env.UI_ARTIFACTS;
// The flags that work offline on this kind of machine: no sandbox (root), no GPU, and nothing
// that reaches out to Google's hosts at start.
const FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-default-apps", "--disable-extensions"];

let browser, page;
const consoleErrors = [];

before(async () => {
  assert.ok(URL_BASE, "CMKH_URL is set by with-emulator.sh");
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: FLAGS, headless: true });
  // the emulator's certificate is self-signed; the test trusts it for this context only
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 1800 } });
  page = await ctx.newPage();
  // script exceptions only: the browser also logs the 423 answers the test provokes on purpose
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
});

after(async () => { await browser?.close(); });

async function shot(name) {
  const file = path.join(ART, name);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot: ${file}`);
  return file;
}

test("the page loads from the binary and shows the demo world live", async () => {
  const resp = await page.goto(`${URL_BASE}/_emulator/ui/`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()["content-type"], /text\/html/);
  const prod = page.locator("article[data-env='a1b2c3d4-0000-4000-8000-000000000101']");
  await prod.waitFor({ timeout: 15000 });
  assert.equal(await prod.getAttribute("data-state"), "mmk");
  await page.getByText("Microsoft-managed key").first().waitFor();
  // vaults with their keys, read through the Key Vault API of each vault host
  await page.locator("[data-vault='cmkemu'] tr[data-key='demo-key']").waitFor();
  await page.locator("[data-vault='contoso-cmk']").getByText("purge protection").first().waitFor();
  await page.locator("#live", { hasText: "live" }).waitFor();
  await page.locator("#who", { hasText: "acting as kv-admin-app" }).waitFor();
});

test("the relay carries requests to vault hosts with every check of the target API", async () => {
  const api = page.context().request;
  const bad = await api.get(`${URL_BASE}/_emulator/ui/relay/example.com/keys?api-version=7.5`);
  assert.equal(bad.status(), 400);
  assert.equal((await bad.json()).error.code, "BadRelayHost");
  // no token: the named vault's own bearer challenge, naming that vault's host
  const anon = await api.get(`${URL_BASE}/_emulator/ui/relay/contoso-cmk.vault.localhost/keys?api-version=7.5`);
  assert.equal(anon.status(), 401);
  assert.match(anon.headers()["www-authenticate"], /contoso-cmk\.vault\.localhost:\d+\//);
  // a principal without rights on the vault is refused by its access policies
  const tok = await (await api.post(`${URL_BASE}/_emulator/tokens`, { data: { principal: "0a000004-0000-4000-8000-00000000a004", audience: "https://vault.azure.net" } })).json();
  const denied = await api.get(`${URL_BASE}/_emulator/ui/relay/contoso-cmk.vault.localhost/keys?api-version=7.5`, { headers: { Authorization: `Bearer ${tok.access_token}` } });
  assert.equal(denied.status(), 403, await denied.text());
});

test("a scenario runs step by step in the page, say before and observe after", async () => {
  await page.selectOption("#scen-select", "setup-and-link");
  await page.click("#scen-start");
  await page.locator("#scen-say", { hasText: "creates a key vault" }).waitFor();
  // one step: the say is shown before, the observation after
  await page.click("#scen-next");
  await page.locator("#scen-log li.ok", { hasText: "The vault exists with purge protection on." }).waitFor({ timeout: 20000 });
  await page.locator("#scen-say", { hasText: "creates an RSA 2048 key" }).waitFor();
  // the rest of the scenario, one press at a time
  for (let i = 0; i < 20; i++) {
    const state = await page.locator("#scen-state").textContent();
    if (/done|FAILED/.test(state)) break;
    await page.locator("#scen-next:not([disabled])").click({ timeout: 30000 });
    await page.waitForFunction(() => !/running/.test(document.querySelector("#scen-state").textContent), null, { timeout: 60000 });
  }
  const failures = await page.locator("#scen-log li.fail").allTextContents();
  assert.deepEqual(failures, [], "no step failed");
  await page.locator("#scen-state", { hasText: "done" }).waitFor();
  await page.locator("#scen-log li.ok", { hasText: "keyManagedBy: Customer" }).waitFor();
  // the environment it created shows as encrypted with the customer key
  await page.locator("article[data-state='cmk']").first().waitFor({ timeout: 10000 });
});

test("revoke access locks the environment live; restore + re-enable brings it back", async () => {
  const env = page.locator("article[data-env][data-state='cmk']", { hasText: "Training Production" }).first();
  await env.waitFor();
  const envId = await env.getAttribute("data-env");
  const card = page.locator(`article[data-env='${envId}']`);

  // the policy linked to it: the one whose card lists that environment
  const policy = page.locator("article[data-policy]", { hasText: "Training Production" }).first();
  await policy.getByText("identity has get, wrapKey, unwrapKey").waitFor();
  await policy.getByRole("button", { name: "Revoke identity's access" }).click();

  // the lock watch locks it; the page shows it without a reload within a couple of seconds
  const t0 = Date.now();
  await page.locator(`article[data-env='${envId}'][data-state='locked']`).waitFor({ timeout: 5000 });
  console.log(`locked shown after ${Date.now() - t0} ms`);
  await card.locator(".badge.b-locked", { hasText: "LOCKED" }).waitFor();
  await card.locator(".reason", { hasText: "lacks" }).waitFor();
  await card.locator(".countdown", { hasText: "deletion in" }).waitFor();
  await policy.getByText("Unhealthy").waitFor();

  await card.getByRole("button", { name: "Read a record" }).click();
  await card.locator(".result.fail", { hasText: "423 EnvironmentLocked" }).waitFor();
  await shot("dashboard-locked.png");

  // re-enable is refused while the key is still out of reach
  await card.getByRole("button", { name: "Re-enable" }).click();
  await card.locator(".result.fail", { hasText: "Re-enable refused: 423" }).waitFor();

  await policy.getByRole("button", { name: "Restore identity's access" }).click();
  await policy.getByText("Healthy").first().waitFor();
  await policy.getByText("identity has get, wrapKey, unwrapKey").waitFor();
  assert.equal(await card.getAttribute("data-state"), "locked", "stays locked until re-enabled");

  await card.getByRole("button", { name: "Re-enable" }).click();
  await page.locator(`article[data-env='${envId}'][data-state='cmk']`).waitFor({ timeout: 5000 });
  await card.getByRole("button", { name: "Read a record" }).click();
  await card.locator(".result.ok", { hasText: "Read OK" }).waitFor();

  // the audit panel shows what happened, as the operations they were
  await page.locator("#audit", { hasText: "accessPolicies" }).first().waitFor();
  await page.locator("#audit", { hasText: "Lock" }).first().waitFor();
  const file = await shot("dashboard.png");
  assert.ok(file);
});

test("a change made by another client shows up live, without a reload", async () => {
  // another client (not the page) revokes through ARM; the lock watch locks the environment and
  // the page, which only polls, must show it within a couple of seconds
  const api = page.context().request;
  const token = async (audience) => (await (await api.post(`${URL_BASE}/_emulator/tokens`,
    { data: { principal: "0a000001-0000-4000-8000-00000000a001", audience } })).json()).access_token;
  const arm = { Authorization: `Bearer ${await token("https://management.azure.com")}` };
  const bap = { Authorization: `Bearer ${await token("https://service.powerapps.com")}` };
  const envId = await page.locator("article[data-env][data-state='cmk']", { hasText: "Training Production" }).first().getAttribute("data-env");
  const env = await (await api.get(`${URL_BASE}/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments/${envId}?api-version=2023-06-01`, { headers: bap })).json();
  const policyId = env.properties.enterprisePolicies.customerManagedKeys.policyId;
  const policy = await (await api.get(`${URL_BASE}${policyId}?api-version=2020-10-30`, { headers: arm })).json();
  const vaultId = policy.properties.encryption.keyVault.id;
  const entry = { tenantId: "72f988bf-0000-4000-8000-00000000c0de", objectId: policy.identity.principalId, permissions: { keys: ["get", "wrapKey", "unwrapKey"] } };
  const change = async (op) => {
    const r = await api.put(`${URL_BASE}${vaultId}/accessPolicies/${op}?api-version=2023-07-01`, { headers: arm, data: { properties: { accessPolicies: [entry] } } });
    assert.equal(r.status(), 200, await r.text());
  };
  await change("remove");
  const t0 = Date.now();
  await page.locator(`article[data-env='${envId}'][data-state='locked']`).waitFor({ timeout: 3000 });
  console.log(`external revoke shown after ${Date.now() - t0} ms`);
  await change("add");
  const r = await api.post(`${URL_BASE}/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments/${envId}/enable?api-version=2023-06-01`, { headers: bap });
  assert.equal(r.status(), 200, await r.text());
  await page.locator(`article[data-env='${envId}'][data-state='cmk']`).waitFor({ timeout: 3000 });
});

test("large type mode, and no script errors", async () => {
  await page.getByRole("button", { name: "Large type" }).click();
  assert.equal(await page.getAttribute("#large", "aria-pressed"), "true");
  const size = await page.evaluate(() => getComputedStyle(document.body).fontSize);
  assert.equal(size, "24px");
  await shot("dashboard-large.png");
  assert.deepEqual(consoleErrors, []);
});

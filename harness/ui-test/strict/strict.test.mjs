// The dashboard under --auth strict (run.sh starts a second throw-away emulator for it): the
// page asks for the admin's client secret, refuses a wrong one with the token endpoint's
// answer, and with the right one reads the world and moves the clock (an admin-only call).
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

test("strict mode: sign in as the admin with client credentials", async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: FLAGS });
  try {
    const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${process.env.CMKH_URL}/_emulator/ui/`);
    await page.locator("#signin:not([hidden])").waitFor({ timeout: 10000 });
    assert.equal(await page.inputValue("#si-client"), "0a000001-0000-4000-8000-00000000a001");
    await page.fill("#si-secret", "wrong-secret");
    await page.click("#signin-form button");
    await page.locator("#si-error", { hasText: "401 invalid_client" }).waitFor({ timeout: 5000 });
    assert.equal(await page.locator("article[data-env]").count(), 0, "nothing is shown before sign-in");
    await page.fill("#si-secret", "kv-admin-secret");
    await page.click("#signin-form button");
    await page.locator("article[data-env='a1b2c3d4-0000-4000-8000-000000000101']").waitFor({ timeout: 10000 });
    await page.locator("article[data-vault='contoso-cmk']").waitFor();
    await page.locator("#who", { hasText: "auth strict" }).waitFor();
    await page.click("button[data-advance='PT1H']");
    await page.locator("#clock", { hasText: "ahead" }).waitFor({ timeout: 5000 });
    assert.ok(await page.isHidden("#message"), "no error banner");
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});

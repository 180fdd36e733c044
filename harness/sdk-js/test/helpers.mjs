// Shared helpers for the cmkemu JavaScript SDK acceptance suite.
//
// Each test file starts its own emulator (fresh data dir, free port) with startServer(), talks to
// it only through the unchanged @azure/keyvault-keys clients (plus raw HTTPS for /_emulator/*),
// and stops it in an after() hook.
//
// How the SDK reaches the emulator without any change to the SDK:
//   - TLS: every data dir gets its own self-signed certificate (DIR/tls/cert.pem), created by the
//     server on first start, i.e. after this process started, so NODE_EXTRA_CA_CERTS cannot be
//     used for this process. Instead the clients get the public pipeline option `agent`: an
//     https.Agent whose `ca` is that certificate.
//   - Names: Node does not resolve *.localhost here (ENOTFOUND), so the same agent carries a
//     custom `lookup` that maps localhost and *.localhost to 127.0.0.1.
//   - Auth: a trivial TokenCredential (permissive mode takes any bearer token) that records what
//     the SDK asked for, so tests can check the challenge it parsed.
//   - A recording pipeline policy keeps every request/response seen on the wire (method, url,
//     status, bodies) so failures can be reported with the exact exchange.

import { spawn } from "node:child_process";
import { existsSync, readFileSync, mkdtempSync, rmSync } from "node:fs";
import dns from "node:dns";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

import { KeyClient, CryptographyClient } from "@azure/keyvault-keys";

const here = path.dirname(fileURLToPath(import.meta.url));

export const CMKEMU_BIN = path.resolve(
  process.env.CMKEMU_BIN || path.join(here, "..", "..", "..", "build", "cmkemu"),
);

/** Per-test timeout used by the test files (key generation in SoftHSM can take a while). */
export const T = { timeout: 90_000 };

const TRACE = !!process.env.CMKEMU_SDK_TRACE;

// ---------------------------------------------------------------------------------------------
// Name resolution and TLS
// ---------------------------------------------------------------------------------------------

/** dns.lookup replacement: localhost and *.localhost -> 127.0.0.1, everything else as usual. */
export function localhostLookup(hostname, options, callback) {
  if (typeof options === "function") {
    callback = options;
    options = {};
  }
  const h = String(hostname).toLowerCase().replace(/\.$/, "");
  if (h === "localhost" || h.endsWith(".localhost")) {
    if (options && options.all) {
      return process.nextTick(callback, null, [{ address: "127.0.0.1", family: 4 }]);
    }
    return process.nextTick(callback, null, "127.0.0.1", 4);
  }
  return dns.lookup(hostname, options, callback);
}

/** A port that was free a moment ago (bind to 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// Credential and wire recorder
// ---------------------------------------------------------------------------------------------

/** A TokenCredential that hands out an opaque token and records every getToken call. */
export function recordingCredential() {
  const calls = [];
  return {
    calls,
    async getToken(scopes, options = {}) {
      calls.push({ scopes: [].concat(scopes), tenantId: options.tenantId });
      return { token: "cmkemu-sdk-js-test-token", expiresOnTimestamp: Date.now() + 3600_000 };
    },
  };
}

function truncate(s, n = 2000) {
  if (s === undefined || s === null) return s;
  s = typeof s === "string" ? s : String(s);
  return s.length > n ? s.slice(0, n) + `...(${s.length} chars)` : s;
}

/**
 * A pipeline policy (position perRetry, so it sees every attempt including the 401 challenge
 * round) that records each exchange.
 */
export function createRecorder() {
  const entries = [];
  const policy = {
    name: "cmkemuWireRecorder",
    async sendRequest(request, next) {
      const entry = {
        method: request.method,
        url: request.url,
        auth: request.headers.get("authorization") ? "Bearer ..." : undefined,
        requestBody: typeof request.body === "string" ? truncate(request.body) : request.body ? "(binary)" : undefined,
      };
      entries.push(entry);
      try {
        const response = await next(request);
        entry.status = response.status;
        entry.wwwAuthenticate = response.headers.get("www-authenticate") ?? undefined;
        entry.responseBody = truncate(response.bodyAsText);
        if (TRACE) console.error(`[wire] ${formatEntry(entry)}`);
        return response;
      } catch (e) {
        entry.error = e.message;
        if (TRACE) console.error(`[wire] ${formatEntry(entry)}`);
        throw e;
      }
    },
  };
  return {
    policy,
    entries,
    mark() {
      return entries.length;
    },
    since(mark) {
      return entries.slice(mark);
    },
    last(pred = () => true) {
      for (let i = entries.length - 1; i >= 0; i--) if (pred(entries[i])) return entries[i];
      return undefined;
    },
  };
}

export function formatEntry(e) {
  if (!e) return "(no exchange recorded)";
  let s = `${e.method} ${e.url}`;
  if (e.requestBody) s += ` body=${e.requestBody}`;
  s += ` -> ${e.status ?? "(no response)"}`;
  if (e.wwwAuthenticate) s += ` www-authenticate=${e.wwwAuthenticate}`;
  if (e.responseBody) s += ` ${e.responseBody}`;
  if (e.error) s += ` error=${e.error}`;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Raw HTTPS (for /_emulator/* and wire-level checks)
// ---------------------------------------------------------------------------------------------

export function rawRequest(agent, url, { method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
    const req = https.request(
      url,
      {
        method,
        agent,
        headers: {
          ...(data !== undefined ? { "content-type": "application/json", "content-length": Buffer.byteLength(data) } : {}),
          ...headers,
        },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode, headers: res.headers, text, json });
        });
        res.on("error", reject);
      },
    );
    req.setTimeout(30_000, () => req.destroy(new Error(`timeout: ${method} ${url}`)));
    req.on("error", reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------
// The emulator process
// ---------------------------------------------------------------------------------------------

const liveChildren = new Set();
process.on("exit", () => {
  for (const c of liveChildren) {
    try {
      c.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
});

function spawnOnce(bin, args, log) {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: process.env });
  liveChildren.add(child);
  const exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    });
    child.on("error", (err) => {
      liveChildren.delete(child);
      resolve({ code: null, signal: null, error: err });
    });
  });
  const append = (tag) => (chunk) => {
    const text = chunk.toString("utf8");
    log.text += text.replace(/^/gm, tag);
    if (log.text.length > 200_000) log.text = log.text.slice(-100_000);
    if (process.env.CMKEMU_SDK_SERVER_LOG) process.stderr.write(text.replace(/^/gm, `[cmkemu${tag}] `));
  };
  child.stdout.on("data", append(""));
  child.stderr.on("data", append("! "));
  return { child, exited };
}

/**
 * Start cmkemu on a fresh data dir (or the given one) and a free port.
 * Resolves once it printed its "serving https://..." line and /_emulator/health answers 200.
 */
export async function startServer({ demo = true, extraArgs = [], dataDir, port } = {}) {
  if (!existsSync(CMKEMU_BIN)) {
    throw new Error(`cmkemu binary not found at ${CMKEMU_BIN} (build it first, or set CMKEMU_BIN)`);
  }
  const ownDir = !dataDir;
  dataDir ??= mkdtempSync(path.join(os.tmpdir(), "cmkemu-sdkjs-"));
  const server = new EmulatorServer({ dataDir, ownDir, demo, extraArgs });
  await server.start(port);
  return server;
}

export class EmulatorServer {
  constructor({ dataDir, ownDir, demo, extraArgs }) {
    this.dataDir = dataDir;
    this.ownDir = ownDir;
    this.demo = demo;
    this.extraArgs = extraArgs;
    this.log = { text: "" };
    this.port = undefined;
    this.proc = undefined;
    this.agents = [];
    this.recorder = createRecorder();
    this.credentials = [];
  }

  get url() {
    return `https://localhost:${this.port}`;
  }

  vaultUrl(vault) {
    return vault ? `https://${vault}.vault.localhost:${this.port}` : this.url;
  }

  async start(port) {
    let lastErr;
    for (let attempt = 0; attempt < 3; attempt++) {
      // First choice: let cmkemu pick (port 0) and read the port from its "serving" line; a
      // restart passes the port it had. Fallback: a port that was free a moment ago.
      const p = port ?? (attempt === 0 ? 0 : await freePort());
      try {
        await this.#startOn(p);
        return;
      } catch (e) {
        lastErr = e;
        if (port !== undefined || !/EADDRINUSE|address already in use|bind/i.test(e.message)) break;
      }
    }
    throw lastErr;
  }

  async #startOn(port) {
    const args = ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", this.dataDir];
    if (!this.demo) args.push("--no-demo");
    args.push(...this.extraArgs);
    const startLogAt = this.log.text.length;
    const { child, exited } = spawnOnce(CMKEMU_BIN, args, this.log);
    this.proc = { child, exited };
    this.port = port;

    const deadline = Date.now() + 30_000;
    let exitInfo;
    exited.then((x) => (exitInfo = x));
    // 1) the "serving https://..." line on stdout
    let m;
    while (!(m = /serving https:\/\/[^\s/]*?:(\d+)\/?/.exec(this.log.text.slice(startLogAt)))) {
      if (exitInfo) {
        throw new Error(
          `cmkemu exited before serving (code ${exitInfo.code}, signal ${exitInfo.signal}${exitInfo.error ? ", " + exitInfo.error.message : ""}): ${args.join(" ")}\n${this.log.text.slice(startLogAt)}`,
        );
      }
      if (Date.now() > deadline) {
        await this.stop({ keepData: true });
        throw new Error(`cmkemu did not print "serving https://..." within 30s\n${this.log.text.slice(startLogAt)}`);
      }
      await sleep(25);
    }
    if (port === 0) {
      this.port = Number(m[1]);
      if (!this.port) throw new Error(`cannot read the port from cmkemu's serving line: ${m[0]}`);
    } else if (Number(m[1]) !== port) {
      throw new Error(`cmkemu says it serves on ${m[0]} but was asked for port ${port}`);
    }
    // 2) the certificate it made, and health
    const certPath = path.join(this.dataDir, "tls", "cert.pem");
    if (!existsSync(certPath)) throw new Error(`cmkemu is serving but ${certPath} does not exist`);
    this.certPem = readFileSync(certPath, "utf8");
    this.rawAgent = new https.Agent({ ca: this.certPem, lookup: localhostLookup, keepAlive: false });
    let health;
    while (true) {
      try {
        health = await rawRequest(this.rawAgent, `${this.url}/_emulator/health`);
        if (health.status === 200) break;
      } catch (e) {
        health = { status: "error", text: e.message };
      }
      if (exitInfo || Date.now() > deadline) {
        throw new Error(`cmkemu health never answered 200 (last: ${health.status} ${health.text})\n${this.log.text.slice(startLogAt)}`);
      }
      await sleep(50);
    }
    this.health = health;
  }

  /** A fresh agent that trusts this server's certificate and resolves *.localhost. */
  agent() {
    const a = new https.Agent({ ca: this.certPem, lookup: localhostLookup, keepAlive: true });
    this.agents.push(a);
    return a;
  }

  /** Pipeline options every client of this suite gets (public KeyClientOptions only). */
  clientOptions(vault, extra = {}) {
    return {
      agent: this.agent(),
      additionalPolicies: [{ policy: this.recorder.policy, position: "perRetry" }],
      // Verification stays ON for *.vault.localhost vaults. The default vault at
      // https://localhost:PORT can never pass it (the host does not end with ".vault.localhost").
      ...(vault ? {} : { disableChallengeResourceVerification: true }),
      ...extra,
    };
  }

  /** KeyClient for the default vault (vault undefined) or a named vault {vault}.vault.localhost. */
  keyClient(vault, extra = {}) {
    const credential = recordingCredential();
    this.credentials.push(credential);
    const client = new KeyClient(this.vaultUrl(vault), credential, this.clientOptions(vault, extra));
    client.testCredential = credential;
    return client;
  }

  /** CryptographyClient from a key id (string) or a KeyVaultKey (then the SDK does no GET). */
  cryptoClient(keyOrId, extra = {}) {
    const id = typeof keyOrId === "string" ? keyOrId : keyOrId.id;
    const host = new URL(id).hostname;
    const vault = host.endsWith(".vault.localhost") ? host.slice(0, -".vault.localhost".length) : undefined;
    const credential = recordingCredential();
    this.credentials.push(credential);
    const client = new CryptographyClient(keyOrId, credential, this.clientOptions(vault, extra));
    client.testCredential = credential;
    return client;
  }

  async raw(method, pathAndQuery, { vault, body, headers } = {}) {
    return rawRequest(this.rawAgent, `${this.vaultUrl(vault)}${pathAndQuery}`, { method, body, headers });
  }

  /** POST /_emulator/clock {"advance": duration}; returns the parsed answer. */
  async advanceClock(duration) {
    const r = await this.raw("POST", "/_emulator/clock", { body: { advance: duration } });
    assert.equal(r.status, 200, `POST /_emulator/clock {"advance":"${duration}"} -> ${r.status} ${r.text}`);
    return r.json;
  }

  /** GET /_emulator/clock -> { raw, now: Date|undefined } */
  async getClock() {
    const r = await this.raw("GET", "/_emulator/clock");
    assert.equal(r.status, 200, `GET /_emulator/clock -> ${r.status} ${r.text}`);
    return { raw: r.json, text: r.text, now: clockTime(r.json) };
  }

  /** Stop the process (SIGTERM, then SIGKILL after 10 s). Removes an own data dir unless keepData. */
  async stop({ signal = "SIGTERM", keepData = false } = {}) {
    for (const a of this.agents.splice(0)) a.destroy();
    this.rawAgent?.destroy();
    let result;
    if (this.proc) {
      const { child, exited } = this.proc;
      this.proc = undefined;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        result = await exited;
        clearTimeout(timer);
      } else {
        result = await exited;
      }
    }
    if (!keepData && this.ownDir && !process.env.CMKEMU_KEEP_DATA) {
      rmSync(this.dataDir, { recursive: true, force: true });
    }
    // A SIGTERM must end in a clean shutdown: exit status 0 (a sanitizer build exits non-zero
    // on a leak or a memory error, and its report is in the log).
    if (signal === "SIGTERM" && result && result.code !== 0) {
      throw new Error(
        `cmkemu did not shut down cleanly on SIGTERM (code ${result.code}, signal ${result.signal})\n${this.log.text.slice(-8000)}`,
      );
    }
    return result;
  }

  /** Stop and start again on the same data dir and port (signal SIGKILL to simulate a crash). */
  async restart({ signal = "SIGTERM" } = {}) {
    const stopped = await this.stop({ signal, keepData: true });
    await this.start(this.port);
    return stopped;
  }

  /** Every recorded exchange that answered 5xx (a server bug by definition). */
  serverErrors() {
    return this.recorder.entries.filter((e) => typeof e.status === "number" && e.status >= 500);
  }
}

/** Reads the time out of a GET/POST /_emulator/clock answer, whatever the field is called. */
export function clockTime(json) {
  if (!json || typeof json !== "object") return undefined;
  for (const k of ["now", "time", "current", "clock", "utc", "emulatorTime", "emulatorNow"]) {
    const v = json[k];
    if (typeof v === "number") return new Date(v > 1e11 ? v : v * 1000);
    if (typeof v === "string" && !Number.isNaN(Date.parse(v))) return new Date(v);
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/**
 * Awaits `promiseOrFn`, expects a RestError with the given status (and code, innererror code,
 * message pattern). The exchange that produced it is included in every failure message.
 */
export async function expectRestError(server, promiseOrFn, { status, code, inner, message } = {}) {
  const mark = server.recorder.mark();
  let err;
  try {
    await (typeof promiseOrFn === "function" ? promiseOrFn() : promiseOrFn);
  } catch (e) {
    err = e;
  }
  const seen = server.recorder.since(mark);
  const wire = seen.map(formatEntry).join("\n    ") || "(nothing sent)";
  assert.ok(err, `expected a ${status} ${code ?? ""} error, but the call succeeded. Wire:\n    ${wire}`);
  assert.equal(err.name, "RestError", `expected a RestError (${status} ${code ?? ""}), got ${err.name}: ${err.message}\n    ${wire}`);
  if (status !== undefined) {
    assert.equal(err.statusCode, status, `status: expected ${status}, got ${err.statusCode} (${err.code}: ${err.message})\n    ${wire}`);
  }
  if (code !== undefined) {
    assert.equal(err.code, code, `error.code: expected ${code}, got ${err.code} (${err.statusCode}: ${err.message})\n    ${wire}`);
  }
  const last = [...seen].reverse().find((e) => e.status === err.statusCode);
  let body;
  try {
    body = last?.responseBody ? JSON.parse(last.responseBody) : undefined;
  } catch {
    body = undefined;
  }
  if (inner !== undefined) {
    assert.equal(body?.error?.innererror?.code, inner, `error.innererror.code: expected ${inner}\n    ${wire}`);
  }
  if (message !== undefined) {
    assert.match(err.message, message, `error.message does not match ${message}\n    ${wire}`);
  }
  if (status !== undefined && body !== undefined) {
    assert.equal(typeof body?.error?.message, "string", `error body has no error.message string\n    ${wire}`);
  }
  return { err, body, wire: seen };
}

/** Calls fn and on failure appends the recorded wire exchanges since the call started. */
export async function withWire(server, fn) {
  const mark = server.recorder.mark();
  try {
    return await fn();
  } catch (e) {
    const wire = server.recorder.since(mark).map(formatEntry).join("\n    ");
    if (wire && e && typeof e.message === "string" && !e.message.includes("Wire:")) {
      e.message += `\n  Wire:\n    ${wire}`;
    }
    throw e;
  }
}

/** Unique key names per run, valid for Key Vault (^[0-9a-zA-Z-]+$). */
let nameCounter = 0;
export function uniqueName(prefix) {
  nameCounter += 1;
  return `${prefix}-${process.pid.toString(36)}-${Date.now().toString(36)}-${nameCounter}`;
}

export const VERSION_RE = /^[0-9a-f]{32}$/;

/** Asserts `id` is exactly scheme://host:port/keys/{name}[/{32 hex}] for this vault. */
export function assertKeyId(id, vaultUrl, name, { versioned = true } = {}) {
  const prefix = `${vaultUrl}/keys/${name}`;
  if (versioned) {
    assert.match(id, new RegExp(`^${escapeRe(prefix)}/[0-9a-f]{32}$`), `kid ${id} is not ${prefix}/{32 hex}`);
  } else {
    assert.equal(id, prefix, `kid ${id} is not the versionless ${prefix}`);
  }
}

export function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Collect an async iterator. */
export async function collect(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

/** Collect pages of a PagedAsyncIterableIterator with a given page size. */
export async function collectPages(iter, maxPageSize) {
  const pages = [];
  for await (const page of iter.byPage({ maxPageSize })) pages.push(page);
  return pages;
}

export const DAY_MS = 86_400_000;

/** Registers the standard after() check: no exchange in this file answered 5xx. */
export function assertNo5xx(server) {
  const bad = server.serverErrors();
  assert.deepEqual(
    bad.map(formatEntry),
    [],
    `the server answered 5xx:\n    ${bad.map(formatEntry).join("\n    ")}`,
  );
}

/** Poll until fn() returns truthy or the time runs out. */
export async function eventually(fn, { timeoutMs = 10_000, intervalMs = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await sleep(intervalMs);
  }
  throw new Error(`timed out waiting for ${what}`);
}

export { sleep };

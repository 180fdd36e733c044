/*
 * cmkemu trainer dashboard. Plain JavaScript, no build step, no network beyond this emulator.
 * Reads and controls go through the emulator's public APIs (ARM, Key Vault, BAP, Dataverse,
 * /_emulator/clock, /_emulator/audit) with tokens of the emulator admin principal. Hosts a
 * page cannot address (NAME.vault.localhost, ID.crm.localhost) are reached through
 * /_emulator/ui/relay/{host}/..., which dispatches the same request to that host's API.
 * Live: every second the page asks the audit log for new events; any change (every lock, unlock,
 * key or ARM change, clock move is audited) or 5 s without one refreshes everything.
 */
"use strict";

const AUD = {
  keyvault: "https://vault.azure.net",
  arm: "https://management.azure.com",
  bap: "https://service.powerapps.com",
};
const V = { kv: "7.5", vaults: "2023-07-01", policies: "2020-10-30", roles: "2022-04-01", subs: "2022-12-01", bap: "2023-06-01" };
const BAP = "/providers/Microsoft.BusinessAppPlatform/scopes/admin/environments";
const CRYPTO_SERVICE_ENCRYPTION_USER = "e147488a-f6f5-4113-8e2d-b22465e65bf6";
const ROLE_NAMES = {
  "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
  "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
  "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
  "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
  "f25e0fa2-a7c8-4377-a976-54943a77a395": "Key Vault Contributor",
  "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
  "14b46e9e-c2b7-41b4-b07b-48a6ebf60603": "Key Vault Crypto Officer",
  "12338af0-0e69-4776-bea7-57ae8d297424": "Key Vault Crypto User",
  "e147488a-f6f5-4113-8e2d-b22465e65bf6": "Key Vault Crypto Service Encryption User",
  "08bbd89e-9f13-488c-ac41-acfcb10c90ab": "Key Vault Crypto Service Release User",
  "21090545-7ca7-4776-b22c-e363652d74d2": "Key Vault Reader",
};
const CMK_PERMS = ["get", "wrapKey", "unwrapKey"];

/* Inline SVG icons (no emoji font needed on a projector's machine); each sits beside a word. */
const svg = (body) => `<svg class="icon" viewBox="0 0 24 24" width="1em" height="1em" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2.4" stroke-linecap="round" stroke-linejoin="round">${body}</svg>`;
const ICON = {
  lock: svg('<rect x="4" y="11" width="16" height="10" rx="2" fill="currentColor"/><path d="M8 11V7a4 4 0 0 1 8 0v4"/>'),
  key: svg('<circle cx="7.5" cy="15.5" r="4.5"/><path d="M11 12l9-9M16 7l3 3M14 9l2 2"/>'),
  building: svg('<rect x="5" y="3" width="14" height="18" rx="1"/><path d="M9 7h2M13 7h2M9 11h2M13 11h2M9 15h2M13 15h2M11 21v-3h2v3"/>'),
  pause: svg('<path d="M9 5v14M15 5v14"/>'),
  ok: svg('<path d="M4 12l5 5L20 6"/>'),
  no: svg('<path d="M6 6l12 12M18 6L6 18"/>'),
  clock: svg('<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 3"/>'),
  shield: svg('<path d="M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6z"/>'),
  recycle: svg('<path d="M4 12a8 8 0 0 1 14-5M20 12a8 8 0 0 1-14 5M18 3v4h-4M6 21v-4h4"/>'),
  warn: svg('<path d="M12 3l10 18H2z"/><path d="M12 10v4M12 17.5v.5"/>'),
  trash: svg('<path d="M4 7h16M9 7V4h6v3M6 7l1 14h10l1-14"/>'),
  ban: svg('<circle cx="12" cy="12" r="9"/><path d="M6 6l12 12"/>'),
};

const S = {
  config: null, secret: null, tokens: {}, subs: [], vaults: [], keys: {}, policies: [], roles: [],
  envs: [], clock: null, clockAt: 0, audit: [], auditLast: -1, lastFull: 0, results: {},
  busy: false, refreshing: null,
};

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const last = (id) => String(id || "").split("/").filter(Boolean).pop() || "";

/* ---------------------------------------------------------------- HTTP */

/* A URL of another host of this emulator goes through the relay; ours goes direct. */
function localUrl(url) {
  if (url.startsWith("/")) return url;
  const u = new URL(url);
  if (u.hostname === location.hostname) return u.pathname + u.search;
  return "/_emulator/ui/relay/" + u.hostname + u.pathname + u.search;
}

async function http(method, url, { aud, token, body, headers, form } = {}) {
  const h = Object.assign({}, headers || {});
  if (token) h.Authorization = "Bearer " + token;
  else if (aud) h.Authorization = "Bearer " + (await adminToken(aud));
  let payload;
  if (form) {
    payload = new URLSearchParams(form).toString();
    h["Content-Type"] = "application/x-www-form-urlencoded";
  } else if (body !== undefined) {
    payload = typeof body === "string" ? body : JSON.stringify(body);
    if (!Object.keys(h).some((k) => k.toLowerCase() === "content-type")) h["Content-Type"] = "application/json";
  }
  const r = await fetch(localUrl(url), { method, headers: h, body: payload, cache: "no-store" });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  return { status: r.status, json, text, headers: r.headers };
}

function errText(r) {
  const e = r.json && r.json.error;
  if (e && typeof e === "object") return `${r.status} ${e.code || ""}: ${e.message || ""}`;
  if (r.json && r.json.error_description) return `${r.status} ${r.json.error}: ${r.json.error_description}`;
  return `${r.status} ${r.text.slice(0, 300)}`;
}

async function ok(method, url, opts) {
  const r = await http(method, url, opts);
  if (r.status >= 400) throw new Error(`${method} ${url.split("?")[0]} -> ${errText(r)}`);
  return r;
}

/* ---------------------------------------------------------------- tokens (the admin principal) */

async function clientCredentials(clientId, secret, aud) {
  const r = await http("POST", `/${S.config.tenant}/oauth2/v2.0/token`, {
    form: { grant_type: "client_credentials", client_id: clientId, client_secret: secret, scope: aud + "/.default" },
  });
  if (r.status !== 200) throw new Error("token: " + errText(r));
  return { token: r.json.access_token, exp: Date.now() / 1000 + Number(r.json.expires_in || 3600) };
}

async function adminToken(fam) {
  const aud = AUD[fam] || fam;
  const t = S.tokens[aud];
  if (t && t.exp - 120 > Date.now() / 1000) return t.token;
  let got;
  if (S.config.authMode === "strict") {
    if (!S.secret) throw new Error("sign in first");
    got = await clientCredentials(S.secret.clientId, S.secret.secret, aud);
  } else if (S.config.admin) {
    const r = await http("POST", "/_emulator/tokens", { body: { principal: S.config.admin.clientId || S.config.admin.objectId, audience: aud } });
    if (r.status !== 200) throw new Error("token: " + errText(r));
    got = { token: r.json.access_token, exp: Number(r.json.expires_on) };
  } else {
    /* no admin in this world: permissive mode maps an opaque token to the default principal */
    got = { token: "cmkemu-dashboard", exp: Date.now() / 1000 + 86400 };
  }
  S.tokens[aud] = got;
  return got.token;
}

/* ---------------------------------------------------------------- reading the world */

const vaultHost = (name) => `https://${name}.vault.localhost:${location.port || 443}`;

async function listAll(url, opts) {
  const out = [];
  for (let next = url, n = 0; next && n < 50; n++) {
    const r = await ok("GET", next, opts);
    out.push(...((r.json && r.json.value) || []));
    next = r.json && (r.json.nextLink || r.json["@odata.nextLink"]);
  }
  return out;
}

async function readKeys(vault) {
  const base = vaultHost(vault.name);
  const kv = { aud: "keyvault" };
  const [keys, deleted] = await Promise.all([
    listAll(`${base}/keys?api-version=${V.kv}&maxresults=25`, kv),
    listAll(`${base}/deletedkeys?api-version=${V.kv}&maxresults=25`, kv),
  ]);
  const out = await Promise.all(keys.map(async (k) => {
    const name = last(k.kid);
    const versions = await listAll(`${base}/keys/${encodeURIComponent(name)}/versions?api-version=${V.kv}&maxresults=25`, kv);
    versions.sort((a, b) => (a.attributes.created || 0) - (b.attributes.created || 0));
    return { name, attributes: k.attributes, managed: k.managed, versions };
  }));
  out.sort((a, b) => a.name.localeCompare(b.name));
  const del = deleted.map((d) => ({ name: last(d.kid), deletedDate: d.deletedDate, scheduledPurgeDate: d.scheduledPurgeDate, attributes: d.attributes }));
  return { keys: out, deleted: del };
}

async function refreshAll() {
  if (S.refreshing) return S.refreshing;
  S.refreshing = (async () => {
    const arm = { aud: "arm" };
    const [config, clock, subs, envs] = await Promise.all([
      ok("GET", "/_emulator/ui/api/config").then((r) => r.json),
      ok("GET", "/_emulator/clock").then((r) => r.json),
      listAll(`/subscriptions?api-version=${V.subs}`, arm),
      listAll(`${BAP}?api-version=${V.bap}`, { aud: "bap" }),
    ]);
    S.config = Object.assign(S.config || {}, config);
    S.clock = clock; S.clockAt = Date.now();
    const vaults = [], policies = [], roles = [];
    await Promise.all(subs.map(async (s) => {
      const sub = `/subscriptions/${s.subscriptionId}`;
      const [v, p, r] = await Promise.all([
        listAll(`${sub}/providers/Microsoft.KeyVault/vaults?api-version=${V.vaults}`, arm),
        listAll(`${sub}/providers/Microsoft.PowerPlatform/enterprisePolicies?api-version=${V.policies}`, arm),
        listAll(`${sub}/providers/Microsoft.Authorization/roleAssignments?api-version=${V.roles}`, arm),
      ]);
      vaults.push(...v); policies.push(...p); roles.push(...r);
    }));
    vaults.sort((a, b) => a.name.localeCompare(b.name));
    const keys = {};
    await Promise.all(vaults.map(async (v) => {
      try { keys[v.name] = await readKeys(v); } catch (e) { keys[v.name] = { error: e.message, keys: [], deleted: [] }; }
    }));
    Object.assign(S, { subs, vaults, policies, roles, envs, keys, lastFull: Date.now() });
  })();
  try { await S.refreshing; } finally { S.refreshing = null; }
}

async function pollAudit() {
  if (S.auditLast < 0) {
    const r = await ok("GET", "/_emulator/audit?limit=1");
    S.auditLast = Math.max(0, r.json.lastId - 20);
  }
  const r = await ok("GET", `/_emulator/audit?since=${S.auditLast}&limit=1000`);
  const ev = r.json.value || [];
  if (ev.length) {
    S.audit = S.audit.concat(ev).slice(-20);
    S.auditLast = ev[ev.length - 1].id;
  }
  return ev.length > 0;
}

/* ---------------------------------------------------------------- helpers over the state */

const principalName = (oid) => {
  const p = ((S.config && S.config.principals) || []).find((x) => x.objectId === oid);
  if (p) return p.name;
  const pol = S.policies.find((x) => x.identity && x.identity.principalId === oid);
  return pol ? `identity of policy ${pol.name}` : oid;
};
const vaultOfPolicy = (p) => {
  const id = p.properties && p.properties.encryption && p.properties.encryption.keyVault && p.properties.encryption.keyVault.id;
  return id ? S.vaults.find((v) => v.id.toLowerCase() === id.toLowerCase()) || { name: last(id), id, missing: true } : null;
};
const keyOfPolicy = (p) => ((p.properties.encryption.keyVault || {}).key || {});
const policyBySystemId = (sid) => S.policies.find((p) => p.properties && p.properties.systemId === sid);

function emuNow() { return S.clock ? S.clock.nowUnix + (Date.now() - S.clockAt) / 1000 : Date.now() / 1000; }

function span(secs) {
  if (secs <= 0) return "now";
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60), s = Math.floor(secs % 60);
  return d ? `${d} d ${h} h ${m} min` : h ? `${h} h ${m} min ${s} s` : `${m} min ${s} s`;
}
const when = (unix) => unix ? new Date(unix * 1000).toISOString().replace(".000Z", "Z").replace("T", " ") : "";
const toUnix = (v) => (typeof v === "number" ? v : v ? Date.parse(v) / 1000 : 0);

/* Does the policy identity hold get/wrapKey/unwrapKey on the policy's vault? */
function identityAccess(p) {
  const v = vaultOfPolicy(p), oid = p.identity && p.identity.principalId;
  if (!v || v.missing || !oid) return { known: false };
  if (v.properties.enableRbacAuthorization) {
    const scope = v.id.toLowerCase();
    const ras = S.roles.filter((r) => r.properties.principalId === oid && r.properties.scope.toLowerCase().startsWith(scope));
    return { known: true, rbac: true, vault: v, oid, granted: ras.length > 0, assignments: ras };
  }
  const ap = (v.properties.accessPolicies || []).find((a) => a.objectId === oid);
  const keys = (ap && ap.permissions && ap.permissions.keys) || [];
  const has = (op) => keys.some((k) => k.toLowerCase() === op.toLowerCase() || k.toLowerCase() === "all");
  return { known: true, rbac: false, vault: v, oid, entry: ap, granted: CMK_PERMS.every(has), partial: !!ap && !CMK_PERMS.every(has), perms: keys };
}

/* ---------------------------------------------------------------- rendering */

function envState(e) {
  const p = e.properties || {}, rt = (p.states && p.states.runtime) || {};
  const by = (p.protectionStatus && p.protectionStatus.keyManagedBy) || "Microsoft";
  if (p.cmkLock || rt.runtimeReasonCode === "CustomerManagedKeyLocked") return "locked";
  if (rt.id === "Disabled") return "disabled";
  return by === "Customer" ? "cmk" : "mmk";
}

function renderEnvs() {
  const html = S.envs.map((e) => {
    const p = e.properties || {}, st = envState(e), rt = (p.states && p.states.runtime) || {};
    const cmk = (p.enterprisePolicies && p.enterprisePolicies.customerManagedKeys) || null;
    const pol = cmk && policyBySystemId(cmk.systemId);
    let badge;
    if (st === "locked") badge = `<span class="badge big b-locked">${ICON.lock} LOCKED</span>`;
    else if (st === "disabled") badge = `<span class="badge big b-warn">${ICON.pause} DISABLED <small>(${esc(rt.runtimeReasonCode || "")})</small></span>`;
    else if (st === "cmk") badge = `<span class="badge big b-cmk">${ICON.key} Encrypted with customer key</span>`;
    else badge = `<span class="badge big b-mmk">${ICON.building} Microsoft-managed key</span>`;
    let lock = "";
    if (p.cmkLock) {
      const del = toUnix(p.cmkLock.scheduledDeletionTime);
      lock = `<div class="reason">Lock reason: ${esc(p.cmkLock.reason)}</div>
        <div>Locked since ${esc(when(toUnix(p.cmkLock.lockedSince)))}; deleted with its data after ${esc(p.cmkLock.retentionDays)} days:</div>
        <div class="countdown" data-deadline="${del}">${ICON.clock} deletion in <span class="cd">${esc(span(del - emuNow()))}</span></div>`;
    }
    const res = S.results["env:" + e.name];
    return `<article class="card ${st === "locked" ? "locked" : st === "cmk" ? "cmk" : ""}" data-env="${esc(e.name)}" data-state="${st}">
      <h3>${esc(p.displayName || e.name)}</h3>
      ${badge}
      <div class="facts">Runtime: <b class="runtime">${esc(rt.id || "?")}</b>${rt.runtimeReasonCode ? ` (<b>${esc(rt.runtimeReasonCode)}</b>)` : ""} &middot;
        SKU <b>${esc(p.environmentSku)}</b> &middot; key managed by <b class="managedby">${esc((p.protectionStatus || {}).keyManagedBy || "Microsoft")}</b></div>
      ${cmk ? `<div class="facts">Enterprise policy <b>${esc(pol ? pol.name : last(cmk.policyId || cmk.systemId))}</b>, link ${esc(cmk.linkStatus || "")}${cmk.keyVersion ? `, key version <span class="ver">${esc(cmk.keyVersion.slice(0, 8))}&hellip;</span>` : ""}</div>` : ""}
      ${lock}
      <div class="facts small mono">${esc(e.name)}</div>
      <div class="actions">
        <button data-action="read" data-env="${esc(e.name)}">Read a record</button>
        <button data-action="enable" data-env="${esc(e.name)}" class="good" ${rt.id === "Disabled" ? "" : "disabled"}>Re-enable</button>
      </div>
      ${res ? `<div class="result ${res.ok ? "ok" : "fail"}" role="status">${res.ok ? ICON.ok : ICON.no} ${esc(res.text)}</div>` : ""}
    </article>`;
  }).join("");
  $("envs").innerHTML = html || `<p>No environments.</p>`;
}

function renderPolicies() {
  const html = S.policies.map((p) => {
    const health = p.properties.healthStatus || "Undetermined";
    const hb = health === "Healthy" ? `<span class="badge b-ok">${ICON.ok} Healthy</span>` : health === "Unhealthy" ? `<span class="badge b-locked">${ICON.no} Unhealthy</span>` : `<span class="badge b-off">? ${esc(health)}</span>`;
    const v = vaultOfPolicy(p), k = keyOfPolicy(p), acc = identityAccess(p);
    const linked = S.envs.filter((e) => { const c = e.properties.enterprisePolicies && e.properties.enterprisePolicies.customerManagedKeys; return c && c.systemId === p.properties.systemId; });
    let access = `<span class="badge b-off">? access unknown</span>`;
    if (acc.known) access = acc.granted ? `<span class="badge b-ok">${ICON.ok} identity has get, wrapKey, unwrapKey</span>` : `<span class="badge b-locked">${ICON.no} identity has no key access${acc.partial ? ` (only ${esc(acc.perms.join(", "))})` : ""}</span>`;
    return `<article class="card" data-policy="${esc(p.name)}">
      <h3>${esc(p.name)} ${hb}</h3>
      <div class="facts">Key <b>${esc(v ? v.name : "?")}/${esc(k.name || "?")}</b>${k.version ? ` version <span class="ver">${esc(k.version.slice(0, 8))}</span>` : " (current version)"} &middot; ${esc(p.kind)} &middot; ${esc(p.location)}</div>
      <div class="facts">Identity <span class="mono">${esc(p.identity && p.identity.principalId)}</span> ${acc.known ? (acc.rbac ? "(RBAC vault)" : "(access policies)") : ""}</div>
      <div>${access}</div>
      <div class="facts">Linked environments: <b>${linked.length ? linked.map((e) => esc(e.properties.displayName)).join(", ") : "none"}</b></div>
      <div class="actions">
        <button class="danger" data-action="revoke" data-policy="${esc(p.name)}" ${acc.known && acc.granted ? "" : "disabled"}>Revoke identity's access</button>
        <button class="good" data-action="restore" data-policy="${esc(p.name)}" ${acc.known && !acc.granted ? "" : "disabled"}>Restore identity's access</button>
      </div>
    </article>`;
  }).join("");
  $("policies").innerHTML = html || `<p>No enterprise policies (run the <b>setup-and-link</b> scenario to create one).</p>`;
}

function versionBadges(attr) {
  const now = emuNow(), b = [];
  b.push(attr.enabled ? `<span class="badge b-ok">${ICON.ok} enabled</span>` : `<span class="badge b-locked">${ICON.ban} disabled</span>`);
  if (attr.exp && attr.exp <= now) b.push(`<span class="badge b-locked">${ICON.clock} expired ${esc(when(attr.exp))}</span>`);
  else if (attr.exp) b.push(`<span class="badge b-off">expires ${esc(when(attr.exp))}</span>`);
  if (attr.nbf && attr.nbf > now) b.push(`<span class="badge b-warn">not valid before ${esc(when(attr.nbf))}</span>`);
  return b.join("");
}

function renderVaults() {
  const html = S.vaults.map((v) => {
    const pr = v.properties, kd = S.keys[v.name] || { keys: [], deleted: [] };
    const facts = [
      pr.enableSoftDelete !== false ? `<span class="badge b-ok">${ICON.recycle} soft delete ${esc(pr.softDeleteRetentionInDays || 90)} days</span>` : `<span class="badge b-warn">no soft delete</span>`,
      pr.enablePurgeProtection ? `<span class="badge b-ok">${ICON.shield} purge protection</span>` : `<span class="badge b-warn">${ICON.warn} no purge protection</span>`,
      pr.enableRbacAuthorization ? `<span class="badge b-cmk">RBAC</span>` : `<span class="badge b-mmk">access policies</span>`,
    ].join("");
    const access = pr.enableRbacAuthorization
      ? S.roles.filter((r) => r.properties.scope.toLowerCase().startsWith(v.id.toLowerCase())).map((r) => `<li>${esc(principalName(r.properties.principalId))}: ${esc(ROLE_NAMES[last(r.properties.roleDefinitionId)] || last(r.properties.roleDefinitionId))}${r.properties.scope.toLowerCase() !== v.id.toLowerCase() ? ` on ${esc(r.properties.scope.slice(v.id.length + 1))}` : ""}</li>`).join("")
      : (pr.accessPolicies || []).map((a) => `<li>${esc(principalName(a.objectId))}: ${esc(((a.permissions && a.permissions.keys) || []).join(", "))}</li>`).join("");
    const rows = kd.keys.map((k) => {
      const cur = k.versions[k.versions.length - 1];
      const vers = k.versions.slice().reverse().map((ver, i) => {
        const id = last(ver.kid);
        return `<div>${i === 0 ? "<b>current</b> " : ""}<span class="ver">${esc(id.slice(0, 8))}&hellip;</span> ${versionBadges(ver.attributes)}
          <button data-action="${ver.attributes.enabled ? "disable" : "enable-key"}" data-vault="${esc(v.name)}" data-key="${esc(k.name)}" data-version="${esc(id)}">${ver.attributes.enabled ? "Disable" : "Enable"} version</button></div>`;
      }).join("");
      return `<tr data-key="${esc(k.name)}"><td><b>${esc(k.name)}</b>${k.managed ? " <small>(managed)</small>" : ""}</td><td>${vers}</td>
        <td class="actions">
          <button data-action="${cur && cur.attributes.enabled ? "disable" : "enable-key"}" data-vault="${esc(v.name)}" data-key="${esc(k.name)}">${cur && cur.attributes.enabled ? "Disable key" : "Enable key"}</button>
          <button data-action="rotate" data-vault="${esc(v.name)}" data-key="${esc(k.name)}">Rotate</button>
          <button class="danger" data-action="delete" data-vault="${esc(v.name)}" data-key="${esc(k.name)}">Delete</button>
        </td></tr>`;
    }).join("");
    const drows = kd.deleted.map((d) => `<tr data-deleted-key="${esc(d.name)}"><td><b>${esc(d.name)}</b></td>
      <td><span class="badge b-locked">${ICON.trash} deleted ${esc(when(d.deletedDate))}</span> <span class="badge b-warn">purge on ${esc(when(d.scheduledPurgeDate))} (in ${esc(span(d.scheduledPurgeDate - emuNow()))})</span></td>
      <td class="actions"><button class="good" data-action="recover" data-vault="${esc(v.name)}" data-key="${esc(d.name)}">Recover</button>
        <button class="danger" data-action="purge" data-vault="${esc(v.name)}" data-key="${esc(d.name)}" ${pr.enablePurgeProtection ? `title="purge protection: the vault will refuse"` : ""}>Purge</button></td></tr>`).join("");
    return `<article class="card" data-vault="${esc(v.name)}">
      <h3>${esc(v.name)}</h3><div>${facts}</div>
      <div class="facts">Who has key access:</div><ul>${access || "<li>nobody</li>"}</ul>
      ${kd.error ? `<div class="err">${esc(kd.error)}</div>` : ""}
      <table class="keys"><thead><tr><th>key</th><th>versions (newest first)</th><th>controls</th></tr></thead>
      <tbody>${rows}${drows}${rows || drows ? "" : `<tr><td colspan="3">no keys</td></tr>`}</tbody></table>
    </article>`;
  }).join("");
  $("vaults").innerHTML = html || "<p>No vaults.</p>";
}

function renderRoles() {
  const rows = S.roles.map((r) => `<tr><td>${esc(principalName(r.properties.principalId))}</td><td>${esc(ROLE_NAMES[last(r.properties.roleDefinitionId)] || last(r.properties.roleDefinitionId))}</td><td class="mono small">${esc(r.properties.scope)}</td></tr>`).join("");
  $("roles").innerHTML = `<table><thead><tr><th>principal</th><th>role</th><th>scope</th></tr></thead><tbody>${rows || `<tr><td colspan="3">none</td></tr>`}</tbody></table>`;
}

function renderAudit() {
  const rows = S.audit.slice().reverse().map((e) => `<tr><td class="small">${esc(e.emulatorTime)}</td><td>${esc((e.caller && e.caller.name) || "")}</td>
    <td>${esc(e.operation)}</td><td class="small mono">${esc(e.target)}</td>
    <td>${e.outcome === "Success" || e.outcome === "Succeeded" || e.outcome === "AccessRestored" ? ICON.ok : e.status >= 400 || /Fail|Lock/.test(e.outcome || "") ? ICON.no : ""} ${esc(e.outcome)} ${esc(e.status || "")}</td>
    <td class="small">${esc(e.detail || "")}</td></tr>`).join("");
  $("audit").innerHTML = `<table><thead><tr><th>emulator time</th><th>caller</th><th>operation</th><th>target</th><th>outcome</th><th>detail</th></tr></thead><tbody>${rows || `<tr><td colspan="6">no events yet</td></tr>`}</tbody></table>`;
}

function renderHeader() {
  if (S.clock) {
    const off = S.clock.offsetSeconds;
    $("clock").textContent = `Emulator time ${when(Math.floor(emuNow()))}${off ? ` (+${span(off)} ahead)` : ""}`;
  }
  if (S.config) {
    const a = S.config.admin;
    $("who").textContent = `acting as ${a ? a.name : "the default principal"} · auth ${S.config.authMode}`;
  }
}

function renderAll() {
  renderHeader(); renderEnvs(); renderPolicies(); renderVaults(); renderRoles(); renderAudit();
}

function tickCountdowns() {
  renderHeader();
  document.querySelectorAll(".countdown").forEach((el) => {
    el.querySelector(".cd").textContent = span(Number(el.dataset.deadline) - emuNow());
  });
}

function message(text, good) {
  const m = $("message");
  m.hidden = !text;
  m.textContent = text || "";
  m.className = "message" + (good ? " ok" : "");
}

/* ---------------------------------------------------------------- controls (public APIs only) */

const ACTIONS = {
  async clock(b) { await ok("POST", "/_emulator/clock", { aud: "arm", body: { advance: b.dataset.advance } }); },
  async large(b) {
    const on = document.body.classList.toggle("large");
    b.setAttribute("aria-pressed", String(on));
    try { localStorage.setItem("cmkemu-large", on ? "1" : ""); } catch (e) { /* private mode */ }
  },
  async revoke(b) {
    const p = S.policies.find((x) => x.name === b.dataset.policy), acc = identityAccess(p);
    if (acc.rbac) {
      for (const ra of acc.assignments) await ok("DELETE", `${ra.id}?api-version=${V.roles}`, { aud: "arm" });
    } else {
      await ok("PUT", `${acc.vault.id}/accessPolicies/remove?api-version=${V.vaults}`, { aud: "arm", body: { properties: { accessPolicies: [
        { tenantId: S.config.tenant, objectId: acc.oid, permissions: { keys: acc.perms.length ? acc.perms : CMK_PERMS } }] } } });
    }
  },
  async restore(b) {
    const p = S.policies.find((x) => x.name === b.dataset.policy), acc = identityAccess(p);
    if (acc.rbac) {
      const sub = acc.vault.id.split("/")[2];
      await ok("PUT", `${acc.vault.id}/providers/Microsoft.Authorization/roleAssignments/${crypto.randomUUID()}?api-version=${V.roles}`, { aud: "arm", body: { properties: {
        roleDefinitionId: `/subscriptions/${sub}/providers/Microsoft.Authorization/roleDefinitions/${CRYPTO_SERVICE_ENCRYPTION_USER}`, principalId: acc.oid, principalType: "ServicePrincipal" } } });
    } else {
      await ok("PUT", `${acc.vault.id}/accessPolicies/add?api-version=${V.vaults}`, { aud: "arm", body: { properties: { accessPolicies: [
        { tenantId: S.config.tenant, objectId: acc.oid, permissions: { keys: CMK_PERMS } }] } } });
    }
  },
  async disable(b) { await keyPatch(b, false); },
  async "enable-key"(b) { await keyPatch(b, true); },
  async rotate(b) { await ok("POST", `${vaultHost(b.dataset.vault)}/keys/${encodeURIComponent(b.dataset.key)}/rotate?api-version=${V.kv}`, { aud: "keyvault" }); },
  async delete(b) { await ok("DELETE", `${vaultHost(b.dataset.vault)}/keys/${encodeURIComponent(b.dataset.key)}?api-version=${V.kv}`, { aud: "keyvault" }); },
  async recover(b) { await ok("POST", `${vaultHost(b.dataset.vault)}/deletedkeys/${encodeURIComponent(b.dataset.key)}/recover?api-version=${V.kv}`, { aud: "keyvault" }); },
  async purge(b) { await ok("DELETE", `${vaultHost(b.dataset.vault)}/deletedkeys/${encodeURIComponent(b.dataset.key)}?api-version=${V.kv}`, { aud: "keyvault" }); },
  async enable(b) {
    const id = b.dataset.env;
    const r = await http("POST", `${BAP}/${id}/enable?api-version=${V.bap}`, { aud: "bap" });
    S.results["env:" + id] = r.status < 400 ? { ok: true, text: "Re-enabled (200)." } : { ok: false, text: "Re-enable refused: " + errText(r) };
  },
  async read(b) {
    const id = b.dataset.env, e = S.envs.find((x) => x.name === id);
    const inst = e.properties.linkedEnvironmentMetadata.instanceUrl;
    const r = await http("GET", `${inst}api/data/v9.2/accounts?$top=1`, { aud: "bap" });
    const row = r.json && r.json.value && r.json.value[0];
    S.results["env:" + id] = r.status === 200
      ? { ok: true, text: row ? `Read OK: account "${row.name || row.accountid}"` : "Read OK (no accounts yet)" }
      : { ok: false, text: "Read failed: " + errText(r) };
  },
};

async function keyPatch(b, enabled) {
  const v = b.dataset.version ? "/" + b.dataset.version : "";
  await ok("PATCH", `${vaultHost(b.dataset.vault)}/keys/${encodeURIComponent(b.dataset.key)}${v}?api-version=${V.kv}`, { aud: "keyvault", body: { attributes: { enabled } } });
}

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button[data-action]");
  if (!b || !ACTIONS[b.dataset.action]) return;
  b.disabled = true;
  try {
    await ACTIONS[b.dataset.action](b);
    message("");
  } catch (e) {
    message(e.message);
  } finally {
    b.disabled = false;
  }
  if (b.dataset.action !== "large") await update(true);
});

/* ---------------------------------------------------------------- scenarios, step by step */

const SC = { list: [], cur: null, idx: 0, vars: {}, log: [], running: false, done: false, failed: false, tokens: {} };

function scenarioVars() {
  const port = location.port || "443", origin = location.origin;
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(4)), (x) => x.toString(16).padStart(2, "0")).join("");
  const sub = (S.subs[0] && S.subs[0].subscriptionId) || "00000000-0000-4000-8000-000000000001";
  return { url: origin, vault_url: origin, port, scratch_url: `https://scratch.vault.localhost:${port}`, contoso_url: `https://contoso-cmk.vault.localhost:${port}`,
    arm_url: origin, bap_url: origin, authority: origin, tenant: S.config.tenant, subscription: sub, rg: "cmk-rg", run: hex };
}

function pathGet(doc, path) {
  if (path === "" || path === ".") return doc;
  let cur = doc;
  if (path.startsWith("/")) {
    for (const raw of path.slice(1).split("/")) {
      if (cur == null) return undefined;
      const seg = raw.replace(/~1/g, "/").replace(/~0/g, "~");
      cur = Array.isArray(cur) ? cur[Number(seg)] : cur[seg];
    }
    return cur;
  }
  const re = /([^.[\]]+)|\[(\d+)\]/g;
  let m;
  while ((m = re.exec(path)) && cur != null) cur = m[1] !== undefined ? cur[m[1]] : cur[Number(m[2])];
  return cur;
}

function varValue(name) {
  if (name === "uuid") return crypto.randomUUID();
  if (name in SC.vars) return SC.vars[name];
  const dot = name.indexOf(".");
  if (dot > 0 && name.slice(0, dot) in SC.vars) return pathGet(SC.vars[name.slice(0, dot)], name.slice(dot + 1));
  throw new Error(`undefined variable \${${name}} (an earlier step did not capture it)`);
}
function substStr(s) {
  return s.replace(/\$\{([^}]{1,100})\}/g, (_, n) => { const v = varValue(n); return typeof v === "string" ? v : v == null ? "" : JSON.stringify(v); });
}
function subst(x) {
  if (typeof x === "string") {
    const m = /^\$\{([^}]{1,100})\}$/.exec(x);
    return m ? structuredClone(varValue(m[1])) : substStr(x);
  }
  if (Array.isArray(x)) return x.map(subst);
  if (x && typeof x === "object") return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, subst(v)]));
  return x;
}

const OPS = ["$type", "$exists", "$regex", "$contains", "$minItems", "$maxItems", "$len", "$oneOf", "$ne", "$gte", "$lte", "$equals", "$minLength", "$notContains"];
const typeName = (v) => v === null ? "null" : Array.isArray(v) ? "array" : typeof v;
const isOpObj = (e) => e && typeof e === "object" && !Array.isArray(e) && Object.keys(e).length > 0 && Object.keys(e).every((k) => OPS.includes(k));
const show = (v) => v === undefined ? "(absent)" : JSON.stringify(v);
function literalEq(a, e) { return JSON.stringify(a) === JSON.stringify(e); }

/* The runner's matchers (harness/runner.c): "" when actual matches, else the reason. */
function mismatch(actual, e) {
  if (isOpObj(e)) {
    for (const [op, v] of Object.entries(e)) {
      let good = true;
      if (op === "$exists") good = v ? actual !== undefined : actual === undefined;
      else if (actual === undefined) good = false;
      else if (op === "$type") good = typeName(actual) === v;
      else if (op === "$regex") good = typeof actual === "string" && new RegExp(v).test(actual);
      else if (op === "$contains" || op === "$notContains") {
        let found = false;
        if (typeof actual === "string" && typeof v === "string") found = actual.toLowerCase().includes(v.toLowerCase());
        else if (Array.isArray(actual)) found = actual.some((x) => mismatch(x, v) === "");
        good = op === "$contains" ? found : !found;
      } else if (["$minItems", "$maxItems", "$len", "$minLength"].includes(op)) {
        const n = Array.isArray(actual) || typeof actual === "string" ? actual.length : actual && typeof actual === "object" ? Object.keys(actual).length : -1;
        good = n >= 0 && (op === "$len" ? n === v : op === "$maxItems" ? n <= v : n >= v);
      } else if (op === "$oneOf") good = v.some((x) => mismatch(actual, x) === "");
      else if (op === "$ne") good = !literalEq(actual, v);
      else if (op === "$equals") good = literalEq(actual, v);
      else if (op === "$gte") good = typeof actual === "number" && actual >= v;
      else if (op === "$lte") good = typeof actual === "number" && actual <= v;
      if (!good) return `expected ${op} ${show(v)}, got ${show(actual)}`;
    }
    return "";
  }
  if (Array.isArray(e)) return e.some((x) => mismatch(actual, x) === "") ? "" : `expected one of ${show(e)}, got ${show(actual)}`;
  if (e && typeof e === "object") {
    if (!actual || typeof actual !== "object") return `expected an object, got ${show(actual)}`;
    for (const [k, v] of Object.entries(e)) { const w = mismatch(actual[k], v); if (w) return `${k}: ${w}`; }
    return "";
  }
  return actual !== undefined && literalEq(actual, e) ? "" : `expected ${show(e)}, got ${show(actual)}`;
}
const check = (actual, expected) => mismatch(actual, subst(expected));

async function stepToken(aud, step) {
  if (aud === "none" || step.auth === "none") return null;
  if (step.token) return step.token;
  if (!AUD[aud]) throw new Error(`unknown audience "${aud}"`);
  if (step.principal) {
    const key = step.principal.clientId + "|" + aud;
    if (!SC.tokens[key]) SC.tokens[key] = (await clientCredentials(step.principal.clientId, step.principal.clientSecret, AUD[aud])).token;
    return SC.tokens[key];
  }
  return adminToken(aud);
}

const DEFAULT_BASE = { keyvault: "${vault_url}", arm: "${arm_url}", bap: "${bap_url}" };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runStep(sc, step) {
  if (step.builtin) {
    if (step.builtin === "set") { Object.assign(SC.vars, subst(step.vars || {})); return ""; }
    if (step.builtin === "sleep") { await sleep(1000 * (step.seconds || 0)); return ""; }
    return `the page cannot run builtin "${step.builtin}" (use cmkharness scenario)`;
  }
  const rq = step.request || {}, aud = step.audience || sc.audience || "none";
  let url;
  if (rq.url) url = substStr(rq.url);
  else {
    const base = substStr(step.base || sc.base || DEFAULT_BASE[aud] || "${url}").replace(/\/+$/, "");
    const p = substStr(rq.path || "/");
    url = base + (p.startsWith("/") ? "" : "/") + p;
  }
  const headers = {};
  for (const [k, v] of Object.entries(rq.headers || {})) headers[k] = substStr(String(v));
  const opts = { headers, token: await stepToken(aud, step) || undefined };
  if (!opts.token) delete opts.token;
  if (rq.body !== undefined) opts.body = subst(rq.body);
  else if (rq.bodyText !== undefined) opts.body = substStr(rq.bodyText);
  else if (rq.form) opts.form = subst(rq.form);
  const method = rq.method || "GET";
  const poll = step.poll, deadline = Date.now() + 1000 * ((poll && poll.timeout) || 60);
  let r;
  for (;;) {
    r = await http(method, url, opts);
    if (!poll) break;
    const done = (!poll.status || check(r.status, poll.status) === "") &&
      Object.entries(poll.until || {}).every(([k, v]) => check(pathGet(r.json, k), v) === "");
    if (done) break;
    if (Date.now() > deadline) return `poll timed out; last answer ${errText(r)}`;
    const ra = Number(r.headers.get("retry-after"));
    await sleep(ra > 0 && ra <= 60 ? ra * 1000 : 1000 * ((poll && poll.interval) || 0.25));
  }
  const ex = step.expect || {}, why = [];
  if (ex.status === undefined ? r.status < 200 || r.status > 299 : check(r.status, ex.status)) {
    why.push(`status: expected ${show(ex.status === undefined ? "2xx" : ex.status)}, got ${r.status}`);
  } else {
    for (const [k, v] of Object.entries(ex.json || {})) { const w = check(pathGet(r.json, k), v); if (w) why.push(`json ${k}: ${w}`); }
    for (const [k, v] of Object.entries(ex.headers || {})) { const h = r.headers.get(k); const w = check(h === null ? undefined : h, v); if (w) why.push(`header ${k}: ${w}`); }
    if (ex.bodyText !== undefined) { const w = check(r.text, ex.bodyText); if (w) why.push(`body: ${w}`); }
  }
  if (!why.length) {
    for (const [name, spec] of Object.entries(step.capture || {})) {
      let val, re;
      if (typeof spec === "string") val = pathGet(r.json, spec);
      else if (spec.header) { val = r.headers.get(spec.header); val = val === null ? undefined : val; re = spec.regex; }
      else if (spec.json) { val = pathGet(r.json, spec.json); re = spec.regex; }
      else if (spec.status) val = r.status;
      if (val === undefined) { why.push(`capture ${name}: ${show(spec)} not in the response`); break; }
      if (re) { const m = new RegExp(re).exec(String(val)); if (!m || m[1] === undefined) { why.push(`capture ${name}: /${re}/ does not match`); break; } val = m[1]; }
      SC.vars[name] = val;
    }
  }
  if (why.length) why.push(`exchange: ${method} ${url} -> ${r.status} ${r.text.slice(0, 400)}`);
  return why.join("\n");
}

/* Runs the steps up to and including the next narrated one ("say"), as `cmkharness scenario
 * run --step` does between two presses of Enter. */
async function scenarioNext() {
  const sc = SC.cur;
  if (!sc || SC.running || SC.done) return;
  SC.running = true; renderScenario();
  try {
    while (SC.idx < sc.steps.length) {
      const step = sc.steps[SC.idx++];
      let why;
      try { why = await runStep(sc, step); } catch (e) { why = e.message; }
      if (why) {
        SC.log.push({ cls: "fail", say: step.say || step.name, why });
        SC.failed = SC.done = true;
        break;
      }
      if (step.say) { SC.log.push({ cls: "ok", say: step.say, obs: step.observe || "" }); break; }
    }
    if (SC.idx >= sc.steps.length && !SC.failed) { SC.done = true; SC.log.push({ cls: "ok", say: `Scenario '${sc.name}' passed.` }); }
  } finally {
    SC.running = false;
  }
  renderScenario();
  await update(true);
}

function nextSay() {
  const sc = SC.cur;
  if (!sc) return "";
  for (let i = SC.idx; i < sc.steps.length; i++) if (sc.steps[i].say) return sc.steps[i].say;
  return "";
}

function renderScenario() {
  const sel = SC.cur ? SC.cur.name : "";
  const narrated = SC.cur ? SC.cur.steps.filter((s) => s.say).length : 0;
  const doneN = SC.log.filter((l) => l.cls === "ok" && l.obs !== undefined).length;
  $("scenario").innerHTML = `
    <label>Scenario <select id="scen-select">${SC.list.map((s) => `<option value="${esc(s.name)}" ${s.name === sel ? "selected" : ""}>${esc(s.name)}: ${esc(s.title)}</option>`).join("")}</select></label>
    <button id="scen-start">Start</button>
    <button id="scen-next" ${!SC.cur || SC.done || SC.running ? "disabled" : ""}>Next step &#9654;</button>
    <span id="scen-state" role="status">${SC.running ? "running&hellip;" : SC.cur ? (SC.failed ? `${ICON.no} FAILED` : SC.done ? `${ICON.ok} done` : `step ${doneN + 1} of ${narrated}`) : ""}</span>
    ${SC.cur ? `<p class="small">${esc(SC.cur.summary || "")}</p>` : ""}
    ${SC.cur && !SC.done ? `<div class="scen-say" id="scen-say">Next: ${esc(nextSay())}</div>` : ""}
    <ol class="scen-log" id="scen-log">${SC.log.map((l) => `<li class="${l.cls}">${esc(l.say)}${l.obs ? `<br><span class="obs">&rarr; ${esc(l.obs)}</span>` : ""}${l.why ? `<div class="why">${esc(l.why)}</div>` : ""}</li>`).join("")}</ol>`;
  const log = $("scen-log");
  log.scrollTop = log.scrollHeight;
  $("scen-start").onclick = () => {
    SC.cur = SC.list.find((s) => s.name === $("scen-select").value);
    Object.assign(SC, { idx: 0, log: [], done: false, failed: false, vars: scenarioVars(), tokens: {} });
    renderScenario();
  };
  $("scen-next").onclick = scenarioNext;
}

/* ---------------------------------------------------------------- the loop */

/* One update at a time: the loop and the controls share the audit cursor. */
let chain = Promise.resolve();
function update(force) {
  chain = chain.then(() => doUpdate(force));
  return chain;
}
async function doUpdate(force) {
  try {
    const changed = await pollAudit();
    if (force || changed || Date.now() - S.lastFull > 5000) {
      await refreshAll();
      renderAll();
    } else if (changed) renderAudit();
    $("live").textContent = "live";
    $("live").classList.remove("stale");
  } catch (e) {
    $("live").textContent = "not updating: " + e.message;
    $("live").classList.add("stale");
  }
}

async function loop() {
  await update(false);
  setTimeout(loop, 1000);
}

async function start() {
  try { if (localStorage.getItem("cmkemu-large")) { document.body.classList.add("large"); $("large").setAttribute("aria-pressed", "true"); } } catch (e) { /* ignore */ }
  S.config = (await ok("GET", "/_emulator/ui/api/config")).json;
  SC.list = (await ok("GET", "/_emulator/ui/scenarios.json")).json;
  renderScenario();
  if (S.config.authMode === "strict") {
    $("signin").hidden = false;
    $("si-client").value = (S.config.admin && S.config.admin.clientId) || "";
    await new Promise((resolve) => {
      $("signin-form").onsubmit = async (ev) => {
        ev.preventDefault();
        S.secret = { clientId: $("si-client").value.trim(), secret: $("si-secret").value };
        S.tokens = {};
        try { await adminToken("arm"); $("signin").hidden = true; resolve(); } catch (e) { $("si-error").textContent = e.message; }
      };
    });
  }
  setInterval(tickCountdowns, 1000);
  loop();
}

start().catch((e) => message("The dashboard could not start: " + e.message));

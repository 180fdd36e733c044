#!/usr/bin/env bash
# bench_smoke (ctest): `cmkharness bench` runs a short load against a fresh emulator and prints
# sane output. Shape and sanity only (ops > 0, ordered percentiles, no errors, a ceiling and a
# ratio); never timing thresholds: this is a benchmark run, not a timed test.
# Needs CMKEMU_BIN and CMKHARNESS_BIN (set by tests/CMakeLists.txt) and node.
set -euo pipefail

: "${CMKEMU_BIN:?CMKEMU_BIN must point at the cmkemu binary}"
: "${CMKHARNESS_BIN:?CMKHARNESS_BIN must point at the cmkharness binary}"

# A fresh emulator on a free port (harness/with-emulator.sh runs this script again inside it).
if [[ -z "${CMKH_URL:-}" ]]; then
    exec "$(dirname "$0")/with-emulator.sh" "$CMKEMU_BIN" "$0" "$@"
fi
url="$CMKH_URL"
ca="$CMKH_CA"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/bench-smoke.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

run() { # NAME ARGS...: runs the bench, keeps its JSON in $tmp/NAME.json
    local name=$1
    shift
    echo "bench_smoke: cmkharness bench $*"
    if ! "$CMKHARNESS_BIN" bench --url "$url" --ca "$ca" --json "$@" >"$tmp/$name.json" \
        2>"$tmp/$name.err"; then
        echo "bench_smoke: $name failed:" >&2
        cat "$tmp/$name.err" "$tmp/$name.json" >&2
        exit 1
    fi
    cat "$tmp/$name.json"
}

run unwrap --op unwrap --concurrency 4 --duration 2 --ceiling
run get --op get --concurrency 2 --duration 2 --versus health
run rread --op record-read --concurrency 2 --duration 1
run rwrite --op record-write --concurrency 2 --duration 1
run starve --op get --concurrency 2 --duration 1 --background unwrap --background-concurrency 2
run import --op import --key cmkbench-smoke --concurrency 2 --count 30 --duration 60
run last --op versions-last --key cmkbench-smoke --concurrency 1 --duration 1
run curl --op get --client curl --concurrency 2 --duration 1
"$CMKHARNESS_BIN" bench-crypto --size 4096 --duration 0.3 --json >"$tmp/crypto.json"
cat "$tmp/crypto.json"

# Human output too: the result block names the operation and the ratio.
"$CMKHARNESS_BIN" bench --url "$url" --ca "$ca" --op wrap --concurrency 2 --duration 1 \
    >"$tmp/wrap.txt" 2>"$tmp/wrap.err" || { cat "$tmp/wrap.err" "$tmp/wrap.txt" >&2; exit 1; }
cat "$tmp/wrap.txt"
grep -q '^wrap RSA-OAEP-256 .* ok, 0 errors, .* ops/s' "$tmp/wrap.txt"
grep -q 'latency  p50 .* p99.9 ' "$tmp/wrap.txt"

node - "$tmp/unwrap.json" "$tmp/get.json" "$tmp" <<'EOF'
const fs = require('fs');
const fail = (m) => { console.error('bench_smoke: ' + m); process.exit(1); };
const load = (f) => { try { return JSON.parse(fs.readFileSync(f, 'utf8')); } catch (e) { fail(f + ': not JSON: ' + e.message); } };
const num = (v) => typeof v === 'number' && Number.isFinite(v);
function common(j, op, conc) {
  if (j.op !== op) fail(`op is ${j.op}, want ${op}`);
  if (j.concurrency !== conc) fail(`${op}: concurrency ${j.concurrency}`);
  if (!(num(j.ops) && j.ops > 0)) fail(`${op}: no operations`);
  if (j.errors !== 0) fail(`${op}: ${j.errors} errors, first: ${JSON.stringify(j.first_error)}`);
  if (!(num(j.ops_per_s) && j.ops_per_s > 0)) fail(`${op}: ops_per_s ${j.ops_per_s}`);
  const l = j.latency_us || {};
  for (const k of ['min', 'p50', 'p90', 'p99', 'p999', 'max'])
    if (!num(l[k])) fail(`${op}: latency_us.${k} missing`);
  if (!(l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max))
    fail(`${op}: percentiles out of order: ${JSON.stringify(l)}`);
  if (!(l.p50 > 0)) fail(`${op}: p50 is 0`);
  if (j.first_error !== null) fail(`${op}: first_error set`);
  if (!(j.client && num(j.client.cores))) fail(`${op}: client CPU missing`);
}
const u = load(process.argv[2]);
common(u, 'unwrap', 4);
if (u.alg !== 'RSA-OAEP-256') fail('unwrap: alg ' + u.alg);
if (!u.ceiling || u.ceiling.kind !== 'pkcs11') fail('unwrap: no pkcs11 ceiling');
if (!(num(u.ceiling.ops_per_s) && u.ceiling.ops_per_s > 0)) fail('unwrap: ceiling ops_per_s');
if (u.ceiling.threads !== 4) fail('unwrap: ceiling threads ' + u.ceiling.threads);
if (u.ceiling.errors !== 0) fail('unwrap: ceiling errors');
if (!(num(u.ratio) && u.ratio > 0)) fail('unwrap: ratio ' + u.ratio);
const g = load(process.argv[3]);
common(g, 'get', 2);
if (g.client.engine !== 'loop') fail('get: client engine ' + g.client.engine);
const cu = load(process.argv[4] + '/curl.json');
common(cu, 'get', 2);
if (cu.client.engine !== 'curl') fail('curl: client engine ' + cu.client.engine);
if (g.ceiling !== null || g.ratio !== null) fail('get: unexpected ceiling');
if (!g.reference || g.reference.op !== 'health' || !(g.reference.ops > 0) || g.reference.errors !== 0)
  fail('get: reference health run missing or failed: ' + JSON.stringify(g.reference));
if (!(num(g.reference_ratio) && g.reference_ratio > 0)) fail('get: reference_ratio');
const dir = process.argv[4];
common(load(dir + '/rread.json'), 'record-read', 2);
common(load(dir + '/rwrite.json'), 'record-write', 2);
const s = load(dir + '/starve.json');
common(s, 'get', 2);
if (!s.idle || !(s.idle.ops > 0) || s.idle.errors !== 0) fail('starve: no idle phase');
if (!s.background || s.background.op !== 'unwrap' || !(s.background.ops > 0) || s.background.errors !== 0)
  fail('starve: background unwrap did not run: ' + JSON.stringify(s.background));
if (!(num(s.idle_ratio) && s.idle_ratio > 0)) fail('starve: idle_ratio');
const imp = load(dir + '/import.json');
common(imp, 'import', 2);
if (imp.ops !== 30) fail('import: --count 30 made ' + imp.ops);
/* 30 versions: two pages of 25, the last one holds 5 */
common(load(dir + '/last.json'), 'versions-last', 1);
const c = load(dir + '/crypto.json');
for (const k of ['seal', 'open', 'evp'])
  if (!(c[k] && num(c[k].ops_per_s) && c[k].ops_per_s > 0)) fail('bench-crypto: ' + k);
if (!(num(c.seal_ratio) && c.seal_ratio > 0)) fail('bench-crypto: seal_ratio');
console.log('bench_smoke: ok');
EOF

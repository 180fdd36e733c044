#!/usr/bin/env bash
# `make bench`: starts a fresh emulator (temporary data dir, demo world) and runs a short table
# of `cmkharness bench` targets, each beside its ceiling or reference measured in the same run:
#   operation | emulator ops/s | ceiling/reference ops/s | ratio | p50 | p99
# Environment: BUILD (build dir, default build), BENCH_SECONDS (per row, default 3),
# BENCH_CONCURRENCY (default 4), BENCH_JSON_DIR (keep each row's JSON there).
# Rows are the ROWS table below: "label|reference name|cmkharness bench arguments".
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
[[ "$build" = /* ]] || build="$root/$build"
emu=${CMKEMU_BIN:-$build/cmkemu}
harness=${CMKHARNESS_BIN:-$build/cmkharness}
secs=${BENCH_SECONDS:-3}
conc=${BENCH_CONCURRENCY:-4}

ROWS=(
    "unwrap RSA-OAEP-256|C_Decrypt X_509+OAEP|--op unwrap --alg RSA-OAEP-256 --ceiling"
    "unwrap RSA-OAEP|C_Decrypt OAEP-SHA1|--op unwrap --alg RSA-OAEP --ceiling"
    "wrap RSA-OAEP-256|GET health|--op wrap --versus health"
    "get key|GET health|--op get --versus health"
    "health|-|--op health"
    "create RSA-2048|C_GenerateKeyPair|--op create --ceiling"
)

for b in "$emu" "$harness"; do
    [[ -x "$b" ]] || { echo "bench: $b is missing (run make build)" >&2; exit 1; }
done
command -v node >/dev/null || { echo "bench: node is needed to read the JSON results" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cmkemu-bench.XXXXXX")
emu_pid=
cleanup() {
    if [[ -n "$emu_pid" ]]; then
        kill "$emu_pid" 2>/dev/null || true
        wait "$emu_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

"$emu" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --log-level warn \
    >"$tmp/serve.out" 2>"$tmp/serve.err" &
emu_pid=$!
port=
for _ in $(seq 1 300); do
    port=$(sed -n 's|.*serving https://localhost:\([0-9][0-9]*\)/.*|\1|p' "$tmp/serve.out" | head -n1)
    [[ -n "$port" ]] && break
    kill -0 "$emu_pid" 2>/dev/null || { cat "$tmp/serve.err" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$port" ]] || { echo "bench: cmkemu did not print its URL" >&2; exit 1; }
url="https://localhost:$port"

echo "cmkemu bench: $url, $conc connections/threads, ${secs} s per measurement, $(nproc) cores"
echo "(ceilings are raw PKCS#11 on a throw-away SoftHSM token with the same thread count;"
echo " references are another emulator operation measured in the same run)"
echo
printf '%-22s | %14s | %-22s %12s | %6s | %9s | %9s | %s\n' operation "emulator ops/s" \
    "ceiling/reference" "ops/s" ratio p50 p99 "client CPU"
printf -- '-%.0s' $(seq 1 118)
echo
failed=0
i=0
for row in "${ROWS[@]}"; do
    IFS='|' read -r label ref args <<<"$row"
    i=$((i + 1))
    out="$tmp/row$i.json"
    # shellcheck disable=SC2086 # args is a word list on purpose
    if ! "$harness" bench --url "$url" --ca "$tmp/data/tls/cert.pem" --concurrency "$conc" \
        --duration "$secs" --json $args >"$out" 2>"$tmp/row$i.err"; then
        failed=1
    fi
    if [[ -n "${BENCH_JSON_DIR:-}" ]]; then
        mkdir -p "$BENCH_JSON_DIR"
        cp "$out" "$BENCH_JSON_DIR/row$i.json" 2>/dev/null || true
    fi
    node - "$out" "$label" "$ref" "$tmp/row$i.err" <<'EOF' || failed=1
const fs = require('fs');
const [file, label, ref, errf] = process.argv.slice(2);
let j;
try { j = JSON.parse(fs.readFileSync(file, 'utf8')); } catch (e) {
  console.log(`${label.padEnd(22)} | failed: ${fs.readFileSync(errf, 'utf8').trim().split('\n').pop()}`);
  process.exit(1);
}
const ms = (us) => us < 1000 ? `${us} us` : `${(us / 1000).toFixed(us < 100000 ? 2 : 0)} ms`;
const r = (v) => v >= 100 ? v.toFixed(0) : v.toFixed(1);
let other = '', ratio = '';
if (j.ceiling) { other = r(j.ceiling.ops_per_s); ratio = j.ratio.toFixed(2); }
else if (j.reference) { other = r(j.reference.ops_per_s); ratio = j.reference_ratio.toFixed(2); }
const errs = j.errors ? `  (${j.errors} errors)` : '';
console.log(`${label.padEnd(22)} | ${r(j.ops_per_s).padStart(14)} | ${ref.padEnd(22)} ${other.padStart(12)} | ` +
  `${ratio.padStart(6)} | ${ms(j.latency_us.p50).padStart(9)} | ${ms(j.latency_us.p99).padStart(9)} | ` +
  `${j.client.cores.toFixed(2)} cores${errs}`);
if (j.errors && j.first_error) console.log(`  first error: ${JSON.stringify(j.first_error)}`);
process.exit(j.errors ? 1 : 0);
EOF
done
echo
echo "ratio = emulator / ceiling (or / reference); client CPU = the load generator's own share"
exit $failed

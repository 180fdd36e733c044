#!/usr/bin/env bash
# `make bench`: starts a fresh emulator (temporary data dir, demo world) and runs the issue-7
# table of `cmkharness bench` targets, each beside its ceiling or reference measured in the
# same run (absolute numbers drift on shared machines; only same-run ratios mean anything):
#   operation | emulator ops/s | ceiling/reference ops/s | ratio | p50 | p99 | client CPU
# then the in-process encryption path against the openssl-speed loop, and a scale section
# (10,000 key versions in the vault: rates against a fresh key, first vs last list page,
# start-up time, RSS and open files after a restart on that data).
# Environment: BUILD (build dir, default build), BENCH_SECONDS (per measurement, default 3),
# BENCH_CONCURRENCY (default 16), BENCH_SCALE_VERSIONS (default 10000; 0 skips the scale
# section), BENCH_JSON_DIR (keep each row's JSON there). About three minutes in all.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
[[ "$build" = /* ]] || build="$root/$build"
emu=${CMKEMU_BIN:-$build/cmkemu}
harness=${CMKHARNESS_BIN:-$build/cmkharness}
secs=${BENCH_SECONDS:-3}
conc=${BENCH_CONCURRENCY:-16}
scale_n=${BENCH_SCALE_VERSIONS:-10000}

for b in "$emu" "$harness"; do
    [[ -x "$b" ]] || { echo "bench: $b is missing (run make build)" >&2; exit 1; }
done
command -v node >/dev/null || { echo "bench: node is needed to read the JSON results" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cmkemu-bench.XXXXXX")
emu_pid=
stop_emu() {
    if [[ -n "$emu_pid" ]]; then
        kill "$emu_pid" 2>/dev/null || true
        wait "$emu_pid" 2>/dev/null || true
        emu_pid=
    fi
}
cleanup() {
    stop_emu
    rm -rf "$tmp"
}
trap cleanup EXIT

# start_emu: starts cmkemu on $tmp/data, sets emu_pid, url and startup_s (exec to healthy)
start_emu() {
    : >"$tmp/serve.out"
    local t0 port=
    t0=$(date +%s.%N)
    "$emu" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --log-level warn \
        >"$tmp/serve.out" 2>"$tmp/serve.err" &
    emu_pid=$!
    for _ in $(seq 1 3000); do
        port=$(sed -n 's|.*serving https://localhost:\([0-9][0-9]*\)/.*|\1|p' "$tmp/serve.out" | head -n1)
        if [[ -n "$port" ]] && curl -sf --cacert "$tmp/data/tls/cert.pem" \
            "https://localhost:$port/_emulator/health" >/dev/null 2>&1; then
            break
        fi
        port=
        kill -0 "$emu_pid" 2>/dev/null || { cat "$tmp/serve.err" >&2; exit 1; }
        sleep 0.01
    done
    [[ -n "$port" ]] || { echo "bench: cmkemu did not become healthy" >&2; exit 1; }
    startup_s=$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.2f", a - b }')
    url="https://localhost:$port"
}

# store_counts: "COMMITS SYNCS" from the health endpoint (empty when unavailable)
store_counts() {
    curl -sf --cacert "$tmp/data/tls/cert.pem" "$url/_emulator/health" |
        node -e 'let d="";process.stdin.on("data",c=>d+=c).on("end",()=>{try{const s=JSON.parse(d).store;
          console.log(s.commits+" "+s.syncs)}catch(e){console.log("")}})' || true
}

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$emu_pid/status"; }
fds() { ls "/proc/$emu_pid/fd" | wc -l; }

failed=0
i=0
# bench NAME ARGS...: one cmkharness bench run into $tmp/NAME.json (exit status kept)
bench() {
    local name=$1
    shift
    # shellcheck disable=SC2068
    if ! "$harness" bench --url "$url" --ca "$tmp/data/tls/cert.pem" --json "$@" \
        >"$tmp/$name.json" 2>"$tmp/$name.err"; then
        failed=1
    fi
    if [[ -n "${BENCH_JSON_DIR:-}" ]]; then
        mkdir -p "$BENCH_JSON_DIR"
        cp "$tmp/$name.json" "$BENCH_JSON_DIR/$name.json" 2>/dev/null || true
    fi
}

# print LABEL REFLABEL FILE [MODE] [OTHERFILE]: one table row from a JSON result. MODE:
# ceiling | reference | idle (loaded vs idle, with p99) | versus (ratio against OTHERFILE)
print() {
    node - "$@" <<'JS' || failed=1
const fs = require('fs');
const [label, ref, file, mode, other] = process.argv.slice(2);
const load = (f) => JSON.parse(fs.readFileSync(f, 'utf8'));
let j;
try { j = load(file); } catch (e) {
  const err = fs.readFileSync(file.replace(/\.json$/, '.err'), 'utf8').trim().split('\n').pop();
  console.log(`${label.padEnd(28)} | failed: ${err}`);
  process.exit(1);
}
const ms = (us) => us < 1000 ? `${us} us` : `${(us / 1000).toFixed(us < 100000 ? 2 : 0)} ms`;
const r = (v) => v >= 100 ? v.toFixed(0) : v.toFixed(1);
let rate = j.ops_per_s, otherRate = '', ratio = '';
if (mode === 'ceiling' && j.ceiling) { otherRate = r(j.ceiling.ops_per_s); ratio = j.ratio.toFixed(2); }
else if (mode === 'reference' && j.reference) { otherRate = r(j.reference.ops_per_s); ratio = j.reference_ratio.toFixed(2); }
else if (mode === 'idle' && j.idle) { otherRate = r(j.idle.ops_per_s); ratio = j.idle_ratio.toFixed(2); }
else if (mode === 'versus') { const o = load(other); otherRate = r(o.ops_per_s); ratio = (j.ops_per_s / o.ops_per_s).toFixed(2); }
const errs = j.errors ? `  (${j.errors} errors)` : '';
console.log(`${label.padEnd(28)} | ${r(rate).padStart(9)} | ${ref.padEnd(26)} ${otherRate.padStart(9)} | ` +
  `${ratio.padStart(5)} | ${ms(j.latency_us.p50).padStart(9)} | ${ms(j.latency_us.p99).padStart(9)} | ` +
  `${j.client.cores.toFixed(2)}${errs}`);
if (j.first_error) console.log(`  first error: ${JSON.stringify(j.first_error)}`);
if (mode === 'idle' && j.background)
  console.log(`  (background: ${j.background.concurrency} connections of ${j.background.op} at ` +
    `${r(j.background.ops_per_s)}/s; idle p99 ${ms(j.idle.latency_us.p99)}, loaded p99 ${ms(j.latency_us.p99)})`);
process.exit(j.errors || (j.idle && j.idle.errors) || (j.background && j.background.errors) ? 1 : 0);
JS
}

header() {
    printf '%-28s | %9s | %-26s %9s | %5s | %9s | %9s | %s\n' operation "ops/s" \
        "ceiling/reference" "ops/s" ratio p50 p99 "client cores"
    printf -- '-%.0s' $(seq 1 124)
    echo
}

start_emu
echo "cmkemu bench: $url, $conc connections (one epoll client thread, OpenSSL), ${secs} s per measurement"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)," \
    "$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); load generator on the same machine"
echo "(ceilings: raw PKCS#11 on a throw-away SoftHSM token with the same thread count;"
echo " references: another emulator operation measured in the same run)"
echo
header
c=(--concurrency "$conc" --duration "$secs")
bench unwrap256 "${c[@]}" --op unwrap --alg RSA-OAEP-256 --ceiling
print "unwrap RSA-OAEP-256" "C_Decrypt X_509+OAEP" "$tmp/unwrap256.json" ceiling
bench unwrap1 "${c[@]}" --op unwrap --alg RSA-OAEP --ceiling
print "unwrap RSA-OAEP" "C_Decrypt OAEP-SHA1" "$tmp/unwrap1.json" ceiling
bench wrap "${c[@]}" --op wrap --versus health
print "wrap RSA-OAEP-256" "GET health" "$tmp/wrap.json" reference
bench get "${c[@]}" --op get --versus health
print "get key" "GET health" "$tmp/get.json" reference
bench starve "${c[@]}" --op get --background unwrap --background-concurrency "$conc"
print "get key while unwrap saturates" "get key idle" "$tmp/starve.json" idle
bench create "${c[@]}" --op create --ceiling
print "create RSA-2048" "C_GenerateKeyPair" "$tmp/create.json" ceiling
bench rread "${c[@]}" --op record-read --versus health
print "record read 1 KiB" "GET health" "$tmp/rread.json" reference
store0=$(store_counts)
bench rwrite "${c[@]}" --op record-write --versus health
store1=$(store_counts)
print "record write 1 KiB" "GET health" "$tmp/rwrite.json" reference
read -r c0 s0 <<<"$store0"
read -r c1 s1 <<<"$store1"
if [[ -n "$c0" && -n "$c1" && "$s1" -gt "$s0" ]]; then
    # record writes are batched: many writes per commit, one commit per fdatasync
    w=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).ops)' "$tmp/rwrite.json" 2>/dev/null || echo 0)
    awk -v w="$w" -v c=$((c1 - c0)) -v s=$((s1 - s0)) 'BEGIN { printf "  (durable: %d writes in %d commits and %d fdatasyncs during that row, %.1f writes per sync)\n", w, c, s, w / s }'
fi
echo

echo "in-process record encryption (AES-256-GCM, 16 KiB, 1 thread):"
if "$harness" bench-crypto --size 16384 --threads 1 --duration "$secs" --json >"$tmp/crypto.json"; then
    speed_kbs=$(openssl speed -evp aes-256-gcm -bytes 16384 -seconds "$secs" 2>/dev/null |
        awk '/^AES-256-GCM/ { v = $NF; sub(/k$/, "", v); print v }')
    node - "$tmp/crypto.json" "${speed_kbs:-0}" <<'JS' || failed=1
const j = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
const speed = Number(process.argv[3]) * 1000 / 1e6; /* openssl speed prints 1000s of bytes/s */
const row = (n, v) => console.log(`  ${n.padEnd(34)} ${v.mb_per_s.toFixed(0).padStart(6)} MB/s`);
row('pp_seal (record write path)', j.seal);
row('pp_open (record read path)', j.open);
row('EVP_EncryptUpdate loop (same run)', j.evp);
if (speed > 0) console.log(`  ${'openssl speed -evp aes-256-gcm'.padEnd(34)} ${speed.toFixed(0).padStart(6)} MB/s`);
console.log(`  ratio seal / EVP loop = ${j.seal_ratio.toFixed(2)}, open / EVP loop = ${j.open_ratio.toFixed(2)}` +
  (speed > 0 ? `; seal / openssl speed = ${(j.seal.mb_per_s / speed).toFixed(2)}` : ''));
JS
else
    failed=1
fi
echo

if [[ "$scale_n" -gt 0 ]]; then
    rss0=$(rss_mb)
    echo "scale: $scale_n versions of one key in the default vault (imported with $conc connections)"
    bench populate --concurrency "$conc" --duration 900 --op import --key cmkbench-scale \
        --count "$scale_n"
    node -e "const j=JSON.parse(require('fs').readFileSync('$tmp/populate.json','utf8'));
      console.log('  import: ' + j.ops + ' versions at ' + j.ops_per_s.toFixed(0) + '/s, ' + j.errors + ' errors');
      process.exit(j.errors ? 1 : 0)" || failed=1
    header
    for op in get wrap unwrap; do
        bench "fresh-$op" "${c[@]}" --op "$op"
        bench "scale-$op" "${c[@]}" --op "$op" --key cmkbench-scale
        print "$op, key with $scale_n versions" "$op, fresh key" "$tmp/scale-$op.json" versus \
            "$tmp/fresh-$op.json"
    done
    bench first "${c[@]}" --op versions --key cmkbench-scale
    bench last "${c[@]}" --op versions-last --key cmkbench-scale
    print "versions: last page of 25" "first page" "$tmp/last.json" versus "$tmp/first.json"
    rss1=$(rss_mb)
    fds1=$(fds)
    stop_emu
    start_emu
    echo
    echo "  start-up to healthy on that data: ${startup_s} s (exec to the first 200 from /_emulator/health)"
    rss2=$(rss_mb)
    bench after "${c[@]}" --op get --key cmkbench-scale
    rss3=$(rss_mb)
    fds3=$(fds)
    echo "  RSS: ${rss0} MB fresh demo world; ${rss1} MB after the load above; ${rss2} MB after" \
        "the restart, ${rss3} MB after a get run; open files ${fds1} before, ${fds3} after the restart"
fi
echo
echo "ratio = emulator / ceiling or reference; client cores = the load generator's own CPU"
exit $failed

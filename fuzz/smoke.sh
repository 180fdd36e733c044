#!/usr/bin/env bash
# ctest fuzz_smoke: builds the libFuzzer targets with clang in a separate tree (default
# build/fuzz-build; first argument to override) and runs each one over its seed corpus
# (fuzz/corpus/TARGET: every seed must pass) and then mutates for a few seconds
# ($CMKEMU_FUZZ_SMOKE_SECONDS, default 12). Any crash, leak, sanitizer report or timeout fails.
# Exit 77 (ctest: skipped) only when clang or its libFuzzer runtime is not installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build=${1:-$root/build/fuzz-build}
secs=${CMKEMU_FUZZ_SMOKE_SECONDS:-12}
cc=${CMKEMU_FUZZ_CC:-clang}

probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if ! command -v "$cc" >/dev/null 2>&1; then
    echo "fuzz_smoke: SKIP: $cc is not installed (Debian: clang, libclang-rt-14-dev)"
    exit 77
fi
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' \
    >"$probe/p.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" 2>"$probe/err"; then
    echo "fuzz_smoke: SKIP: $cc cannot link libFuzzer (Debian: libclang-rt-14-dev):"
    cat "$probe/err"
    exit 77
fi

echo "fuzz_smoke: building the fuzz targets in $build"
cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER="$cc" -DCMKEMU_FUZZ=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$probe/cmake.log" 2>&1 || { cat "$probe/cmake.log"; exit 1; }
cmake --build "$build" -j2 --target fuzz_all >"$probe/build.log" 2>&1 || { tail -50 "$probe/build.log"; exit 1; }

export CMKEMU_FUZZ_TMP="$build/fuzz-tmp"
mkdir -p "$CMKEMU_FUZZ_TMP"
fail=0
for t in fuzz_request fuzz_json_bodies fuzz_b64url fuzz_jwt fuzz_world fuzz_template fuzz_jflat; do
    work="$probe/$t"
    mkdir -p "$work/corpus"
    dict=()
    [ -f "$here/$t.dict" ] && dict=(-dict="$here/$t.dict")
    start=$(date +%s)
    # the seeds alone, then a short mutation run (new units go to the scratch corpus)
    if "$build/fuzz/$t" -runs=0 "$here/corpus/$t" -artifact_prefix="$work/" \
           >"$work/seeds.log" 2>&1 &&
       "$build/fuzz/$t" "$work/corpus" "$here/corpus/$t" -max_total_time="$secs" -timeout=25 \
           -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$work/" "${dict[@]}" \
           >"$work/run.log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/run.log")
        cov=$(grep -o 'cov: [0-9]*' "$work/run.log" | tail -1 || true)
        echo "fuzz_smoke: $t ok ($(($(date +%s) - start)) s, $execs executions, $cov)"
    else
        fail=1
        echo "fuzz_smoke: $t FAILED"
        for l in "$work/seeds.log" "$work/run.log"; do
            [ -f "$l" ] && grep -v '^#' "$l" | tail -60
        done
        for a in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
            [ -f "$a" ] && { echo "--- $a (base64)"; base64 -w0 "$a"; echo; }
        done
    fi
done
rm -rf "$CMKEMU_FUZZ_TMP"
exit $fail

#!/usr/bin/env bash
# Long run of one fuzz target: fuzz/run.sh TARGET SECONDS [extra libFuzzer flags]
# Builds the clang fuzz tree if needed (build/fuzz-build, or $CMKEMU_FUZZ_BUILD), then runs
# TARGET for SECONDS under `nice` with a working corpus outside the repository
# ($CMKEMU_FUZZ_WORK, default /tmp/cmkemu-fuzz-work/TARGET) seeded from fuzz/corpus/TARGET.
# Findings (crash-*, leak-*, timeout-*, oom-*) land in the working directory's artifacts/;
# the log is artifacts/TARGET.log. Exit status: libFuzzer's (0 = nothing found).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
target=${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags]}
secs=${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags]}
shift 2
build=${CMKEMU_FUZZ_BUILD:-$root/build/fuzz-build}
work=${CMKEMU_FUZZ_WORK:-/tmp/cmkemu-fuzz-work}/$target
if [ ! -x "$build/fuzz/$target" ]; then
    CC=${CC:-clang} cmake -S "$root" -B "$build" -DCMKEMU_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j2 --target "$target" >/dev/null
fi
mkdir -p "$work/corpus" "$work/artifacts"
dict=()
[ -f "$here/$target.dict" ] && dict=(-dict="$here/$target.dict")
cd "$work/artifacts"
set +e +o pipefail
nice -n "${CMKEMU_FUZZ_NICE:-10}" "$build/fuzz/$target" "$work/corpus" "$here/corpus/$target" \
    -max_total_time="$secs" -timeout=25 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "${dict[@]}" "$@" 2>&1 | tee "$work/artifacts/$target.log" | \
    grep -E '^#[0-9]+ +(pulse|DONE)|ERROR|SUMMARY|stat::'
exit "${PIPESTATUS[0]}"

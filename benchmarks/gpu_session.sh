#!/usr/bin/env bash
# Everything this project checks and times on one lent GPU, in one run of under 10 minutes:
# the CUDA parity tests, the 7B throughput tables, and `longpo train` on CUDA (plain and FSDP2).
#
#   bash benchmarks/gpu_session.sh [OUT_DIR]         # logs and tables land in OUT_DIR (default gpu-out)
#   bash benchmarks/gpu_session.sh OUT_DIR speed     # issue 17 instead: the speed options' CUDA tests and the
#                                                    # comparison table (ours x options, plain, TRL), < 10 min
#   bash benchmarks/gpu_session.sh OUT_DIR longest   # issue 25 instead: the tiled MLP's CUDA tests, then the
#                                                    # longest length of a 7B shape with and without each
#                                                    # option (peak GiB, tokens/s; OOM marks the ceiling)
#
# The speed mode wants pure-Python wheels for the image's Python in .whl/ as well:
#   pip download --no-deps -d .whl liger-kernel==0.8.5 trl==1.16.0 datasets dill multiprocess xxhash
# The GPU image has torch and transformers but not `datasets`: wheels in .whl/ are installed first
# when present (pip download ... datasets dill multiprocess, for the image's Python).
# Each part has its own time limit, so one slow part cannot starve the others.
set -u
out=${1:-${OUT:-gpu-out}}
mode=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'accelerate', accelerate.__version__)"

if [ "$mode" = speed ]; then
  # Rows that fit 64K on one H200 by the memory model (benchmarks/memory_model.py), then the plain path and
  # TRL with Liger to 32K, and the selective checkpointing rows at 16K (the only length they fit).
  part speed_tests 120 python3 -m pytest -q -rs -s -p no:cacheprovider tests/train/test_speed.py -k cuda
  part speed_64k 250 python3 benchmarks/gpu_throughput.py --steps 1 --lengths 16384 32768 65536 \
    --rows ours compile liger compile+liger ckpt=full+offload compile+liger+offload trl
  part speed_32k 100 python3 benchmarks/gpu_throughput.py --steps 1 --lengths 16384 32768 --rows plain trl+liger
  part speed_16k 90 python3 benchmarks/gpu_throughput.py --steps 1 --lengths 16384 \
    --rows ckpt=mlp ckpt=every_2 compile+liger+mlp compile+liger+every_2
  echo "=== done $(date +%T)"
  exit 0
fi

if [ "$mode" = longest ]; then
  # bf16 weights and gradients, no optimizer state (as the 2026-11-30 H200 table); one pair per row. By the
  # memory model (benchmarks/memory_model.py --gpu-gib 79) on an H100: full fits 64K, full+tiled 128K,
  # full+tiled+offload 256K. One step per length: the 256K steps take minutes.
  part longest_tests 120 python3 -m pytest -q -rs -s -p no:cacheprovider tests/train/test_speed.py -k "cuda and tiled"
  part longest_full 150 python3 benchmarks/gpu_throughput.py --steps 1 --lengths 65536 131072 --rows ckpt=full ckpt=full+tiled
  part longest_offload 300 python3 benchmarks/gpu_throughput.py --steps 1 --lengths 131072 196608 262144 \
    --rows ckpt=full+offload ckpt=full+tiled+offload
  echo "=== done $(date +%T)"
  exit 0
fi

part tests 90 python3 -m pytest -q -rs -s -p no:cacheprovider tests/train/test_gpu.py
part mistral_sdpa 170 python3 benchmarks/gpu_throughput.py --arch mistral --backend sdpa --steps 2 --rows ours plain --compare-plain 32768
part mistral_flex 120 python3 benchmarks/gpu_throughput.py --arch mistral --backend flex --steps 2 --rows ours
part train_cuda 60 python3 -m longpo.cli train --config tiny output_dir=/tmp/tiny-cuda mixed_precision=bf16
part train_fsdp2 50 python3 -m accelerate.commands.launch --config_file longpo/recipes/accelerate/fsdp2.yaml --num_processes 1 \
  -m longpo.cli train --config tiny output_dir=/tmp/tiny-fsdp2 num_epochs=1
part qwen2_sdpa 80 python3 benchmarks/gpu_throughput.py --arch qwen2 --backend sdpa --steps 1 --rows ours
tail -n 3 /tmp/tiny-cuda/metrics.jsonl /tmp/tiny-fsdp2/metrics.jsonl 2>/dev/null | tee "$out/train_metrics.log"
echo "=== done $(date +%T)"

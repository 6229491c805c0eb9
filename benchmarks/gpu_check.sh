#!/usr/bin/env bash
# The CUDA / NVML / TensorRT paths on a real NVIDIA GPU, in one call (results recorded in benchmarks/README.md):
# versions, the gpu/trt-marked tests, a bf16 training run on the GPU, eval + bench on cuda (NVML power and
# energy), and training throughput of the full-size preset (fp32 vs bf16 autocast).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # from the repository root, with graft-edge importable
#
# Where the package is not installed, the repository root is put on PYTHONPATH (and wheels in .whl/, e.g.
# torch-pruning, are unpacked to a temp folder first).
set -uo pipefail
OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
if ! (cd / && python3 -c "import graft_edge, torch_pruning") 2>/dev/null; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/graft-site .whl/*.whl
    export PYTHONPATH="/tmp/graft-site:${PYTHONPATH:-}"
  fi
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
G="python3 -m graft_edge"
W=$(mktemp -d)

echo "== versions"
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv
python3 - <<'EOF'
import importlib.util, torch, onnxruntime as ort
print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0))
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("tensorrt importable:", importlib.util.find_spec("tensorrt") is not None)
EOF

echo "== gpu / trt tests"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_export_trt.py tests/test_profile.py 2>&1 \
  | tee "$OUT_DIR/pytest_gpu.log" | tail -n 15

echo "== CLI on cuda: synth -> train (bf16) -> eval -> export -> bench"
$G synth --out "$W/syn" --ids 32 --cameras 4
$G train --preset synthetic --data "$W/syn" --out "$W/run" --set train.amp=true --max-steps 120 \
  --checkpoint-steps 0 2>&1 | tail -n 4
$G eval "$W/run/best.pt" --data "$W/syn" --device cuda --json "$OUT_DIR/eval_cuda.json"
$G export "$W/run/best.pt" --out "$W/exp" --int8 dynamic 2>&1 | tail -n 8
$G export "$W/run/best.pt" --out "$W/exp-trt" --trt 2>&1 | tail -n 3
$G init rgbnt100 --out "$W/rgbnt100.pt"
$G bench "$W/run/best.pt" "$W/exp/model.onnx" "$W/rgbnt100.pt" --device cuda --batch 1,32 --warmup 5 --iters 50 \
  --data "$W/syn" --json "$OUT_DIR/bench_cuda.json" 2>&1 | tail -n 20

echo "== training throughput on the GPU"
python3 benchmarks/train_throughput.py --device cuda --steps 20 --full-steps 10 --json "$OUT_DIR/train_cuda.json"

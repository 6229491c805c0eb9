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

echo "== onnxruntime-gpu (the gpu extra) for the CUDA provider"
if ! python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  python3 -m pip install -q "onnxruntime-gpu[cuda,cudnn]>=1.20" && \
    python3 -m pip install -q --force-reinstall --no-deps onnxruntime-gpu
fi
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_runtime.py 2>&1 | tee "$OUT_DIR/pytest_cuda_runtime.log" | tail -n 6

echo "== DeiT-B x 3 dense / 60M / 46M: PyTorch fp32/fp16/bf16 and ORT CUDA FP32/FP16, batch 1 and 32"
$G init rgbnt100 --no-pretrained --out "$W/dense.pt" >/dev/null
for T in 60M 46M; do $G prune "$W/dense.pt" --target $T --out "$W/s$T.pt" 2>&1 | tail -n 1; done
for M in dense s60M s46M; do
  $G export "$W/$M.pt" --out "$W/exp-$M" --fp16 --calib-data "$W/syn" 2>&1 | grep -E "^(ok|FAIL|error)" || true
done
PTS="$W/dense.pt $W/s60M.pt $W/s46M.pt"
ONNX="$W/exp-dense/model.onnx $W/exp-dense/model.fp16.onnx $W/exp-s60M/model.onnx $W/exp-s60M/model.fp16.onnx \
  $W/exp-s46M/model.onnx $W/exp-s46M/model.fp16.onnx"
for D in fp32 fp16 bf16; do
  $G bench $PTS --device cuda --dtype $D --batch 1,32 --warmup 10 --seconds 2 --json "$OUT_DIR/bench16_torch_$D.json" \
    2>&1 | tail -n 4
done
$G bench $ONNX --device cuda --batch 1,32 --warmup 10 --seconds 2 --json "$OUT_DIR/bench16_ort.json" 2>&1 | tail -n 8
python3 benchmarks/gpu_summary.py "$OUT_DIR"/bench16_*.json --markdown "$OUT_DIR/gpu_summary.md"

echo "== the trained synthetic model through the FP16 ONNX on CUDA vs the checkpoint"
$G export "$W/run/best.pt" --out "$W/exp-fp16" --fp16 --calib-data "$W/syn" 2>&1 | grep -E "^(ok|FAIL)" || true
$G eval "$W/run/best.pt" --data "$W/syn" --device cuda --json "$OUT_DIR/eval16_pt.json" | tail -n 2
$G eval "$W/exp-fp16/model.fp16.onnx" --data "$W/syn" --device cuda --json "$OUT_DIR/eval16_fp16.json" | tail -n 2
python3 - "$OUT_DIR" <<'PY'
import json, sys
d = sys.argv[1]
pt, fp = (json.load(open(f"{d}/eval16_{k}.json")) for k in ("pt", "fp16"))
get = lambda r: 100 * (r.get("mAP") if "mAP" in r else r["accuracy"]["mAP"])
print(f"mAP checkpoint {get(pt):.2f} vs FP16 ONNX on CUDA {get(fp):.2f}: diff {get(fp) - get(pt):+.2f} points")
PY

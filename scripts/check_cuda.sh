#!/usr/bin/env bash
# CUDA check in one command on a GPU machine: the CUDA tests (`pytest -m cuda`, which must run,
# not skip) and the decode speed of the shipped model on CUDA against CPU (tok/s, per-token
# latency), with CUDA fp32 tokens checked against CPU fp32. Prints PASS/FAIL; exits 1 on failure.
#
#   scripts/check_cuda.sh                     # onnxruntime-gpu already installed
#   ORT_GPU_WHEEL=path/onnxruntime_gpu-*.whl scripts/check_cuda.sh
#   ORT_GPU_PARTS=dir scripts/check_cuda.sh   # the wheel cut in parts (see --split)
#   scripts/check_cuda.sh --split WHEEL DIR [MIB]   # cut WHEEL into DIR/part-00.. of MIB (41) MiB
#
# onnxruntime-gpu 1.31.1 on PyPI is built for CUDA 13 and cuDNN 9 (it requires
# nvidia-cuda-runtime~=13.0, nvidia-cudnn-cu13~=9.0, nvidia-cufft~=12.0, nvidia-curand~=10.0
# as its [cuda,cudnn] extras) and weighs 256 MB. On a machine that has those nvidia-* wheels
# already (a CUDA 13 PyTorch brings them) it is installed with --no-deps into a folder put in
# front of PYTHONPATH, so it shadows a CPU-only onnxruntime without touching it, and
# onnxruntime.preload_dlls() loads the CUDA and cuDNN libraries from the nvidia-* packages.
# Where files reach the machine in transfers of limited size, cut the wheel with --split here
# and carry one part per call (a warm machine keeps them); see docs/PLATFORMS.md.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}

if [ "${1:-}" = --split ]; then
    shift
    [ $# -ge 2 ] || { echo "usage: check_cuda.sh --split WHEEL DIR [MIB]" >&2; exit 2; }
    mkdir -p "$2" && split -b "${3:-41}M" -d -a 2 "$1" "$2/part-" && ls -l "$2"
    sha256sum "$1" | cut -d' ' -f1 > "$2/sha256" && echo "wheel name: $(basename "$1")" && exit 0
    exit 1
fi

SITE=${ORT_GPU_SITE:-/tmp/lantern-ort-gpu}
if [ -n "${ORT_GPU_PARTS:-}" ]; then        # reassemble a wheel carried in parts
    name=${ORT_GPU_WHEEL_NAME:-onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl}
    cat "$ORT_GPU_PARTS"/part-* > "/tmp/$name" || exit 1
    if [ -f "$ORT_GPU_PARTS/sha256" ] && [ "$(sha256sum "/tmp/$name" | cut -d' ' -f1)" != "$(cat "$ORT_GPU_PARTS/sha256")" ]; then
        echo "FAIL: the reassembled wheel's sha256 differs: a part is missing or damaged" >&2; exit 1
    fi
    ORT_GPU_WHEEL=/tmp/$name
fi
if [ -n "${ORT_GPU_WHEEL:-}" ]; then
    "$PY" -m pip install -q --no-deps --no-index --no-compile --target "$SITE" "$ORT_GPU_WHEEL" || exit 1
    export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
# onnxruntime installed outside the nvidia-* packages' site-packages cannot find CUDA and cuDNN
# through its RPATH: preload them in every Python process (pytest's too) from a sitecustomize
STARTUP=/tmp/lantern-cuda-startup
mkdir -p "$STARTUP" && printf 'import onnxruntime\nif hasattr(onnxruntime, "preload_dlls"):\n    onnxruntime.preload_dlls()\n' > "$STARTUP/sitecustomize.py"
export PYTHONPATH=$STARTUP:$PYTHONPATH

cd "$REPO"
status=0
echo "=== GPU and onnxruntime"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
"$PY" - <<'EOF' || status=1
import numpy as np, onnxruntime as ort
print("onnxruntime", ort.__version__, "from", ort.__file__)
print("providers", ort.get_available_providers())
assert "CUDAExecutionProvider" in ort.get_available_providers(), "no CUDA execution provider"
# listed is not loaded: without its CUDA / cuDNN libraries ORT falls back to CPU with a warning
session = ort.InferenceSession("lantern_edge/default_model/embed.onnx",
                               providers=["CUDAExecutionProvider"])
assert session.get_providers()[0] == "CUDAExecutionProvider", f"CUDA did not load: {session.get_providers()}"
print("a session on CUDA: ok")
EOF
echo "=== pytest -m cuda"
out=$("$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests 2>&1); rc=$?
echo "$out" | tail -15
if [ $rc -ne 0 ] || ! echo "$out" | grep -q " passed" || echo "$out" | grep -q " skipped"; then
    echo "FAIL: the CUDA tests did not all run and pass"; status=1
fi
echo "=== decode speed, CUDA against CPU"
"$PY" scripts/cuda_bench.py --tokens "${CUDA_BENCH_TOKENS:-256}" --repeats "${CUDA_BENCH_REPEATS:-5}" || status=1
if [ $status -eq 0 ]; then echo "CUDA CHECK: PASS"; else echo "CUDA CHECK: FAIL"; fi
exit $status

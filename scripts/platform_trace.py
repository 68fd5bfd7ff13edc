"""Record and compare the shipped model's generation trace across platforms.

    python scripts/platform_trace.py record fp32 64 > x86_fp32.json
    python scripts/platform_trace.py compare x86_fp32.json arm_fp32.json

`record` generates with the shipped default model (runtime dependencies only: numpy,
onnxruntime, tokenizers) in three modes: the adaptive controller (adaptive=True), the fixed
path (adaptive=False) and seeded sampling, and prints one JSON object with every token's id, band,
iterations, MC samples, THINK/deepen decisions and probabilities, plus the machine and the
CPU features the OS reports (they pick ONNX Runtime's kernels).

`compare` prints one line per mode and exits 1 when an fp32 run differs from the reference in
any token or controller decision, or a probability moves by more than FP32_TOLERANCE: fp32
must be the same program on every CPU. INT8 is reported (first divergent token, largest
probability difference before it) but never fails: its integer GEMM kernels differ per CPU
feature set (VNNI, dot-product, i8mm), so a near-tie can break the other way.
"""

from __future__ import annotations

import json
import platform
import sys
import time

PROMPT = "def read_config(path):"
MODES = {"adaptive": {"adaptive": True}, "fixed": {"adaptive": False},
         "sampled": {"do_sample": True, "temperature": 0.8}}
DECISIONS = ("token_id", "band", "iterations", "deep_iterations", "mc_samples",
             "think_injected", "deepened")
SCORES = ("probability", "entropy", "u")
FP32_TOLERANCE = 1e-4            # |dprob|; measured differences are ~1e-6 (see docs/PLATFORMS.md)


def cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("features", "flags")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def record(precision: str, tokens: int) -> dict:
    import numpy
    import onnxruntime

    import lantern_edge

    began = time.perf_counter()
    runtime = lantern_edge.Runtime(precision=precision, intra_op_threads=1)
    loaded = time.perf_counter() - began
    modes = {}
    for mode, overrides in MODES.items():
        result = runtime.generate(PROMPT, max_new_tokens=tokens, seed=0, **overrides)
        modes[mode] = dict(text=result.text, trace=[
            {key: getattr(entry, key, None) for key in DECISIONS + SCORES}
            for entry in result.trace])
    return dict(machine=platform.machine(), python=platform.python_version(),
                numpy=numpy.__version__, onnxruntime=onnxruntime.__version__,
                lantern_edge=lantern_edge.__version__, precision=precision, tokens=tokens,
                cpu_features=cpu_features(), load_seconds=round(loaded, 2),
                seconds=round(time.perf_counter() - began, 2), modes=modes)


def compare(reference: dict, other: dict) -> bool:
    """Print one line per mode; True when the runs agree as the precision requires."""
    ok = True
    for mode, ref in reference["modes"].items():
        a, b = ref["trace"], other["modes"][mode]["trace"]
        differs = next((i for i, (x, y) in enumerate(zip(a, b))
                        if any(x[k] != y[k] for k in DECISIONS)), None)
        if differs is None and len(a) != len(b):
            differs = min(len(a), len(b))
        agreed = a[:differs] if differs is not None else a
        dprob = max((abs(x["probability"] - y["probability"]) for x, y in zip(agreed, b)
                     if x["probability"] is not None and y["probability"] is not None),
                    default=0.0)
        same = differs is None
        if reference["precision"] == "fp32" and (not same or dprob > FP32_TOLERANCE):
            ok = False
        where = "identical" if same else f"first difference at token {differs} of {len(a)}"
        print(f"{other['precision']:5s} {mode:9s} {where}; max |dprob| {dprob:.1e}"
              + (" before it" if not same else ""))
    return ok


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "record" and argv[1] in ("fp32", "int8") and argv[2].isdigit():
        print(json.dumps(record(argv[1], int(argv[2]))))
        return 0
    if len(argv) == 3 and argv[0] == "compare":
        with open(argv[1], encoding="utf-8") as f, open(argv[2], encoding="utf-8") as g:
            return 0 if compare(json.load(f), json.load(g)) else 1
    print("usage: platform_trace.py record fp32|int8 TOKENS | compare REFERENCE.json OTHER.json",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""One benchmark job in a process of its own: `python -m lantern_edge.benchmark.worker < job.json`.

A fresh process per configuration keeps peak RSS per configuration (peaks never accumulate
across rows) and keeps torch out of the ONNX rows: a job imports torch only when its engine
is one of the PyTorch ones. The job is a JSON object on stdin; the result is one JSON line on
stdout.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .memory import current_rss_mib, peak_rss_mib

logger = logging.getLogger(__name__)
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
TORCH_ENGINES = ("torch-full", "torch-kv")


class WorkerError(RuntimeError):
    """A worker process failed; the message carries the end of its stderr."""


def _runtime(job: dict):
    from ..runtime.generate import Runtime
    return Runtime(job["model"], precision=job["precision"], intra_op_threads=job["threads"],
                   providers=["CPUExecutionProvider"])


def _int_keys(prompts: dict) -> dict[int, list[int]]:
    return {int(length): ids for length, ids in prompts.items()}     # JSON keys are strings


def run_job(job: dict) -> dict:
    """Run one job in this process and return its result with this process's memory.

    Args:
        job: kind ("decode", "ttft", "bands", "concurrency" or "checkpoint"), engine ("onnx",
            "torch-full", "torch-kv"), and what the kind needs: model, precision, adaptive,
            threads, checkpoint, prompt / prompts, tokens, repeats, time_box, tail_samples,
            streams, mode.

    Returns:
        dict: result, rss_loaded_mib (after loading the model), peak_rss_mib, seconds.
    """
    began = time.perf_counter()
    kind, engine = job["kind"], job.get("engine", "onnx")
    if kind == "checkpoint":
        from .reference import describe_checkpoint
        return dict(result=describe_checkpoint(job["checkpoint"], job["model"]),
                    peak_rss_mib=peak_rss_mib(),
                    rss_loaded_mib=None, seconds=time.perf_counter() - began)
    if engine in TORCH_ENGINES:
        from . import reference as measure
        target = measure.load_model(job["checkpoint"], job["model"], job["threads"])
        method = "full" if engine == "torch-full" else "incremental"
        args = dict(method=method)
    else:
        from . import decode as measure
        target = _runtime(job)
        args = dict(adaptive=job.get("adaptive", False))
    loaded = current_rss_mib()
    if kind == "decode":
        if engine in TORCH_ENGINES:
            args.update(time_box=job["time_box"], tail_samples=job["tail_samples"])
        result = measure.measure_decode(target, job["prompt"], job["tokens"], job["repeats"],
                                        **args)
    elif kind == "ttft":
        result = measure.measure_ttft(target, _int_keys(job["prompts"]), job["repeats"], **args)
    elif kind == "bands" and engine == "onnx":
        result = measure.measure_bands(target, job["prompt"], job["tokens"], job["repeats"])
    elif kind == "concurrency" and engine == "onnx":
        from .concurrency import measure_concurrency
        result = measure_concurrency(target, job["prompt"], job["tokens"], job["streams"],
                                     job["mode"], job["repeats"])
    else:
        raise ValueError(f"unknown job kind {kind!r} for engine {engine!r}")
    return dict(result=result, rss_loaded_mib=loaded, peak_rss_mib=peak_rss_mib(),
                seconds=time.perf_counter() - began)


def run_in_subprocess(job: dict, timeout: float | None = None) -> dict:
    """Run `job` in a fresh Python process (this interpreter) and return run_job's result.

    Raises:
        WorkerError: the process failed or timed out (with the end of its stderr).
    """
    env = dict(os.environ)
    # the worker must import this very package, installed or not
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT),
                                                      env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "lantern_edge.benchmark.worker",
               "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())]
    try:
        done = subprocess.run(command, input=json.dumps(job), capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise WorkerError(f"the {job['kind']} job timed out after {timeout:.0f} s") from e
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:]) or f"exit code {done.returncode}"
        raise WorkerError(tail)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise WorkerError(f"the worker printed no result (stdout: {done.stdout[-200:]!r})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    level = argv[argv.index("--log-level") + 1] if "--log-level" in argv else "WARNING"
    logging.basicConfig(level=level, stream=sys.stderr, format="%(name)s: %(message)s")
    job = json.loads(sys.stdin.read())
    print(json.dumps(run_job(job)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

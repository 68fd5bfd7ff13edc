"""The benchmark plan: which configuration runs which job, in which worker, and what the
numbers mean together (ratios, memory flatness, cost bounds, greedy-token agreement).

Torch-free: the PyTorch rows run in worker processes (worker.py). Library code: it logs and
reports progress through a callback, never prints.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ArtifactError, CheckpointError
from ..extras import install_hint
from ..runtime.artifacts import open_artifacts, sha256_of
from ..version import __version__
from . import analysis
from .prompts import prompt_of_length, text_ids
from .worker import WorkerError, run_in_subprocess

logger = logging.getLogger(__name__)
SCHEMA = "lantern-edge-bench/1"
TORCH_FIX = install_hint("torch")


@dataclass(frozen=True)
class Configuration:
    name: str
    label: str
    engine: str                   # onnx, torch-full or torch-kv
    precision: str = "fp32"
    adaptive: bool = False


CONFIGURATIONS = (
    Configuration("pytorch-full", "PyTorch full recompute (upstream generate)", "torch-full"),
    Configuration("pytorch-kv", "PyTorch + KV state (IncrementalDecoder)", "torch-kv"),
    Configuration("onnx-fp32", "ONNX fp32, adaptive off", "onnx", "fp32", False),
    Configuration("onnx-fp32-adaptive", "ONNX fp32, adaptive on", "onnx", "fp32", True),
    Configuration("onnx-int8", "ONNX INT8, adaptive off", "onnx", "int8", False),
    Configuration("onnx-int8-adaptive", "ONNX INT8, adaptive on", "onnx", "int8", True),
)
LABELS = {c.name: c.label for c in CONFIGURATIONS}
NAMES = tuple(c.name for c in CONFIGURATIONS)


@dataclass
class BenchSettings:
    """What to measure. Validated on construction (ValueError naming the field)."""

    model: Path                                  # artifacts directory
    checkpoint: Path | None = None               # PyTorch rows; None: DIR/checkpoint.pt, else
                                                 # the reference rebuilt from the fp32 graphs
    tokens: tuple[int, ...] = (128, 512, 2048)   # new tokens per decode run
    prompt_lengths: tuple[int, ...] = (32, 256, 1024)  # TTFT prompts; decode uses the shortest
    threads: tuple[int, ...] = (2,)              # intra-op threads (torch: set_num_threads)
    repeats: int = 3                             # runs per measurement; the fastest is kept
    time_box: float = 60.0                       # seconds per full-recompute decode loop
    tail_samples: int = 8                        # lengths timed past the time box
    band_tokens: int | None = None               # cost-shape runs; None: min(tokens)
    concurrency: tuple[int, ...] = (1, 4, 16)    # concurrent streams on one model; () skips
    concurrency_tokens: int | None = None        # new tokens per stream; None: min(tokens)
    configurations: tuple[str, ...] = NAMES
    rss_tolerance_mib: float = 4.0               # "flat": peak RSS grew by at most this
    job_timeout: float = 3600.0                  # seconds per worker process

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        for name in ("tokens", "prompt_lengths", "threads"):
            values = tuple(getattr(self, name))
            if not values or any(not isinstance(v, int) or v < 1 for v in values):
                raise ValueError(f"{name} must be one or more ints >= 1, got {values}")
            setattr(self, name, tuple(sorted(set(values))))
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.time_box < 0:
            raise ValueError(f"time_box must be >= 0 seconds, got {self.time_box}")
        if self.tail_samples < 2:
            raise ValueError(f"tail_samples must be >= 2, got {self.tail_samples}")
        unknown = sorted(set(self.configurations) - set(NAMES))
        if unknown or not self.configurations:
            raise ValueError(f"configurations must be among {', '.join(NAMES)}, got "
                             f"{', '.join(unknown) or 'none'}")
        self.concurrency = tuple(sorted(set(self.concurrency)))
        if any(not isinstance(v, int) or v < 1 for v in self.concurrency):
            raise ValueError(f"concurrency must be ints >= 1 (streams), got {self.concurrency}")
        for name in ("band_tokens", "concurrency_tokens"):
            if getattr(self, name) is None:
                setattr(self, name, min(self.tokens))
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass
class _Plan:
    settings: BenchSettings
    config: object                                # the artifacts' ModelConfig
    checkpoint: Path | None
    skipped: dict[str, str] = field(default_factory=dict)     # configuration -> reason
    notes: list[str] = field(default_factory=list)
    torch_version: str | None = None


def run_benchmark(settings: BenchSettings,
                  progress: Callable[[str], None] = lambda message: None,
                  command: str | None = None) -> dict:
    """Run every measurement of `settings` and return the results (bench.json's content).

    Args:
        settings: what to measure.
        progress: called with one line per finished job.
        command: the command line to record (default: sys.argv).

    Raises:
        ArtifactError: the model directory is not usable artifacts (fp32 graphs).
    """
    began, load_before = time.perf_counter(), analysis.load_average()
    artifacts = open_artifacts(settings.model, "fp32")
    plan = _plan(settings, artifacts, progress)
    ids, prompt_source = text_ids(artifacts.root / artifacts.manifest["tokenizer"],
                                  _special_ids(plan.config), max(settings.prompt_lengths))
    bos = plan.config.bos_token_id
    decode_prompt = prompt_of_length(ids, min(settings.prompt_lengths), bos)
    groups = _jobs(plan, decode_prompt, {n: prompt_of_length(ids, n, bos)
                                         for n in settings.prompt_lengths})
    rows: dict[str, list[dict]] = {"decode": [], "ttft": [], "cost_shape": [],
                                   "concurrency": []}
    for section, group in groups:
        rounds = settings.repeats if section == "decode" else 1
        for row, job in group:
            if job is None:
                progress(_describe(section, row))
        # decode: one timed run per process, in rounds over the group's configurations, so
        # that a burst of load from other processes hits one round, not one configuration
        for round_ in range(1, rounds + 1):
            for row, job in group:
                if job is not None and not row.get("error") and not row.get("enough"):
                    _run(row, job, settings)
                    progress(_describe(section, row, f" round {round_}/{rounds}"
                                       if rounds > 1 else ""))
        for row, _ in group:
            row.pop("enough", None)
            rows[section].append(row)
    return dict(
        schema=SCHEMA, lantern_edge=__version__,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), command=command or " ".join(sys.argv),
        machine=analysis.machine(plan.torch_version, load_before),
        model=_model_info(artifacts, plan),
        settings={**asdict(settings), "model": str(settings.model),
                  "checkpoint": str(plan.checkpoint) if plan.checkpoint else None,
                  "decode_prompt_tokens": len(decode_prompt), "prompt_source": prompt_source},
        configurations=[{**asdict(c), "skipped": plan.skipped.get(c.name)}
                        for c in CONFIGURATIONS if c.name in settings.configurations],
        decode=analysis.with_ratios(rows["decode"]), ttft=rows["ttft"],
        memory=analysis.memory(rows["decode"], settings.rss_tolerance_mib),
        cost_shape=rows["cost_shape"], bounds=analysis.bounds(rows["cost_shape"]),
        concurrency=rows["concurrency"],
        notes=plan.notes, wall_seconds=time.perf_counter() - began)


# --- planning ---------------------------------------------------------------------------------

def _model_info(artifacts, plan: _Plan) -> dict:
    torch_rows = [c.name for c in CONFIGURATIONS if c.engine != "onnx" and c.name not in
                  plan.skipped and c.name in plan.settings.configurations]
    reference = None if not torch_rows else (str(plan.checkpoint) if plan.checkpoint
                                             else "rebuilt from the fp32 graphs")
    return dict(path=str(artifacts.root), precisions=artifacts.precisions,
                config=artifacts.model_config.to_dict(),
                controller=artifacts.controller.to_dict(), checkpoint=reference)


def _special_ids(config) -> set[int]:
    return {i for i in (config.bos_token_id, config.eos_token_id, config.pad_token_id,
                        config.think_token_id) if i is not None}


def _plan(settings: BenchSettings, artifacts, progress) -> _Plan:
    """Decide up front which configurations cannot run, and why."""
    checkpoint = settings.checkpoint
    if checkpoint is None and (artifacts.root / "checkpoint.pt").exists():
        checkpoint = artifacts.root / "checkpoint.pt"
    plan = _Plan(settings, artifacts.model_config, checkpoint)
    try:
        open_artifacts(artifacts.root, "int8")
    except ArtifactError as e:
        for c in CONFIGURATIONS:
            if c.precision == "int8":
                plan.skipped[c.name] = str(e)
    torch_reason = _torch_reason(plan, artifacts, progress)
    if torch_reason and settings.checkpoint is not None and installed("torch"):
        # the user named this checkpoint: a refused or foreign one is an error, not a skip
        raise CheckpointError(f"--checkpoint {settings.checkpoint}: {torch_reason}")
    for c in CONFIGURATIONS:
        if c.engine != "onnx" and torch_reason:
            plan.skipped[c.name] = torch_reason
        if c.name not in settings.configurations:
            plan.skipped.pop(c.name, None)
    return plan


def installed(module: str) -> bool:
    """Whether `module` can be imported (probed without importing it)."""
    return importlib.util.find_spec(module) is not None


def _torch_reason(plan: _Plan, artifacts, progress) -> str | None:
    """Why the PyTorch rows cannot run (None: they can); checks the reference is the model.

    Without a checkpoint the reference is rebuilt from the artifacts' fp32 graphs
    (lantern_edge.export.reimport), which also needs onnx.
    """
    wanted = [c for c in CONFIGURATIONS if c.engine != "onnx"
              and c.name in plan.settings.configurations]
    if not wanted:
        return None
    if not installed("torch"):
        return f"torch is not installed ({TORCH_FIX})"
    if plan.checkpoint is None and not installed("onnx"):
        return (f"no checkpoint, and rebuilding the reference from the graphs needs onnx: pass "
                f"--checkpoint PT (the checkpoint these artifacts were exported from) or "
                f"{TORCH_FIX}")
    if plan.checkpoint is not None and not plan.checkpoint.is_file():
        return f"checkpoint not found: {plan.checkpoint}"
    source = str(plan.checkpoint) if plan.checkpoint else "the artifacts' fp32 graphs"
    try:
        info = run_in_subprocess(dict(kind="checkpoint", model=str(artifacts.root),
                                      checkpoint=plan.checkpoint and str(plan.checkpoint)),
                                 plan.settings.job_timeout)["result"]
    except WorkerError as e:
        return f"cannot build the PyTorch reference from {source}: {e}"
    progress(f"PyTorch reference from {source}: {info['parameters']:,} parameters, "
             f"torch {info['torch_version']}")
    plan.torch_version = info["torch_version"]
    expected = artifacts.model_config.to_dict()
    differ = [f"{k}: {info['model_config'].get(k)!r} vs {v!r}" for k, v in expected.items()
              if info["model_config"].get(k) != v]
    if differ:
        return (f"the checkpoint {plan.checkpoint} is another model than the artifacts "
                f"(checkpoint vs artifacts: {'; '.join(differ[:3])}); pass the checkpoint they "
                f"were exported from")
    exported_from = artifacts.manifest.get("producer", {}).get("checkpoint_sha256")
    if plan.checkpoint is None:
        plan.notes.append("The PyTorch reference was rebuilt from the artifacts' fp32 graphs "
                          "(lantern_edge.export.reimport: the same weights, exactly).")
    elif exported_from and sha256_of(plan.checkpoint) != exported_from:
        plan.notes.append(f"{plan.checkpoint} has the artifacts' shape but not the sha256 they "
                          f"were exported from: PyTorch timings compare, token agreement may not")
    return None


def _jobs(plan: _Plan, decode_prompt: list[int], prompts: dict[int, list[int]]):
    """[(section, [(row, job or None), ...]), ...] in run order. A decode group holds every
    configuration at one token count: they run close together, so their ratios are fair."""
    s, cfg = plan.settings, plan.config
    wanted = [c for c in CONFIGURATIONS if c.name in s.configurations]
    out = []

    def job(c: Configuration, threads: int, repeats: int = s.repeats, **extra) -> dict:
        return dict(engine=c.engine, model=str(s.model), precision=c.precision,
                    adaptive=c.adaptive, threads=threads, repeats=repeats,
                    checkpoint=str(plan.checkpoint) if plan.checkpoint else None, **extra)

    for threads in s.threads:
        for tokens in s.tokens:
            group = []
            for c in wanted:
                row = dict(configuration=c.name, threads=threads, tokens_requested=tokens)
                reason = plan.skipped.get(c.name) or _decode_fits(cfg, len(decode_prompt), tokens)
                group.append(({**row, "skipped": reason}, None if reason else job(
                    c, threads, repeats=1, kind="decode", prompt=decode_prompt, tokens=tokens,
                    time_box=s.time_box, tail_samples=s.tail_samples)))
            out.append(("decode", group))
        group = []
        for c in wanted:
            row = dict(configuration=c.name, threads=threads)
            fits = {n: ids for n, ids in prompts.items() if n < cfg.max_position}
            row["too_long"] = {str(n): f"a {n}-token prompt does not fit max_position="
                                       f"{cfg.max_position}" for n in prompts if n not in fits}
            reason = plan.skipped.get(c.name) or (None if fits else "no prompt length fits")
            group.append(({**row, "skipped": reason}, None if reason else job(
                c, threads, kind="ttft", prompts=fits)))
        out.append(("ttft", group))
        group = []
        for precision in ("fp32", "int8"):
            name = f"onnx-{precision}"
            if name not in s.configurations and f"{name}-adaptive" not in s.configurations:
                continue
            reason = plan.skipped.get(name) or _decode_fits(cfg, len(decode_prompt),
                                                            s.band_tokens)
            row = dict(precision=precision, threads=threads, tokens_requested=s.band_tokens,
                       skipped=reason)
            group.append((row, None if reason else job(
                Configuration(name, "", "onnx", precision), threads, kind="bands",
                prompt=decode_prompt, tokens=s.band_tokens)))
        out.append(("cost_shape", group))
        out.append(("concurrency", _concurrency_jobs(plan, decode_prompt, threads, job)))
    return [(section, group) for section, group in out if group]


def _concurrency_jobs(plan: _Plan, prompt: list[int], threads: int, job) -> list:
    """S streams on one fp32 model, by threads and batched, each (mode, S) in its own process
    (so its peak RSS is its own); the manifest's adaptive controller."""
    s = plan.settings
    if not {"onnx-fp32", "onnx-fp32-adaptive"} & set(s.configurations):
        return []
    from .concurrency import MODES
    group = []
    for mode in MODES:
        for streams in s.concurrency:
            reason = _decode_fits(plan.config, len(prompt), s.concurrency_tokens)
            row = dict(mode=mode, streams=streams, threads=threads,
                       tokens_requested=s.concurrency_tokens, skipped=reason)
            group.append((row, None if reason else job(
                Configuration("onnx-fp32-adaptive", "", "onnx", "fp32", True), threads,
                kind="concurrency", prompt=prompt, tokens=s.concurrency_tokens,
                streams=streams, mode=mode)))
    return group


def _decode_fits(cfg, prompt_tokens: int, tokens: int) -> str | None:
    if prompt_tokens + tokens <= cfg.max_position:
        return None
    return (f"a {prompt_tokens}-token prompt + {tokens} new tokens exceed the model's "
            f"max_position={cfg.max_position}")


def _run(row: dict, job: dict, settings: BenchSettings) -> None:
    """Run one job in a worker and fold its result into row (decode: the fastest round)."""
    try:
        out = run_in_subprocess(job, settings.job_timeout)
    except WorkerError as e:
        logger.error("%s failed: %s", row, e)
        row["error"] = str(e)
        return
    load = analysis.load_average()
    # the 1-minute load average as the job ends: other processes on the cores show up here
    found = dict(peak_rss_mib=out["peak_rss_mib"], rss_loaded_mib=out["rss_loaded_mib"],
                 job_seconds=out["seconds"], load_average=load[0] if load else None)
    if job["kind"] == "concurrency":
        row.update(found, **out["result"])
    elif job["kind"] == "bands":
        row.update(found, modes=out["result"])
        for mode in row["modes"].values():
            mode.pop("token_ids", None)
    elif job["kind"] == "ttft":
        row.update(found, prompts=out["result"])
    else:
        _merge_round(row, {**out["result"], **found})
        # a slow row (the PyTorch ones at length) runs one round: its time box is spent
        row["enough"] = row.get("estimated") or out["seconds"] > settings.time_box


def _merge_round(row: dict, result: dict) -> None:
    """Keep the fastest decode round; peak memory is the highest of any round."""
    before = {key: row.get(key) for key in ("peak_rss_mib", "peak_rss_stream_mib")}
    runs = row.get("runs", 0) + result.pop("runs", 1)
    if "tok_s" not in row or result["tok_s"] > row["tok_s"]:
        row.update(result)
    for key, value in before.items():
        if value is not None and result.get(key) is not None:
            row[key] = max(value, result[key])
    row["runs"] = runs


def _describe(section: str, row: dict, round_: str = "") -> str:
    if section == "concurrency":
        head = f"concurrency {row['mode']} {row['streams']} streams threads={row['threads']}"
        missing = row.get("skipped") or row.get("error")
        return f"{head}: {missing}" if missing else (
            f"{head}: {row['tok_s']:,.1f} tok/s, peak RSS {row['peak_rss_mib']:.0f} MiB")
    what = row.get("configuration") or f"onnx-{row.get('precision')} bands"
    head = f"{section} {what} threads={row['threads']}"
    if "tokens_requested" in row and section == "decode":
        head += f" tokens={row['tokens_requested']}{round_}"
    if row.get("skipped"):
        return f"{head}: skipped ({row['skipped']})"
    if row.get("error"):
        return f"{head}: FAILED ({row['error']})"
    if section == "decode":
        est = " (est.)" if row.get("estimated") else ""
        return (f"{head}: best {row['tok_s']:,.1f} tok/s{est}, peak RSS "
                f"{row['peak_rss_mib']:.0f} MiB")
    if section == "ttft":
        return head + ": " + ", ".join(f"{n} tokens {v['ttft_ms']:.1f} ms"
                                       for n, v in row["prompts"].items())
    return head + ": " + ", ".join(f"{m} {v['us_mean']:.0f} us" for m, v in row["modes"].items())

"""fp32 artifacts -> INT8 graphs beside them (int8/), recorded in the manifest with hashes.

What is quantized and what stays float:
- block steps, the MC step and the LM head: every MatMul with a constant weight gets INT8
  weights (dynamic mode: activations quantized on the fly per call; static mode: QDQ with
  activation ranges calibrated on real text; nbits mode: ONNX Runtime's MatMulNBits, weights
  in blocks of K with a scale per block, activations quantized per block at run time; the
  default). Attention score/value MatMuls (two activations), LayerNorm, Softmax, SiLU and the
  residual adds stay float: they carry no weights and are where quantization error would
  compound.
- embed and uncertainty: their tables are quantized only where ONNX Runtime can (Gather); the
  uncertainty head's softmax, entropy and top-k stay float (its signals steer the controller).
- model.onnx (the standalone entry point) stays fp32.
The graphs keep the fp32 graphs' input/output contract, so the runtime only switches files.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..errors import ArtifactError, LanternError
from ..runtime.artifacts import open_artifacts
from .weight_only import NBITS_ACCURACY_LEVEL, NBITS_BLOCK_SIZES

logger = logging.getLogger(__name__)

INT8_DIR = "int8"
MODES = ("nbits", "dynamic", "static")          # the first is the default


class QuantizationError(LanternError, ValueError):
    """The input cannot be quantized (not artifacts, already quantized, empty calibration)."""


@dataclass
class QuantReport:
    root: Path
    mode: str
    per_channel: bool
    sizes: dict[str, tuple[int, int]]         # graph files / weights -> (fp32 bytes, int8 bytes)
    quality: dict = field(default_factory=dict)
    block_size: int | None = None             # nbits mode


def quantize_artifacts(path: str | Path, *, mode: str = MODES[0], per_channel: bool = False,
                       calibration: list[str] | None = None, force: bool = False,
                       evaluate: bool = True, block_size: int | None = None,
                       progress=lambda message: None) -> QuantReport:
    """Write int8/ graphs for the artifacts at path and add them to lantern.json.
    block_size: nbits mode only; None: the largest of NBITS_BLOCK_SIZES (up to 128) that
    divides the input size of every weight."""
    from ..export.atomic import clean_stale, partial_prefix, replace_dir
    from ..export.manifest import graph_section, write_manifest
    from ..export.model_card import write_model_card
    from ..export.onnx_export import write_graphs
    from .quality import evaluate_quality, write_quality_report

    if mode not in MODES:
        raise QuantizationError(f"--mode must be one of {MODES}, got {mode!r}")
    if mode != "nbits" and block_size is not None:
        raise QuantizationError(f"--block-size applies to --mode nbits only (got --mode {mode})")
    if mode == "nbits":
        if block_size is not None and block_size not in NBITS_BLOCK_SIZES:
            raise QuantizationError(f"--block-size must be one of {NBITS_BLOCK_SIZES}, got "
                                    f"{block_size}")
        if per_channel:
            raise QuantizationError("--per-channel does not apply to --mode nbits (its scales "
                                    "are per block of each output channel already)")
    path = Path(path)
    if path.name == INT8_DIR or (path.is_file() and path.parent.name == INT8_DIR):
        raise QuantizationError(f"{path} is already quantized; pass the artifacts directory "
                                f"that holds lantern.json")
    try:
        artifacts = open_artifacts(path, "fp32")
    except ArtifactError as e:
        raise QuantizationError(f"{path} is not a LANTERN artifacts directory ({e})") from e
    root = artifacts.root
    if "int8" in artifacts.manifest["graphs"] and not force and _int8_intact(root):
        raise QuantizationError(f"{root} already has INT8 graphs; pass --force to redo them")
    clean_stale(root)                          # work files of a killed quantize
    calibration_texts = _calibration_texts(calibration) if mode == "static" else None

    if mode == "nbits":
        block_size = _block_size(artifacts.model_config, block_size)
    fp32 = artifacts.manifest["graphs"]["fp32"]
    roles = [("embed", fp32["embed"]["file"])] + [("block", e["file"]) for e in fp32["blocks"]]
    roles += [(role, fp32[role]["file"]) for role in ("mc_step", "lm_head", "uncertainty", "inject")
              if role in fp32]
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(INT8_DIR), dir=root))
    try:
        feeds = None
        if mode == "static":
            from .calibration import collect_feeds
            progress("collecting calibration inputs from the fp32 graphs")
            feeds = collect_feeds(artifacts, calibration_texts)
        built = []
        for role, file in roles:
            progress(f"quantizing {file} ({mode}{', per-channel' if per_channel else ''})")
            name = Path(file).name
            built.append((role, name, _quantize_graph(root / file, per_channel,
                                                      feeds.get(name) if feeds else None,
                                                      block_size)))
        if mode == "dynamic" and not per_channel or mode == "nbits":
            # not with --per-channel: its scales run along V, the gathered rows' axis, so those
            # Gathers keep their own per-tensor table; static QDQ quantizes no Gathers
            _share_token_table(built, artifacts.model_config.vocab_size, nbits=mode == "nbits")
        files = write_graphs(built, tmp)
        for f in files:
            onnx.checker.check_model(str(tmp / f.file))
        final = root / INT8_DIR
        tmp.chmod(0o755)                       # mkdtemp made it private; artifacts are not
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    for f in files:
        f.file = f"{INT8_DIR}/{f.file}"
    manifest = artifacts.manifest
    section = graph_section(files, [f"{INT8_DIR}/weights.bin"])
    section["quantization"] = {"mode": mode, "per_channel": per_channel, "weight_type": "int8",
                               "kept_float": KEPT_FLOAT_NBITS if mode == "nbits" else KEPT_FLOAT}
    if mode == "nbits":
        section["quantization"].update(block_size=block_size, op="MatMulNBits",
                                       accuracy_level=NBITS_ACCURACY_LEVEL)
    manifest["graphs"]["int8"] = section
    write_manifest(root, manifest)
    sizes = {"graph files": (sum((root / file).stat().st_size for _, file in roles),
                             sum((root / f.file).stat().st_size for f in files)),
             "weights": ((root / "weights.bin").stat().st_size,
                         (final / "weights.bin").stat().st_size)}
    report = QuantReport(root, mode, per_channel, sizes, block_size=block_size)
    if evaluate:
        progress("measuring quality on held-out text (fp32 vs int8)")
        report.quality = evaluate_quality(root)
        write_quality_report(report)
        manifest["graphs"]["int8"]["quality"] = dict(report.quality)
    write_model_card(root, manifest)
    write_manifest(root, manifest)
    return report


# nbits: the default block size is the largest of these that divides every weight's input size
# (measured on the default model, `python benchmarks/bench_quantize.py`: 128 decodes fastest at a
# top-1 agreement above the dynamic mode's; 256 gains nothing more and agrees less)
AUTO_BLOCK_SIZES = (128, 64, 32, 16)


def _block_size(cfg, asked: int | None) -> int:
    """The nbits block size for a model: every weight MatMul's K (hidden_size, and
    intermediate_size for the down projection) must be a multiple of it."""
    inputs = {cfg.hidden_size, cfg.intermediate_size}
    if asked is not None:
        if any(k % asked for k in inputs):
            raise QuantizationError(f"--block-size {asked} does not divide the model's weight "
                                    f"input sizes {sorted(inputs)}; pick one that does, or "
                                    f"leave it out to choose automatically")
        return asked
    for size in AUTO_BLOCK_SIZES:
        if not any(k % size for k in inputs):
            return size
    raise QuantizationError(f"--mode nbits needs weight input sizes that are multiples of 16, "
                            f"the model's are {sorted(inputs)}; quantize it with "
                            f"`lantern-edge quantize ARTIFACTS --mode dynamic`")


def _int8_intact(root: Path) -> bool:
    """The recorded INT8 graphs verify; a quantize killed after its rename may leave them not."""
    try:
        open_artifacts(root, "int8")
    except ArtifactError:
        return False
    return True


KEPT_FLOAT = ["model.onnx (the standalone entry point)", "LayerNorm", "Softmax",
              "attention MatMuls (activation x activation)", "RoPE (computed, and its rotation)",
              "halting heads", "down projection activations (INT8 weights, float input)",
              "uncertainty head arithmetic (softmax, entropy, top-k)"]
KEPT_FLOAT_NBITS = [kept for kept in KEPT_FLOAT if not kept.startswith("down projection")] + [
    "weights whose input size is not a multiple of the block size (a depth probe's first layer)"]


def _share_token_table(built: list, vocab_size: int, nbits: bool = False) -> None:
    """embed and uncertainty read the LM head's INT8 embedding matrix (shared_table.py)."""
    from .shared_table import (lm_head_nbits_table, lm_head_table, share_nbits_table,
                               share_token_table)
    graphs = {role: model for role, _, model in built}
    if nbits:
        shared, share = lm_head_nbits_table(graphs["lm_head"], vocab_size), share_nbits_table
    else:
        shared, share = lm_head_table(graphs["lm_head"], vocab_size), share_token_table
    for role in ("embed", "uncertainty"):
        # "token_embedding": the tied table's initializer name in every graph (export/graphs.py)
        if share(graphs[role], "token_embedding", shared) == 0:
            raise LanternError(f"the INT8 {role} graph has no quantized embedding Gather to share")


def _calibration_texts(files: list[str] | None) -> list[str]:
    if files:
        texts = []
        for f in files:
            p = Path(f)
            if not p.is_file():
                raise QuantizationError(f"calibration file not found: {p}")
            texts.append(p.read_text(encoding="utf-8", errors="replace"))
    else:
        from ..model.corpus import load_corpus
        texts = load_corpus(max_chars=200_000).train
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise QuantizationError("the calibration set is empty: give text files with content")
    return texts


# MatMuls that keep float activations (matched by weight name; see weight_only.py for why):
# the down projection gets INT8 weights only; RoPE's signed permutation (exact in float, and
# 8-bit q/k would perturb every attention score) and the halting heads' (C,) vectors (nothing to
# save, and per-channel scales do not apply to a 1-D weight) stay float entirely.
WEIGHT_ONLY = ("down_weight",)
FLOAT = ("rope_rotation", "halt_weight")


def _quantize_graph(src: Path, per_channel: bool, feeds, block_size: int | None = None
                    ) -> onnx.ModelProto:
    """Dynamic INT8 (feeds None), static QDQ calibrated on feeds, or (block_size given)
    MatMulNBits, as an in-memory model."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .weight_only import matmuls_reading, to_int8_weight_only, to_matmul_nbits

    with tempfile.TemporaryDirectory() as work:
        full, pre, out = (Path(work) / n for n in ("full.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(onnx.load(str(src)), str(full))          # weights inline for the quantizer
        # Folds Transpose(weight) patterns, so the quantizer sees every MatMul with a constant
        # weight (without it, MatMuls reading a transposed weight stayed float).
        quant_pre_process(str(full), str(pre), skip_symbolic_shape=True)
        if block_size is not None:
            # the embedding tables' Gathers as in dynamic mode (int8 rows), every weight MatMul
            # but RoPE's and the halting heads' as MatMulNBits
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["Gather"])
            quantized = onnx.load(str(out))
            shapes = {t.name: tuple(t.dims) for t in quantized.graph.initializer}
            weights = [n for n in matmuls_reading(quantized, ("",))    # every constant B
                       if not n.input[1].endswith(FLOAT)
                       and len(shapes[n.input[1]]) == 2 and shapes[n.input[1]][0] % block_size == 0]
            to_matmul_nbits(quantized, weights, block_size)
            return quantized
        excluded = [n.name for n in matmuls_reading(onnx.load(str(pre)), FLOAT + WEIGHT_ONLY)]
        if feeds is None:
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8,
                             per_channel=per_channel, nodes_to_exclude=excluded,
                             op_types_to_quantize=["MatMul", "Gather", "Gemm"],
                             extra_options={"MatMulConstBOnly": True})
        else:
            from .calibration import FeedReader
            quantize_static(str(pre), str(out), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            per_channel=per_channel, nodes_to_exclude=excluded,
                            op_types_to_quantize=["MatMul", "Gemm"],
                            extra_options={"MatMulConstBOnly": True})
        quantized = onnx.load(str(out))
        to_int8_weight_only(quantized, matmuls_reading(quantized, WEIGHT_ONLY))
        return quantized


def main_summary(report: QuantReport) -> str:
    lines = [f"{'':<12} {'fp32':>10} {'int8':>10} {'ratio':>6}"]
    total32 = total8 = 0
    for name, (a, b) in report.sizes.items():
        lines.append(f"{name:<12} {a / 1e3:>8.1f}kB {b / 1e3:>8.1f}kB {b / a:>6.2f}")
        total32, total8 = total32 + a, total8 + b
    lines.append(f"{'total':<12} {total32 / 1e3:>8.1f}kB {total8 / 1e3:>8.1f}kB "
                 f"{total8 / total32:>6.2f}")
    if report.quality:
        lines.append("")
        lines += [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                  for k, v in report.quality.items()]
    return "\n".join(lines)

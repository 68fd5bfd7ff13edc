"""Strict checks of lantern.json against the rules and against the graphs themselves.

The sha256 hashes cover the files, not the manifest's own fields, so each field is checked for
its exact type and a bound before anything is built from it (a `num_blocks` or
`steps_reasoning` sizes KV buffers), and then against what the verified graphs say: their input
and output shapes, which block's weights each block graph holds, and the manifest copy that
model.onnx carries in its metadata (covered by model.onnx's hash). Every failure raises
ArtifactError naming the field and the fix.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

from ..errors import ArtifactError
from ..model.config import ControllerConfig, ModelConfig
from ..version import MANIFEST_FORMAT_VERSION
from .graph_proto import GraphInfo
from .options import is_int, is_number

REBUILD = "re-run `lantern-export CHECKPOINT -o DIR --force`"
ROLES = ("embed", "blocks", "mc_step", "lm_head", "uncertainty")
OPTIONAL_ROLES = ("inject",)    # only models with input injection have it (docs/DEPTH.md)
# Fields added after manifests were first shipped: absent, they take their defaults (sequence
# order, no injection, no probe, the U bands, no THINK by default, adaptive), so older
# artifacts load.
OPTIONAL_FIELDS = {"recursion_order", "input_injection", "depth_probe_hidden",
                   "depth_probe_top_k", "deep_trigger", "tau_probe", "inject_think",
                   "adaptive"}

# Parity recorded at export (lantern.json "parity"); the runtime refuses artifacts without it.
LOGIT_TOLERANCE = 1e-4          # max abs logit difference, fp32
SIGNAL_TOLERANCE = 1e-4         # uncertainty signals, relative to each signal's magnitude
PARITY_KEYS = ("decode_logits", "decode_halt", "mc_step_logits", "uncertainty_rel",
               "model_onnx_logits")

# Bounds far above any edge model, low enough that a hostile manifest cannot make the runtime
# allocate gigabytes from a few edited digits.
LIMITS = {"vocab_size": 1 << 20, "hidden_size": 1 << 15, "num_heads": 1 << 10,
          "intermediate_size": 1 << 17, "num_blocks": 64, "window_size": 1 << 16,
          "max_position": 1 << 20, "max_global_tokens": 1 << 12, "steps_base": 64,
          "steps_reasoning": 64, "depth_probe_hidden": 1 << 15}
MAX_KV_BYTES = 2 << 30          # keys + values of every (block, iteration), float32
MAX_WEIGHT = 1e6                # |controller weights|: U must stay finite in float32
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parity_failures(errors: dict[str, float]) -> list[str]:
    """'name=value > limit' for each check out of tolerance (NaN counts as a failure)."""
    limits = {"uncertainty_rel": SIGNAL_TOLERANCE}
    return [f"{name}={value:.2e} > {limits.get(name, LOGIT_TOLERANCE):.0e}"
            for name, value in errors.items()
            if not value <= limits.get(name, LOGIT_TOLERANCE)]


def graph_roles(section: dict) -> list[str]:
    """The single-graph roles of one precision's section: the required ones, and the optional
    ones it lists."""
    return [r for r in ROLES if r != "blocks"] + [r for r in OPTIONAL_ROLES if r in section]


def _fail(where: str, problem: str) -> None:
    raise ArtifactError(f"lantern.json {where} {problem}; {REBUILD}")


def check_name(name: Any, where: str) -> str:
    """A plain relative path inside the directory: '/' separators, no '..', '.', empty or
    absolute parts, nothing that a shell or another OS reads differently."""
    if not isinstance(name, str) or not name:
        _fail(where, f"must be a file name, got {name!r}")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\0" in name or ":" in name
            or any(p in ("", ".", "..") for p in parts) or len(name) > 255):
        raise ArtifactError(
            f"lantern.json {where} names {name!r}: only plain relative names of files inside "
            f"the artifacts directory are allowed (no absolute paths, '..' or '\\'); {REBUILD}")
    return name


def _typed(section: dict, cls, where: str) -> dict:
    """Every field of the dataclass present, with its exact JSON type."""
    if not isinstance(section, dict):
        _fail(where, f"must be an object, got {type(section).__name__}")
    fields = cls.__dataclass_fields__
    missing = sorted(set(fields) - set(section) - OPTIONAL_FIELDS)
    unknown = sorted(set(section) - set(fields))
    if missing or unknown:
        _fail(where, f"has missing fields {missing} / unknown fields {unknown}")
    for name, f in fields.items():
        if name not in section:
            continue                              # an optional field: its default
        value, kind = section[name], str(f.type)
        if kind == "int":
            ok = is_int(value)
        elif kind == "int | None":
            ok = value is None or is_int(value)
        elif kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "float":
            ok = is_number(value, finite=not name.startswith("tau_"))
        else:
            ok = isinstance(value, str)
        if not ok:
            _fail(f"{where}.{name}", f"must be of type {kind}, got {value!r}")
    return section


def check_configs(manifest: dict) -> tuple[ModelConfig, ControllerConfig]:
    model = _typed(manifest.get("model_config"), ModelConfig, "model_config")
    for name, limit in LIMITS.items():
        if model.get(name, 0) > limit:
            _fail(f"model_config.{name}", f"is {model[name]}, above the limit {limit}")
    controller = _typed(manifest.get("controller"), ControllerConfig, "controller")
    try:
        cfg, ctl = ModelConfig.from_dict(model), ControllerConfig.from_dict(controller)
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"lantern.json has an invalid config ({e}); {REBUILD}") from e
    kv = cfg.num_blocks * cfg.steps_reasoning * 2 * (cfg.window_size + cfg.max_global_tokens) \
        * cfg.hidden_size * 4
    if kv > MAX_KV_BYTES:
        _fail("model_config", f"asks for {kv / 2**30:.1f} GiB of KV buffers (num_blocks x "
                              f"steps_reasoning x window), above {MAX_KV_BYTES >> 30} GiB")
    specials = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                             "think_token_id")}
    ids = [v for v in specials.values() if v is not None]
    if len(set(ids)) != len(ids):
        _fail("model_config", f"gives two special tokens the same id: {specials}")
    if manifest.get("special_tokens") != specials:
        _fail("special_tokens", f"disagrees with model_config ({specials})")
    for name in ("weight_entropy", "weight_dispersion", "weight_p_max", "lambda_epistemic",
                 "refined_temperature"):
        if abs(getattr(ctl, name)) > MAX_WEIGHT:
            _fail(f"controller.{name}", f"is {getattr(ctl, name)}, above {MAX_WEIGHT:g} in size")
    if not 2 <= ctl.mc_samples <= 64 or ctl.top_k_dispersion > cfg.vocab_size:
        _fail("controller", "needs mc_samples in [2, 64] and top_k_dispersion <= vocab_size")
    return cfg, ctl


def check_layout(manifest: dict, precision: str) -> None:
    """format_version, and the shape of "graphs", "files", "tokenizer" and "parity"."""
    version = manifest.get("format_version")
    if not is_int(version) or version != MANIFEST_FORMAT_VERSION:
        raise ArtifactError(f"lantern.json has format_version {version!r}, this lantern-edge "
                            f"reads {MANIFEST_FORMAT_VERSION}; {REBUILD} with this version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v)
            for k, v in files.items()):
        _fail("files", "must map file names to sha256 hex digests")
    check_name(manifest.get("tokenizer"), "tokenizer")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not all(isinstance(v, dict) for v in graphs.values()):
        _fail("graphs", "must map precisions to objects")
    if precision not in graphs:
        return                                    # the caller names what is available
    section = graphs[precision]
    where = f"graphs.{precision}"
    entries = [(f"{where}.{r}", section.get(r)) for r in graph_roles(section)]
    blocks = section.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        _fail(f"{where}.blocks", "must be a non-empty list")
    entries += [(f"{where}.blocks[{b}]", e) for b, e in enumerate(blocks)]
    for place, entry in entries:
        if not isinstance(entry, dict):
            _fail(place, "is missing or not an object")
        check_name(entry.get("file"), f"{place}.file")
    external = section.get("external_data", [])
    if not isinstance(external, list):
        _fail(f"{where}.external_data", "must be a list of file names")
    for i, name in enumerate(external):
        check_name(name, f"{where}.external_data[{i}]")
    if precision == "fp32":
        check_name((section.get("model") or {}).get("file"), f"{where}.model.file")


def check_parity(manifest: dict) -> None:
    parity = manifest.get("parity")
    needed = [k for k in PARITY_KEYS if k != "decode_halt"]
    if (not isinstance(parity, dict) or any(k not in parity for k in needed)
            or not all(is_number(v, finite=False) for v in parity.values())):
        raise ArtifactError(
            f"lantern.json records no parity check ({parity!r}): these artifacts were not "
            f"verified against the PyTorch reference (an interrupted export?); {REBUILD}")
    failures = parity_failures(parity)
    if failures:
        raise ArtifactError(f"lantern.json records failed parity ({', '.join(failures)}); "
                            f"{REBUILD}")


def _graph_dir(name: str) -> str:
    return posixpath.dirname(name)


def _expect(ok: bool, file: str, problem: str) -> None:
    if not ok:
        raise ArtifactError(f"{file} does not fit lantern.json: {problem}; {REBUILD}")


def check_graphs(manifest: dict, precision: str, cfg: ModelConfig,
                 infos: dict[str, GraphInfo]) -> None:
    """The verified graphs against the config: shapes, external data, block order."""
    section = manifest["graphs"][precision]
    external = set(section.get("external_data", []))
    blocks = section["blocks"]
    _expect(len(blocks) == cfg.num_blocks, f"graphs.{precision}.blocks",
            f"{len(blocks)} block graphs listed but model_config.num_blocks={cfg.num_blocks}")
    c, v = cfg.hidden_size, cfg.vocab_size
    kv = [cfg.num_heads, cfg.window_size + cfg.max_global_tokens, cfg.head_dim]
    block_io = ({"hidden", "positions", "past_key", "past_value", "attn_bias"},
                {"hidden_out", "key", "value"} | ({"halt"} if cfg.use_halting else set()))
    masks = {"mask_attn_probs", "mask_attn_out", "mask_mlp_out"}
    expected = {  # role -> (inputs, outputs, shape checks, block whose weights it holds)
        "embed": ({"input_ids", "positions"}, {"hidden"}, {("out", "hidden"): c}, None),
        "mc_step": (block_io[0] | masks, {"hidden_out"},
                    {("in", "hidden"): c, ("in", "past_key"): kv}, cfg.num_blocks - 1),
        "lm_head": ({"hidden"}, {"logits"}, {("in", "hidden"): c, ("out", "logits"): v}, None),
        "uncertainty": ({"logits", "weights"} | ({"hidden"} if cfg.has_depth_probe else set()),
                        {"entropy", "p_max", "dispersion", "score"}
                        | ({"p_benefit"} if cfg.has_depth_probe else set()),
                        {("in", "logits"): v}, None),
    }
    _expect(("inject" in section) == cfg.input_injection, f"graphs.{precision}",
            f"model_config.input_injection={cfg.input_injection} but the inject graph is "
            f"{'listed' if 'inject' in section else 'missing'}")
    if cfg.input_injection:
        expected["inject"] = ({"hidden", "embedded"}, {"hidden_out"},
                              {("in", "hidden"): c, ("in", "embedded"): c}, None)
    entries = [(role, section[role]["file"], expected[role]) for role in expected]
    entries += [(f"block{b}", e["file"], (*block_io, {("in", "hidden"): c, ("in", "past_key"): kv,
                                                      ("in", "past_value"): kv}, b))
                for b, e in enumerate(blocks)]
    for role, file, (inputs, outputs, shapes, block) in entries:
        info = infos[file]
        for location in info.locations:
            resolved = posixpath.normpath(posixpath.join(_graph_dir(file), location))
            _expect(location == posixpath.normpath(location) and not location.startswith("/")
                    and resolved in external, file,
                    f"it reads external data {location!r}, which graphs.{precision}."
                    f"external_data does not list")
        _expect(set(info.inputs) == inputs and set(info.outputs) == outputs, file,
                f"the {role} graph has inputs {sorted(info.inputs)} and outputs "
                f"{sorted(info.outputs)}, expected {sorted(inputs)} and {sorted(outputs)}")
        for (side, name), want in shapes.items():
            dims = (info.inputs if side == "in" else info.outputs)[name]
            got = dims if isinstance(want, list) else dims[-1:]
            want = want if isinstance(want, list) else [want]
            _expect(got == want, file, f"{name} has shape {dims}, the config says {want}")
        owners = {n.split(".", 1)[0] for n in info.initializers if re.match(r"block\d+\.", n)}
        if block is not None:
            _expect(owners == {f"block{block}"}, file,
                    f"it holds the weights of {sorted(owners)} but is used as block {block} "
                    f"(block order changed?)")


def check_model_copy(manifest: dict, info: GraphInfo, file: str) -> None:
    """model.onnx carries the manifest (without "files") in its hashed metadata; every field
    the runtime uses must match it. The int8 section is added later by the quantizer."""
    try:
        copy = json.loads(info.metadata["lantern_manifest"])
    except (KeyError, ValueError) as e:
        raise ArtifactError(f"{file} carries no manifest copy in its metadata; {REBUILD}") from e
    for key in ("format_version", "model_config", "controller", "special_tokens", "tokenizer",
                "parity"):
        if copy.get(key) != manifest.get(key):
            _fail(key, f"differs from the copy in {file} (edited after export?)")
    if copy.get("graphs", {}).get("fp32") != manifest["graphs"]["fp32"]:
        _fail("graphs.fp32", f"differs from the copy in {file} (edited after export?)")

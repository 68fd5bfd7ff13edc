"""Checkpoint I/O: lantern-edge's own checkpoints and upstream LANTERN trainer checkpoints.

Files are untrusted: they are read with ``torch.load(..., weights_only=True)`` only, so nothing
in them can run code. Every failure is a CheckpointError that says what is wrong.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .config import ControllerConfig, ModelConfig
from .modeling import LanternModel, rope_tables
from .tokenizer import char_tokenizer

FORMAT = "lantern-edge-checkpoint"
FORMAT_VERSION = 1
UPSTREAM_KEYS = ("model_state_dict", "config")


@dataclass
class Checkpoint:
    model_config: ModelConfig
    controller_config: ControllerConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer_json: str | None            # None: an upstream checkpoint with no vocab.json beside it
    kind: str                             # "lantern-edge" or "upstream"
    training: dict[str, Any] = field(default_factory=dict)
    resume_state: dict[str, Any] | None = None   # optimizer/scheduler state of our trainer

    def build_model(self) -> LanternModel:
        """The model with these weights, in eval mode."""
        model = LanternModel(self.model_config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise CheckpointError(f"the state dict does not fit the checkpoint's config: {detail}") from e
        return model.eval()


def save_checkpoint(path: str | Path, model: LanternModel, controller: ControllerConfig,
                    tokenizer_json: str, training: dict[str, Any] | None = None,
                    resume_state: dict[str, Any] | None = None) -> None:
    """Write our own checkpoint (atomically: a temporary file renamed into place)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "controller_config": controller.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer_json": tokenizer_json,
        "training": training or {},
        "resume_state": resume_state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path, vocab_path: str | Path | None = None) -> Checkpoint:
    """Read our own or an upstream checkpoint. vocab_path: upstream's char vocab.json
    (default: vocab.json beside the checkpoint, if there is one)."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a LANTERN checkpoint dict")
    if raw.get("format") == FORMAT:
        return _own(path, raw)
    if all(k in raw for k in UPSTREAM_KEYS):
        vocab = Path(vocab_path) if vocab_path else path.with_name("vocab.json")
        return _upstream(path, raw, vocab if (vocab_path or vocab.exists()) else None)
    keys = ", ".join(sorted(map(str, raw))[:8]) or "none"
    raise CheckpointError(
        f"{path} is not a LANTERN checkpoint: expected a lantern-edge checkpoint (written by "
        f"`lantern-edge train`) or an upstream LANTERN one (keys {', '.join(UPSTREAM_KEYS)}); "
        f"found keys: {keys}")


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here; all mean "unusable file"
        text = str(e)
        blocked = re.search(r"unsupported GLOBAL ([\w.]+)", text)
        if blocked:
            raise CheckpointError(
                f"refused to load {path}: it references the Python object {blocked.group(1)}, "
                f"which safe (weights-only) loading does not allow because it could run code; "
                f"only checkpoints of tensors and plain data are accepted") from e
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = detail.group(1).strip() if detail else (
            text.strip().splitlines()[0] if text.strip() else type(e).__name__)
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (not written by torch.save, truncated "
            f"or corrupt): {reason}") from e


def _own(path: Path, raw: dict[str, Any]) -> Checkpoint:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version {version!r}; this lantern-edge reads version "
            f"{FORMAT_VERSION}")
    missing = [k for k in ("model_config", "controller_config", "state_dict", "tokenizer_json")
               if k not in raw]
    if missing:
        raise CheckpointError(f"{path} is missing checkpoint field(s): {', '.join(missing)}")
    try:
        model_config = ModelConfig.from_dict(raw["model_config"])
        controller = ControllerConfig.from_dict(raw["controller_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid config: {e}") from e
    ckpt = Checkpoint(model_config, controller, dict(raw["state_dict"]), raw["tokenizer_json"],
                      "lantern-edge", dict(raw.get("training") or {}), raw.get("resume_state"))
    _check_state_dict(path, ckpt)
    return ckpt


# Upstream module names -> ours (see README "Upstream checkpoints").
_UPSTREAM_RENAMES = (
    (r"^transformer\.blocks\.(\d+)\.attention\.(q|k|v|out)_proj\.", r"blocks.\1.attention.\2_proj."),
    (r"^transformer\.blocks\.(\d+)\.mlp\.w1\.", r"blocks.\1.gate_proj."),
    (r"^transformer\.blocks\.(\d+)\.mlp\.w3\.", r"blocks.\1.up_proj."),
    (r"^transformer\.blocks\.(\d+)\.mlp\.w2\.", r"blocks.\1.down_proj."),
    (r"^transformer\.blocks\.(\d+)\.ln1\.", r"blocks.\1.attn_norm."),
    (r"^transformer\.blocks\.(\d+)\.ln2\.", r"blocks.\1.mlp_norm."),
    (r"^transformer\.blocks\.(\d+)\.halting_head\.linear\.", r"blocks.\1.halting."),
    (r"^ln_f\.", "final_norm."),
    (r"^(token_embedding|position_embedding)\.", r"\1."),
)
_UPSTREAM_ROPE = re.compile(r"^transformer\.blocks\.\d+\.attention\.(inv_freq|cos_cached|sin_cached)$")


def upstream_configs(cfg: dict[str, Any]) -> tuple[ModelConfig, ControllerConfig]:
    """Translate upstream's LANTERNConfig dict into ours, mirroring its numerics exactly."""
    if not cfg.get("use_rope", True):
        raise CheckpointError("upstream checkpoints without RoPE (use_rope=False) are not supported")
    think = cfg.get("think_token_id")
    try:
        model = ModelConfig(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            num_heads=cfg["num_heads"], intermediate_size=cfg["intermediate_size"],
            num_blocks=cfg["num_blocks"], window_size=cfg["window_size"],
            max_position=cfg["max_position"], max_global_tokens=1 if think is None else 16,
            steps_base=cfg["steps_base"], steps_reasoning=cfg["steps_reasoning"],
            dropout=cfg["dropout"], use_halting=bool(cfg.get("use_adaptive_halting", False)),
            # Upstream's bos_token_id is a config default, not a vocabulary entry (id 0 of a
            # char vocab is just a character), so our runtime must not prepend it.
            bos_token_id=None, eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"), think_token_id=think,
            rope_style="upstream_pairs", norm_eps=1e-6, final_norm_eps=1e-5)
        controller = ControllerConfig(
            weight_entropy=float(cfg.get("entropy_weight", 1.0)),
            weight_dispersion=float(cfg.get("dispersion_weight", 0.5)),
            weight_p_max=-float(cfg.get("p_max_weight", -0.5)),   # upstream adds p_max_weight * p_max
            lambda_epistemic=float(cfg.get("epistemic_weight", 0.3)),
            tau_low=float(cfg.get("tau_low", 1.0)), tau_mid=float(cfg.get("tau_mid", 2.0)),
            tau_high=float(cfg.get("tau_high", 3.0)),
            top_k_dispersion=int(cfg.get("top_k_dispersion", 10)),
            mc_samples=int(cfg.get("num_bayesian_samples", 5)),
            # upstream's controller injects THINK in the very high band
            inject_think=think is not None)
    except KeyError as e:
        raise CheckpointError(f"upstream config lacks field {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"upstream config is not usable: {e}") from e
    return model, controller


def _upstream(path: Path, raw: dict[str, Any], vocab: Path | None) -> Checkpoint:
    if not isinstance(raw["config"], dict) or not isinstance(raw["model_state_dict"], dict):
        raise CheckpointError(f"{path}: upstream 'config' and 'model_state_dict' must be dicts")
    model_config, controller = upstream_configs(raw["config"])
    state, rope, unknown = {}, {}, []
    for key, tensor in raw["model_state_dict"].items():
        if key == "lm_head.weight":
            continue    # tied to token_embedding.weight (checked below)
        if _UPSTREAM_ROPE.match(key):
            rope[key.rsplit(".", 1)[1]] = tensor
            continue
        for pattern, repl in _UPSTREAM_RENAMES:
            if re.match(pattern, key):
                state[re.sub(pattern, repl, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{path} has upstream weights this loader does not know (a newer upstream layout?): "
            f"{', '.join(unknown[:6])}")
    head = raw["model_state_dict"].get("lm_head.weight")
    embed = state.get("token_embedding.weight")
    if head is not None and embed is not None and not torch.equal(head, embed):
        raise CheckpointError(f"{path}: lm_head.weight is not tied to token_embedding.weight")
    if "cos_cached" in rope:
        if rope["cos_cached"].shape[0] < model_config.max_position:
            raise CheckpointError(f"{path}: its RoPE tables are shorter than max_position="
                                  f"{model_config.max_position}")
        cos, _ = rope_tables(model_config)
        stored = rope["cos_cached"][: model_config.max_position]
        if stored.shape != cos.shape or not torch.allclose(stored, cos, atol=1e-6):
            how = (f"shape {tuple(stored.shape)}, expected {tuple(cos.shape)}"
                   if stored.shape != cos.shape
                   else f"max |difference| {float((stored - cos).abs().max()):.3g}")
            raise CheckpointError(f"{path}: its RoPE tables differ from upstream's standard ones "
                                  f"({how})")
    tokenizer_json = None
    if vocab is not None:
        tokenizer_json = _char_vocab_json(vocab, model_config.vocab_size)
    training = {k: raw[k] for k in ("step", "epoch", "best_val_loss") if k in raw}
    ckpt = Checkpoint(model_config, controller, state, tokenizer_json, "upstream", training)
    _check_state_dict(path, ckpt)
    return ckpt


def _char_vocab_json(vocab: Path, vocab_size: int) -> str:
    try:
        id_to_char = json.loads(vocab.read_text(encoding="utf-8"))["id_to_char"]
        tokenizer = char_tokenizer(id_to_char)
    except FileNotFoundError as e:
        raise CheckpointError(f"vocabulary file not found: {vocab}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{vocab} is not an upstream char vocabulary (a JSON object with an 'id_to_char' "
            f"list of single characters): {e}") from e
    if len(id_to_char) != vocab_size:
        raise CheckpointError(
            f"{vocab} lists {len(id_to_char)} characters but the checkpoint has vocab_size={vocab_size}")
    return tokenizer.to_str()


# Untrusted files drive memory: a config can ask for terabytes, a zip entry can inflate a
# thousandfold. Both are refused before anything is allocated.
MAX_PARAMETER_BYTES = 8 << 30            # float32 parameters the config may ask for
MAX_DECOMPRESSED_BYTES = 16 << 30        # what a checkpoint's zip may inflate to in total
MAX_INFLATION = 10                       # torch stores tensors uncompressed: ~1x is normal


def _check_zip(path: Path) -> None:
    """Refuse a zip checkpoint whose entries would inflate far beyond the file (a zip bomb)."""
    if not zipfile.is_zipfile(path):
        return                            # legacy (non-zip) torch files are not compressed
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    size = path.stat().st_size
    if declared > min(MAX_DECOMPRESSED_BYTES, MAX_INFLATION * size + (16 << 20)):
        raise CheckpointError(
            f"refused to load {path}: it would decompress to {declared / 2**20:.0f} MiB from "
            f"{size / 2**20:.1f} MiB on disk (torch checkpoints are stored uncompressed; this "
            f"looks like a zip bomb)")


def _estimated_parameter_bytes(cfg: ModelConfig) -> int:
    c, i = cfg.hidden_size, cfg.intermediate_size
    per_block = 4 * c * c + 3 * c * i + 8 * c
    return 4 * ((cfg.vocab_size + cfg.max_position) * c + cfg.num_blocks * per_block)


def _check_state_dict(path: Path, ckpt: Checkpoint) -> None:
    """The config against the tensors actually stored, before any model is built."""
    cfg = ckpt.model_config
    estimate = _estimated_parameter_bytes(cfg)
    if estimate > MAX_PARAMETER_BYTES:
        raise CheckpointError(
            f"{path}: its config asks for about {estimate / 2**30:.1f} GiB of parameters "
            f"(hidden_size={cfg.hidden_size}, num_blocks={cfg.num_blocks}), above the limit of "
            f"{MAX_PARAMETER_BYTES >> 30} GiB")
    stored = {int(m.group(1)) for k in ckpt.state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if stored != set(range(cfg.num_blocks)):
        raise CheckpointError(
            f"{path}: the config says num_blocks={cfg.num_blocks} but the state dict holds "
            f"blocks {sorted(stored)[:8]}; the state dict does not fit its config")
    with torch.device("meta"):            # shapes only: nothing is allocated
        expected = LanternModel(cfg).state_dict()
    missing = sorted(set(expected) - set(ckpt.state_dict))
    extra = sorted(set(ckpt.state_dict) - set(expected))
    wrong = [f"{k} {tuple(ckpt.state_dict[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items()
             if k in ckpt.state_dict and ckpt.state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:5])}")
    if wrong:
        problems.append(f"wrong shapes {'; '.join(wrong[:5])}")
    if problems:
        raise CheckpointError(
            f"{path}: the state dict does not fit its config ({' / '.join(problems)})")

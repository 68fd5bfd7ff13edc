"""Untrusted checkpoints: the config is compared with the stored tensors before anything is
built, parameter bytes and decompressed bytes are capped, and the CLIs exit 2 with one line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from lantern_edge.errors import CheckpointError
from lantern_edge.model.checkpoint import load_checkpoint


def _with_config(src: Path, dst: Path, **changes) -> Path:
    raw = torch.load(src, weights_only=True)
    raw["model_config"] = {**raw["model_config"], **changes}
    torch.save(raw, dst)
    return dst


@pytest.mark.parametrize("changes,message", [
    ({"hidden_size": 10**9}, "GiB of parameters"),
    ({"num_blocks": 10**6}, "GiB of parameters"),
    ({"num_blocks": 3}, "num_blocks=3"),
    ({"hidden_size": 4096, "num_heads": 4}, "does not fit its config"),
])
def test_hostile_config_is_refused_before_building(tmp_path, random_checkpoint, changes,
                                                   message):
    path = _with_config(random_checkpoint, tmp_path / "hostile.pt", **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_zip_bomb_is_refused_before_decompressing(tmp_path, random_checkpoint):
    import lantern_edge.model.checkpoint as ckpt_module
    path = tmp_path / "bomb.pt"
    # ZipInfo defaults to stored; compress the extra entry
    with zipfile.ZipFile(random_checkpoint) as a, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as b:
        for info in a.infolist():
            b.writestr(info.filename, a.read(info), compress_type=zipfile.ZIP_STORED)
        prefix = a.namelist()[0].split("/")[0]
        with b.open(f"{prefix}/data/999", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(64):
                f.write(chunk)
    assert path.stat().st_size < 2 << 20
    assert ckpt_module.MAX_INFLATION * path.stat().st_size < 64 << 20
    with pytest.raises(CheckpointError, match="zip bomb"):
        load_checkpoint(path)


def test_export_of_a_hostile_checkpoint_exits_2_with_one_line(tmp_path, random_checkpoint,
                                                              capsys):
    from lantern_edge.export.cli import main
    path = _with_config(random_checkpoint, tmp_path / "hostile.pt", hidden_size=10**9)
    assert main([str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lantern-export: ") and err.count("\n") == 1 and "GiB" in err


def test_bench_with_a_refused_checkpoint_fails(tmp_path, random_checkpoint, random_artifacts,
                                               capsys):
    from lantern_edge.benchmark.cli import main
    path = _with_config(random_checkpoint, tmp_path / "hostile.pt", num_blocks=10**6)
    code = main(["--model", str(random_artifacts), "--checkpoint", str(path), "--tokens", "4",
                 "--prompt-lengths", "4", "--repeats", "1", "--configs", "pytorch-kv",
                 "-o", str(tmp_path / "bench")])
    assert code == 2
    assert "GiB of parameters" in capsys.readouterr().err


def test_invalid_tokenizer_json_is_refused_at_export(tmp_path, random_checkpoint, capsys):
    from lantern_edge.export.cli import main
    raw = torch.load(random_checkpoint, weights_only=True)
    raw["tokenizer_json"] = '{"not": "a tokenizer"}'
    torch.save(raw, tmp_path / "badtok.pt")
    assert main([str(tmp_path / "badtok.pt"), "-o", str(tmp_path / "out")]) == 2
    assert "not a valid tokenizers JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

"""Interrupted writes: a kill during quantize or export never destroys a usable model.

The kill is real and deterministic: the export or quantize runs in a child process with an
audit hook (sys.addaudithook) that watches file opens and renames. At the chosen moment it
either lowers RLIMIT_FSIZE so that the next write past 100 bytes raises SIGXFSZ (the process is
killed in the middle of writing that file), or exits at once with os._exit (killed between two
steps). The parent then checks what is left on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lantern_edge import Runtime
from lantern_edge.errors import ArtifactError

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, signal, sys
spec = json.loads(sys.argv[1])
seen = 0

def hook(event, args):
    global seen
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                   else bool(flags & (os.O_WRONLY | os.O_RDWR)))
        if writing and spec["open"] and spec["open"] in os.path.basename(os.fsdecode(args[0])):
            seen += 1
            if seen == spec["nth"]:
                if spec["how"] == "exit":
                    os._exit(9)
                signal.signal(signal.SIGXFSZ, signal.SIG_DFL)   # Python ignores it by default
                resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
    if event == "os.rename" and spec["rename_to"] and \
            os.path.basename(os.fsdecode(args[1])) == spec["rename_to"] and \
            ".partial-" in os.fsdecode(args[0]):
        os._exit(9)

if spec.get("no_exchange"):
    import lantern_edge.export.atomic as atomic
    atomic._exchange = lambda a, b: False
sys.addaudithook(hook)
if spec["job"] == "quantize":
    from lantern_edge.quantization.api import quantize_artifacts
    quantize_artifacts(spec["root"], evaluate=False, force=spec.get("force", False))
else:
    from lantern_edge.export.api import export_checkpoint
    export_checkpoint(spec["checkpoint"], spec["root"], force=spec.get("force", False))
print("finished")
"""


def run_killed(**spec) -> subprocess.CompletedProcess:
    spec = {"open": None, "nth": 1, "how": "fsize", "rename_to": None, **spec}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True,
                          text=True, timeout=600, env=env)


def assert_killed(result: subprocess.CompletedProcess) -> None:
    assert "finished" not in result.stdout, "the kill never happened"
    assert result.returncode in (9, -signal.SIGXFSZ), result.stderr[-2000:]


@pytest.fixture
def art(tmp_path, random_artifacts) -> Path:
    out = tmp_path / "art"
    shutil.copytree(random_artifacts, out)
    return out


# --- 2. an interrupted quantize destroys nothing --------------------------------------------------

@pytest.mark.parametrize("target,nth", [("lantern.json", 1), ("lantern.json", 2),
                                        ("MODEL_CARD.md", 1)])
def test_quantize_killed_mid_write_leaves_fp32_usable_and_can_rerun(art, target, nth):
    expected = Runtime(art).generate([5, 6, 7], max_new_tokens=8, adaptive=False).token_ids
    assert_killed(run_killed(job="quantize", root=str(art), open=target, nth=nth))
    runtime = Runtime(art)                                     # fp32 still loads and runs
    assert runtime.generate([5, 6, 7], max_new_tokens=8, adaptive=False).token_ids == expected
    from lantern_edge.quantization.api import quantize_artifacts
    recorded = (target, nth) != ("lantern.json", 1)           # INT8 complete and recorded
    quantize_artifacts(art, evaluate=False, force=recorded)
    Runtime(art, precision="int8").generate([5, 6, 7], max_new_tokens=4)
    assert not [p.name for p in art.iterdir() if p.name.startswith(".")]


# --- 4. interrupted exports -------------------------------------------------------------------------

def test_export_killed_before_parity_leaves_a_refused_partial_that_the_next_export_removes(
        tmp_path, random_checkpoint):
    out = tmp_path / "exported"
    # MODEL_CARD.md is written right after parity: kill there, with parity not yet recorded
    assert_killed(run_killed(job="export", checkpoint=str(random_checkpoint), root=str(out),
                             open="MODEL_CARD.md", how="exit"))
    assert not out.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".exported.partial-")]
    assert len(partial) == 1
    assert json.loads((partial[0] / "lantern.json").read_text())["parity"] == {}
    with pytest.raises(ArtifactError, match="records no parity"):
        Runtime(partial[0])
    from lantern_edge.export.api import export_checkpoint
    export_checkpoint(random_checkpoint, out)
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]
    Runtime(out)


@pytest.mark.parametrize("exchange", [True, False])
def test_export_force_killed_at_the_swap_never_leaves_nothing(tmp_path, random_artifacts,
                                                              random_checkpoint, exchange):
    out = tmp_path / "exported"
    shutil.copytree(random_artifacts, out)
    old_manifest = (out / "lantern.json").read_text()
    result = run_killed(job="export", checkpoint=str(random_checkpoint), root=str(out),
                        force=True, rename_to="exported", no_exchange=not exchange)
    if exchange:        # one atomic exchange: no rename to kill between
        assert "finished" in result.stdout, result.stderr[-2000:]
    else:               # two renames: killed between them; the next export puts the old back
        assert_killed(result)
        from lantern_edge.export.atomic import clean_stale
        clean_stale(tmp_path, "exported")
        assert (out / "lantern.json").read_text() == old_manifest
    Runtime(out)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]

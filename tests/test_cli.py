"""The command line as a newcomer meets it: --version, help for every flag, a prompt from
stdin, and a runtime-only install (no torch, no onnx) where each command that needs an extra
names it in one line, while `quantize` runs without torch."""

import argparse
import importlib
import shutil
import subprocess
import sys

import pytest

from lantern_edge.version import __version__

# Runs the `lantern-edge` CLI in a process where importing the listed top-level modules fails,
# as on a machine where they are not installed. argv: blocked modules (comma-separated), then
# the CLI's arguments. Prints the blocked modules that were imported anyway (none expected).
BLOCKED_CLI = """
import sys
blocked = sys.argv[1].split(",")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Blocker())
from lantern_edge.cli import main
code = main(sys.argv[2:])
print("imported:", sorted(m for m in sys.modules if m.split(".")[0] in blocked))
sys.exit(code)
"""


def run_cli(*args, blocked: str = "", stdin: str | None = None) -> subprocess.CompletedProcess:
    if blocked:
        argv = [sys.executable, "-c", BLOCKED_CLI, blocked, *args]
    else:
        argv = [sys.executable, "-m", "lantern_edge.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=600)


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"lantern-edge {__version__}"


# (module, parser factory) of every command, lantern-export included
PARSERS = [("lantern_edge.model.train_cli", "build_parser"),
           ("lantern_edge.model.corpus_cli", "build_parser"),
           ("lantern_edge.runtime.cli", "_parser"),
           ("lantern_edge.quantization.cli", "build_parser"),
           ("lantern_edge.evaluation.cli", "build_parser"),
           ("lantern_edge.benchmark.cli", "_parser"),
           ("lantern_edge.export.cli", "_parser")]


@pytest.mark.parametrize("module, factory", PARSERS, ids=[m.split(".", 1)[1] for m, _ in PARSERS])
def test_every_flag_has_help_and_shows_its_default_once(module, factory):
    parser = getattr(importlib.import_module(module), factory)()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{parser.prog} {name} has no help text"
        shown = formatter._get_help_string(action) % {"default": action.default}
        assert shown.count("(default") <= 1, f"{parser.prog} {name}: {shown}"
        takes_value = action.option_strings and action.nargs != 0
        if takes_value:
            assert "(default" in shown, f"{parser.prog} {name} shows no default: {shown}"
        assert "None" not in shown, f"{parser.prog} {name} shows a bare None: {shown}"


def test_prompt_from_stdin_and_fixed_path_trace_without_nan():
    args = ("--max-new-tokens", "6", "--no-adaptive", "--seed", "0")
    from_argv = run_cli("generate", "def f(x):", *args, "--trace")
    from_stdin = run_cli("generate", "-", *args, "--trace", stdin="def f(x):")
    assert from_argv.returncode == 0, from_argv.stderr
    summary = from_argv.stdout.splitlines()
    assert from_stdin.stdout.splitlines()[:-1] == summary[:-1]      # the last line: tok/s
    fixed = next(line for line in summary if line.startswith("fixed"))
    assert fixed.split()[1:3] == ["6", "-"] and "nan" not in from_argv.stdout


def test_generate_repetition_flags_reach_the_runtime():
    import json

    def ids(*flags):
        proc = run_cli("generate", "class Stack:", "--max-new-tokens", "48", "--seed", "0",
                       "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["token_ids"]

    def repeated_trigrams(tokens):
        grams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
        return len(grams) - len(set(grams))

    plain = ids("--repetition-penalty", "1", "--no-repeat-ngram-size", "0")
    assert repeated_trigrams(plain) > 0          # the shipped model repeats itself greedily
    assert repeated_trigrams(ids("--repetition-penalty", "1", "--no-repeat-ngram-size", "3")) == 0
    assert ids() == ids("--repetition-penalty", "1.15", "--no-repeat-ngram-size", "6") != plain
    bad = run_cli("generate", "x", "--deep-trigger", "probe")
    assert bad.returncode == 2 and "needs a model with a depth probe" in bad.stderr


@pytest.mark.parametrize("command, module, extra", [
    (["train", "--max-steps", "1"], "torch", "export"),
    (["eval"], "torch", "export"),
    (["quantize", "no-such-dir"], "onnx", "quantize"),
])
def test_commands_name_the_extra_they_need(command, module, extra):
    proc = run_cli(*command, blocked="torch,onnx,onnxscript,matplotlib")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lantern-edge {command[0]} needs {module}: pip install "
        + ("torch==2.13.0 " if extra == "export" else "") + f'"lantern-edge[{extra}]"']


def test_lantern_export_names_its_extra():
    code = BLOCKED_CLI.replace("from lantern_edge.cli import main",
                               "from lantern_edge.export.cli import main")
    proc = subprocess.run([sys.executable, "-c", code, "torch,onnx", "model.pt"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ('lantern-export needs onnx: '
                                   'pip install torch==2.13.0 "lantern-edge[export]"')


def test_quantize_runs_without_torch(tmp_path, tiny_artifacts):
    root = shutil.copytree(tiny_artifacts, tmp_path / "art")
    proc = run_cli("quantize", str(root), blocked="torch")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("imported: []")
    assert "top1_agreement" in proc.stdout
    assert (root / "int8" / "block0.onnx").is_file()

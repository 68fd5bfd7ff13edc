"""The corpora: real stdlib sources, tests/vendored/generated code excluded, split by file; the
closure corpus from installed distributions' metadata (a tiny fake site stands in for it)."""

import json
import re
from pathlib import Path

import pytest

from lantern_edge.model.corpus import (FILE_SEPARATOR, is_excluded, is_generated, is_validation,
                                       list_files, load_corpus, stdlib_root)
from lantern_edge.model.corpus_cli import SHIPPED_TOKENIZER, main


def test_stdlib_files_exclude_tests_vendored_and_installed_code():
    relative = [f.relative_to(stdlib_root()).as_posix() for f in list_files(stdlib_root())]
    assert {"argparse.py", "json/decoder.py", "asyncio/events.py"} <= set(relative)
    for path in relative:
        parts = path.split("/")
        assert not any(p in ("test", "tests", "idle_test", "site-packages", "_bundled", "_vendor")
                       for p in parts), path
        assert not parts[-1].startswith("test_"), path
    assert "unittest/case.py" in relative          # the unittest library itself is kept


@pytest.mark.parametrize("path, excluded", [
    ("lib2to3/tests/data/bom.py", True), ("tkinter/test/test_ttk/test_style.py", True),
    ("unittest/test/testmock/support.py", True), ("pkg/test_utils/helpers.py", True),
    ("pkg/io_test.py", True), ("site-packages/pip/_vendor/rich/x.py", True),
    ("ensurepip/_bundled/x.py", True), ("pkg/conftest.py", True),
    ("unittest/case.py", False), ("email/contest.py", False), ("attestation.py", False),
])
def test_exclusion_rule(path, excluded):
    assert is_excluded(Path(path)) is excluded


def test_stdlib_split_is_by_file_deterministic_and_skips_generated_tables():
    corpus = load_corpus(max_chars=200_000)
    again = load_corpus(max_chars=200_000)
    assert corpus.train == again.train and corpus.val == again.val
    assert set(corpus.train).isdisjoint(corpus.val)
    d = corpus.description
    assert d["split"].startswith("by file") and d["files_val"] >= 1
    assert d["chars_train"] == sum(map(len, corpus.train)) >= 200_000
    assert d["skipped"]["generated"] >= 1
    assert not any(is_generated(t) for t in corpus.train + corpus.val)


def test_custom_directory_split_by_file(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("assert False\n")
    (tmp_path / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    corpus = load_corpus([tmp_path], val_fraction=0.2)
    texts = corpus.train + corpus.val
    assert len(texts) == 40 and all("assert False" not in t for t in texts)
    assert corpus.description["skipped"]["not_utf8"] == 1
    expected_val = {f"m{i}.py" for i in range(40) if is_validation(f"m{i}.py", 0.2)}
    assert 0 < len(expected_val) < 40
    assert sorted(corpus.val) == sorted(
        (tmp_path / name).read_text() for name in expected_val)
    listed = load_corpus([tmp_path / f"m{i}.py" for i in range(10)], val_fraction=0.3)
    assert len(listed.train) + len(listed.val) == 10


def test_cli_writes_a_prepared_corpus_that_loads_back(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"mod{i}.py").write_text(f"x{i} = {i}\n\n\ny = 'é'\n")
    out = tmp_path / "out"
    assert main(["--source", str(src), "--val-fraction", "0.2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "files_train" in printed and "train.txt" in printed
    direct = load_corpus([src], val_fraction=0.2)
    assert (out / "train.txt").read_text(encoding="utf-8") == FILE_SEPARATOR.join(direct.train)
    prepared = load_corpus([out])
    assert prepared.train == direct.train and prepared.val == direct.val
    assert prepared.description["prepared_from"]["files_val"] == len(direct.val)


def test_missing_or_tiny_corpus_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="corpus file\\(s\\) not found"):
        load_corpus([tmp_path / "nope.txt", tmp_path / "nope2.txt"])
    (tmp_path / "only.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="too small to split"):
        load_corpus([tmp_path])
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(val_fraction=1.5)
    assert main(["--source", str(tmp_path / "nope.txt"), str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err


# --- the closure corpus: installed packages resolved from metadata ---------------------------

def _fake_distribution(site: Path, name: str, requires: list[str], files: dict[str, str],
                       licence: str = "License-Expression: MIT") -> None:
    """A real installed-distribution layout (dist-info with METADATA and RECORD) under site."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0", licence]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(metadata) + "\n")
    for relative, text in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text(text)
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in [*files, f"{info.name}/METADATA"]))


@pytest.fixture
def fake_site(tmp_path):
    """root[x] -> alpha, root[y] -> delta, beta[fast] -> gamma; plus distributions that must
    stay out."""
    site = tmp_path / "site"
    module = lambda i: f"def f{i}(x):\n    return x * {i}\n"  # noqa: E731
    _fake_distribution(site, "fakeroot", [
        "alpha>=1; extra == 'x'", "Beta[fast]", "unwanted; extra == 'other'", "pip",
        "never; python_version < '3'", "absent; extra == 'x'", "fakeroot[y]; extra == 'x'",
        "delta; extra == 'y'"], {"fakeroot/__init__.py": "r = 1\n"})
    _fake_distribution(site, "alpha", [], {
        **{f"alpha/m{i}.py": module(i) for i in range(30)},
        "alpha/tests/test_m.py": "assert False\n", "alpha/shared.py": "SHARED = 1\n",
        "alpha/table.py": "# automatically generated, do not edit\nT = [1]\n"})
    _fake_distribution(site, "beta", ["gamma; extra == 'fast'", "unwanted; extra == 'slow'"], {
        **{f"beta/b{i}.py": module(100 + i) for i in range(30)}, "beta/shared.py": "SHARED = 1\n"},
        licence="License: BSD\n" + "Classifier: License :: OSI Approved :: BSD License")
    table = f"C = {[i / 7 for i in range(50)]}\n"          # mostly digits: data, not code
    _fake_distribution(site, "Gamma", [], {**{f"gamma/g{i}.py": module(200 + i) for i in range(5)},
                                           "gamma/colours.py": table},
                       licence="License: A very long licence text\n that spans lines\n"
                               "Classifier: License :: OSI Approved :: MIT License")
    _fake_distribution(site, "delta", [], {"delta.py": "DELTA = 'an extra of an extra'\n"})
    for name in ("unwanted", "never", "pip"):
        _fake_distribution(site, name, [], {f"{name}/__init__.py": f"{name.upper()} = 1\n"})
    return site


def test_closure_follows_extras_and_markers_and_skips_packaging_tools(fake_site):
    from lantern_edge.model.closure import dependency_closure
    dists, missing = dependency_closure("fakeroot", ("x",), path=[str(fake_site)])
    assert [d.metadata["Name"] for d in dists] == ["alpha", "beta", "delta", "Gamma"]
    assert missing == ["absent"]
    dists, missing = dependency_closure("fakeroot", (), path=[str(fake_site)])
    assert [d.metadata["Name"] for d in dists] == ["beta", "Gamma"] and missing == []
    with pytest.raises(ValueError, match="not installed"):
        dependency_closure("nosuchroot", (), path=[str(fake_site)])


def _closure_corpus(site, monkeypatch, **kwargs):
    from lantern_edge.model import corpus as corpus_module
    from lantern_edge.model.closure import closure_sources
    monkeypatch.setattr(corpus_module, "stdlib_source", lambda: corpus_module.Source(
        "stdlib", "3", "PSF-2.0", ()))      # the real stdlib is covered above; keep this fast
    monkeypatch.setattr(corpus_module, "closure_sources", lambda requirement, keep: closure_sources(
        requirement, keep, path=[str(site)]))
    return load_corpus(offline="closure", closure="fakeroot[x]", val_fraction=0.2, **kwargs)


def test_closure_corpus_manifest_is_deduplicated_reproducible_and_content_hashed(
        fake_site, monkeypatch):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(SHIPPED_TOKENIZER))
    corpus = _closure_corpus(fake_site, monkeypatch, tokenizer=tokenizer)
    again = _closure_corpus(fake_site, monkeypatch, tokenizer=tokenizer)
    assert json.dumps(corpus.description) == json.dumps(again.description)
    d = corpus.description
    rows = {s["source"]: s for s in d["sources"]}
    assert list(rows) == ["stdlib", "alpha", "beta", "delta", "gamma"]
    # alpha: 30 modules + shared.py; its tests and generated table are out, as is gamma's table
    # of numbers; beta's copy of shared.py is a duplicate of alpha's (first in source order wins)
    assert (rows["alpha"]["files"], rows["beta"]["files"], rows["gamma"]["files"]) == (31, 30, 5)
    assert rows["beta"]["duplicates"] == 1 and d["skipped"]["generated"] == 2
    assert (rows["alpha"]["licence"], rows["beta"]["licence"], rows["gamma"]["licence"]) == (
        "MIT", "BSD", "MIT License")
    assert rows["alpha"]["version"] == "1.0" and d["missing"] == ["absent"]
    texts = corpus.train + corpus.val
    assert len(texts) == len(set(texts)) == 67
    assert sum(s["bytes"] for s in d["sources"]) == sum(len(t.encode()) for t in texts)
    assert sum(s["tokens"] for s in d["sources"]) == sum(
        len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
    kept = [*(f"alpha/m{i}.py" for i in range(30)), "alpha/shared.py", "delta.py",
            *(f"beta/b{i}.py" for i in range(30)), *(f"gamma/g{i}.py" for i in range(5))]
    expected_val = [r for r in kept if is_validation(r, 0.2)]
    assert 0 < len(expected_val) == sum(s["files_val"] for s in d["sources"])
    assert sorted(corpus.val) == sorted((fake_site / r).read_text() for r in expected_val)
    (fake_site / "gamma" / "g0.py").write_text("changed = True\n")
    changed = _closure_corpus(fake_site, monkeypatch).description
    assert changed["content_sha256"] != d["content_sha256"]


def test_corpus_cli_prints_sizes_per_source_and_rejects_bad_input(fake_site, monkeypatch,
                                                                  tmp_path, capsys):
    monkeypatch.syspath_prepend(str(fake_site))
    from lantern_edge.model import corpus as corpus_module
    monkeypatch.setattr(corpus_module, "stdlib_source", lambda: corpus_module.Source(
        "stdlib", "3", "PSF-2.0", ()))
    out = tmp_path / "out"
    assert main(["--offline-corpus", "closure", "--closure-of", "fakeroot[x]",
                 "--val-fraction", "0.2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^alpha +1\.0 +MIT +31 ", printed, re.MULTILINE), printed
    assert re.search(r"^total +67 ", printed, re.MULTILINE)
    assert "missing requirements: absent" in printed
    manifest = json.loads((out / "corpus.json").read_text())
    assert manifest["tokens_counted_with"]["vocab_size"] == 4096
    assert [s["source"] for s in manifest["sources"]] == ["stdlib", "alpha", "beta", "delta",
                                                          "gamma"]
    (tmp_path / "file").write_text("x")
    for argv, problem in ([["-o", str(tmp_path / "file" / "sub")], "cannot create the output"],
                          [["--offline-corpus", "closure", "--closure-of", "x[["],
                           "bad requirement"],
                          [["--offline-corpus", "web"], "invalid choice"],
                          [["--offline-corpus", "closure", "--closure-of", "nosuch"],
                           "not installed"],
                          [["--source", str(tmp_path), "--offline-corpus", "closure"],
                           "exclude each other"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err and err.startswith("lantern-edge corpus:")


def test_trainer_reads_the_closure_corpus_when_asked(fake_site, monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch")             # the trainer; the ARM64 check runs this file without
    from lantern_edge.model import corpus as corpus_module
    from lantern_edge.model.checkpoint import load_checkpoint
    from lantern_edge.model.closure import closure_sources
    from lantern_edge.model.train_cli import main as train_main
    monkeypatch.setattr(corpus_module, "stdlib_source", lambda: corpus_module.Source(
        "stdlib", "3", "PSF-2.0", ()))
    # the trainer asks for the project's own closure; this stands a tiny one in for it
    monkeypatch.setattr(corpus_module, "closure_sources", lambda requirement, keep: closure_sources(
        "fakeroot[x]", keep, path=[str(fake_site)]))
    out = tmp_path / "c.pt"
    assert train_main(["--preset", "tiny", "--offline-corpus", "closure", "--val-fraction", "0.3",
                       "--vocab-size", "300", "--hidden-size", "32", "--intermediate-size", "64",
                       "--seq-len", "16", "--batch-size", "2", "--max-steps", "2",
                       "--eval-interval", "2", "--eval-batches", "1", "-o", str(out), "-q"]) == 0
    training = load_checkpoint(out).training
    assert training["train_config"]["offline_corpus"] == "closure"
    assert [s["source"] for s in training["data"]["sources"]] == [
        "stdlib", "alpha", "beta", "delta", "gamma"]
    capsys.readouterr()
    for argv, message in ([["--offline-corpus", "web"], "invalid choice: 'web'"],
                          [["--offline-corpus", "closure", "--corpus", str(tmp_path)],
                           "without corpus paths"]):
        assert train_main(["--preset", "tiny", "-q", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err

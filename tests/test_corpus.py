"""The default corpus: real stdlib sources, tests/vendored/generated code excluded, split by file."""

from pathlib import Path

import pytest

from lantern_edge.model.corpus import (FILE_SEPARATOR, is_excluded, is_generated, is_validation,
                                       list_files, load_corpus, main, stdlib_root)


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

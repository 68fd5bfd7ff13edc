"""The default corpus: real stdlib sources, tests and vendored code excluded, split by file."""

import pytest

from lantern_edge.model.corpus import is_validation, list_files, load_corpus, stdlib_root


def test_stdlib_files_exclude_tests_and_installed_packages():
    files = list_files(stdlib_root())
    relative = [f.relative_to(stdlib_root()).as_posix() for f in files]
    assert "argparse.py" in relative and "json/decoder.py" in relative
    assert not any(r.startswith(("test/", "site-packages/")) or "/test/" in r or "/tests/" in r
                   or r.rsplit("/", 1)[-1].startswith("test_") for r in relative)
    assert not any("idle_test" in r or "_bundled" in r for r in relative)


def test_split_is_by_file_and_deterministic():
    corpus = load_corpus(max_chars=300_000)
    again = load_corpus(max_chars=300_000)
    assert corpus.train == again.train and corpus.val == again.val
    assert set(corpus.train).isdisjoint(corpus.val)
    assert corpus.description["files_val"] >= 1 and corpus.description["split"].startswith("by file")


def test_custom_directory_and_files(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("assert False\n")
    corpus = load_corpus([tmp_path], val_fraction=0.2)
    assert len(corpus.train) + len(corpus.val) == 40
    assert all("assert False" not in t for t in corpus.train + corpus.val)
    assert {is_validation(f"m{i}.py", 0.2) for i in range(40)} == {True, False}
    listed = load_corpus([tmp_path / f"m{i}.py" for i in range(10)], val_fraction=0.3)
    assert len(listed.train) + len(listed.val) == 10


def test_missing_or_tiny_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="corpus file\\(s\\) not found"):
        load_corpus([tmp_path / "nope.txt", tmp_path / "nope2.txt"])
    (tmp_path / "only.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="too small to split"):
        load_corpus([tmp_path])

"""Runtime objects from verified bytes: ONNX Runtime sessions and the tokenizer.

A session is created from the graph's bytes in `Artifacts.blobs`, its external data handed over
from the same verified buffers (ONNX Runtime copies what it needs while the session is built),
so nothing is opened twice and nothing on disk is memory-mapped under a running model.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

from ..errors import ArtifactError, TokenizerError
from .artifacts import Artifacts
from .manifest_check import REBUILD


def create_session(artifacts: Artifacts, path: Path, options: ort.SessionOptions,
                   providers: list[str], precision: str = "fp32",
                   graph: bytes | None = None) -> ort.InferenceSession:
    """An InferenceSession of the verified graph at `path` (`Artifacts.graph`); graph: an edit
    of those verified bytes to load instead (same external data, same error messages)."""
    name = Path(path).relative_to(artifacts.root).as_posix()
    external = artifacts.external_data(precision, name)
    if external:
        names = list(external)
        options.add_external_initializers_from_files_in_memory(
            names, [external[n] for n in names], [len(external[n]) for n in names])
    try:
        return ort.InferenceSession(artifacts.blobs[name] if graph is None else graph, options,
                                    providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(f"onnxruntime cannot load {artifacts.root / name}: {e}") from e


def verified_bytes(artifacts: Artifacts, path: Path) -> bytes:
    """The verified bytes of the graph at `path` (before `Artifacts.blobs` is cleared)."""
    return artifacts.blobs[Path(path).relative_to(artifacts.root).as_posix()]


def is_rust_panic(error: BaseException) -> bool:
    """tokenizers (Rust) raises pyo3's PanicException, which derives from BaseException."""
    return type(error).__name__ == "PanicException"


def parse_tokenizer(text: str, vocab_size: int, what: str) -> Tokenizer:
    """A Tokenizer from its JSON, whose every id exists in a model of vocab_size tokens.
    Raises TokenizerError naming `what`."""
    try:
        tokenizer = Tokenizer.from_str(text)
    except BaseException as e:   # plain Exception, or a Rust panic
        if not isinstance(e, Exception) and not is_rust_panic(e):
            raise
        raise TokenizerError(f"{what} is not a valid tokenizers JSON: {e}") from e
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if largest >= vocab_size:
        raise TokenizerError(f"{what} has token ids up to {largest} but the model's vocab_size "
                             f"is {vocab_size}: the tokenizer does not belong to this model")
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """The ids of the tokenizer's special tokens (they add no text when decoded)."""
    return frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)


def load_tokenizer(artifacts: Artifacts) -> Tokenizer:
    """The verified tokenizer of the artifacts (parse_tokenizer)."""
    name = artifacts.manifest["tokenizer"]
    try:
        return parse_tokenizer(artifacts.blobs[name].decode("utf-8", errors="replace"),
                               artifacts.model_config.vocab_size, str(artifacts.root / name))
    except TokenizerError as e:
        raise ArtifactError(f"{e}; {REBUILD}") from e

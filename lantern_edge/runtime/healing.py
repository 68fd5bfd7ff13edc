"""Token healing for prompts that end in whitespace.

Byte-level BPE merges a newline with the indentation after it ("\\n    " is one token), so the
prompt "def f(x):\\n" ends on a bare "\\n" token. In training text a bare "\\n" token is
followed by a new top-level line, almost never by an indented body, so the model starts a new
`def` instead of writing the function. Healing backs up the prompt's trailing whitespace-only
tokens and makes the model regenerate that text itself: until the removed text is covered, a
generated token must either start with what is left of it ("\\n    " for "\\n") or be a prefix
of it. The removed text is already in the prompt, so it is not repeated in the output text;
`token_ids` keep the generated ids as they are (their decoding starts with the removed text).

Only whitespace is backed up: it is where the tokenizer's merges make the prompt's last token
unlike anything the model saw there, and prompts that end otherwise keep their exact tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def token_texts(decode: Callable[[list[int]], str], size: int) -> list[str]:
    """The text of every id below size, decoded alone (special tokens decode to "")."""
    return [decode([i]) for i in range(size)]


def heal(ids: np.ndarray, decode: Callable[[list[int]], str],
         vocab_size: int) -> tuple[np.ndarray, TokenHealing | None]:
    """The prompt without its trailing whitespace-only tokens (the first token always stays:
    BOS, or the only token), and the healing that regenerates them; (ids, None) when the
    prompt does not end in whitespace.

    decode: ids -> text with special tokens skipped (a tokenizers Tokenizer's decode).
    """
    end = len(ids)
    while end > 1 and _is_space(decode([int(ids[end - 1])])):
        end -= 1
    if end == len(ids):
        return ids, None
    removed = decode([int(i) for i in ids[end:]])
    return ids[:end], TokenHealing(removed, token_texts(decode, vocab_size))


def _is_space(text: str) -> bool:
    return bool(text) and text.isspace()


class TokenHealing:
    """The constraint on the first generated tokens, and the trimming of their text."""

    def __init__(self, removed: str, texts: Sequence[str]):
        self.removed = removed
        self.pending = removed          # removed text not yet regenerated
        self.trim = len(removed)        # characters of output text still to drop
        self.texts = texts
        self._allowed: dict[str, np.ndarray] = {}

    def allowed(self) -> np.ndarray:
        """bool [V]: ids whose text starts with the pending text or is a prefix of it."""
        p = self.pending
        if p not in self._allowed:
            self._allowed[p] = np.fromiter(
                (bool(t) and (t.startswith(p) or p.startswith(t)) for t in self.texts),
                dtype=bool, count=len(self.texts))
        return self._allowed[p]

    def constrain(self, logits: np.ndarray) -> np.ndarray:
        """logits [V] with every id the pending text rules out at -inf (unchanged once done).

        Never empty: the first removed token itself is always allowed.
        """
        if not self.pending:
            return logits
        return np.where(self.allowed(), logits, np.float32(-np.inf)).astype(logits.dtype)

    def accept(self, token: int, piece: str) -> str:
        """Advance past the chosen token; its text piece without what the prompt already had."""
        if self.pending:
            text = self.texts[token] if token < len(self.texts) else ""
            self.pending = self.pending[len(text):] if self.pending.startswith(text) else ""
        if self.trim and piece:
            cut = min(self.trim, len(piece))
            piece, self.trim = piece[cut:], self.trim - cut
        return piece

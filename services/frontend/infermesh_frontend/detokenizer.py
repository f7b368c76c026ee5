"""Incremental detokenization: token ids in, text deltas out, one completion at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded in front of the output so the first output token gets its spacing right
# (SentencePiece drops the leading '▁' of the first token it decodes).
CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas whose concatenation is the full text.

    Decoding token by token is wrong twice over: a UTF-8 character may span several byte-level
    tokens, and SentencePiece decoders treat the first token of a decode specially. So each step
    decodes a short window of earlier tokens (prefix_offset..read_offset) with and without the new
    ones and emits the difference; while the window ends in U+FFFD (an incomplete character) the
    text is held back until a later token completes it or the completion ends.
    """

    def __init__(self, decode: Callable[[list[int]], str], context_ids: Sequence[int] = ()) -> None:
        self._decode = decode
        context = self._clean_context(list(context_ids[-CONTEXT_TOKENS:]))
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)

    def _clean_context(self, context: list[int]) -> list[int]:
        # The window must start on a character boundary: a decode that starts inside a multi-byte
        # character shows U+FFFD there (byte-fallback decoders even turn the whole byte run into
        # U+FFFD), and the output's first characters would be judged against that garbage.
        for start in range(len(context)):
            if not self._decode(context[start:]).startswith(REPLACEMENT_CHAR):
                return context[start:]
        return []

    def add_tokens(self, token_ids: Sequence[int]) -> str:
        """Appends `token_ids` and returns the text that is now certain (possibly empty)."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def finish(self) -> str:
        """Returns whatever was held back; an incomplete character at the very end stays U+FFFD."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""

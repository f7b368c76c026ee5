"""Incremental detokenization: token ids in, text deltas out, one completion at a time.

StreamDetokenizer runs the window algorithm in Rust (`tokenizers.decoders.DecodeStream`);
IncrementalDetokenizer is the same algorithm over any `decode` function, the fallback for a
`tokenizers` without DecodeStream. Both emit the same deltas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from tokenizers import Tokenizer

try:
    from tokenizers.decoders import DecodeStream
except ImportError:  # tokenizers < 0.21
    DecodeStream = None

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded in front of the output so the first output token gets its spacing right
# (SentencePiece drops the leading '▁' of the first token it decodes).
CONTEXT_TOKENS = 6


class Detokenizer(Protocol):
    def add_tokens(self, token_ids: Sequence[int]) -> str:
        """Appends `token_ids` and returns the text that is now certain (possibly empty)."""
        ...

    def finish(self) -> str:
        """Returns whatever was held back; an incomplete character at the very end stays U+FFFD."""
        ...


def clean_context(decode: Callable[[list[int]], str], context: list[int]) -> list[int]:
    """The part of `context` that starts and ends on a character boundary.

    A decode that starts inside a multi-byte character shows U+FFFD there (byte-fallback decoders
    even turn the whole byte run into U+FFFD), and the output's first characters would be judged
    against that garbage. A prompt given as token ids may also end inside a character: its text
    then ends in U+FFFD, which the output's first bytes would silently replace (and the character
    be lost); without those tokens the output's orphan bytes show as U+FFFD instead.
    """
    for start in range(len(context)):
        if not decode(context[start:]).startswith(REPLACEMENT_CHAR):
            context = context[start:]
            break
    else:
        return []
    while context and decode(context).endswith(REPLACEMENT_CHAR):
        context = context[:-1]
    return context


def new_detokenizer(
    tokenizer: Tokenizer, context_ids: Sequence[int], skip_special_tokens: bool = True
) -> Detokenizer:
    """The fastest detokenizer this `tokenizers` offers for one completion after `context_ids`."""
    if DecodeStream is not None:
        return StreamDetokenizer(tokenizer, context_ids, skip_special_tokens)
    return IncrementalDetokenizer(
        lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens), context_ids
    )


class StreamDetokenizer:
    """IncrementalDetokenizer's algorithm in `tokenizers`' DecodeStream: one Rust call per step
    instead of two Python-side decodes of the window."""

    def __init__(self, tokenizer: Tokenizer, context_ids: Sequence[int], skip_special_tokens: bool) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        context = clean_context(self._decode, list(context_ids[-CONTEXT_TOKENS:]))
        self._stream = DecodeStream(ids=context, skip_special_tokens=skip_special_tokens)
        # Tokens whose text DecodeStream holds back, and the ones before them (finish() needs both).
        self._pending: list[int] = []
        self._before_pending: list[int] = context

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add_tokens(self, token_ids: Sequence[int]) -> str:
        if not token_ids:
            return ""
        text = self._stream.step(self._tokenizer, list(token_ids))
        self._pending.extend(token_ids)
        if text is None:
            return ""
        self._before_pending = (self._before_pending + self._pending)[-CONTEXT_TOKENS:]
        self._pending = []
        return text

    def finish(self) -> str:
        if not self._pending:
            return ""
        prefix_text = self._decode(self._before_pending)
        new_text = self._decode(self._before_pending + self._pending)
        self._before_pending = (self._before_pending + self._pending)[-CONTEXT_TOKENS:]
        self._pending = []
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


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
        context = clean_context(decode, list(context_ids[-CONTEXT_TOKENS:]))
        self._ids: list[int] = context
        self._prefix_offset = 0
        self._read_offset = len(context)

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

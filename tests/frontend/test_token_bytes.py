"""Raw token bytes: joined over a completion's tokens they rebuild its text exactly, also where a
token holds only part of a multi-byte character."""

from __future__ import annotations

import pytest
from infermesh_frontend.token_bytes import TokenBytes

from tests.frontend.tokenizer_builders import byte_level_tokenizer, sentencepiece_tokenizer

TEXTS = ["hello world", "café crème 日本語 🎉 done", "  spaced\tout\n"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_bytes_rebuild_the_text(text):
    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    token_bytes = TokenBytes(tokenizer)
    assert b"".join(token_bytes(i) for i in ids) == text.encode()
    # Some token is a partial character: its text alone is U+FFFD, its bytes are exact.
    if "🎉" in text:
        assert any(token_bytes(i).decode("utf-8", errors="replace") == "\ufffd" for i in ids)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_bytes_rebuild_the_text(text):
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    joined = b"".join(TokenBytes(tokenizer)(i) for i in ids)
    # SentencePiece marks the first word with a space that its decoder strips.
    assert joined.removeprefix(b" ") == tokenizer.decode(ids).encode()

"""The raw bytes of one token (OpenAI's logprob `bytes`), so that joining them rebuilds the text
even where a token holds part of a UTF-8 character (decoding it alone would give U+FFFD)."""

from __future__ import annotations

import functools
import json
import re

from tokenizers import Tokenizer

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (as tokenizers' ByteLevel)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def _decoder_kinds(decoder: dict | None) -> set[str]:
    if not decoder:
        return set()
    if decoder.get("type") == "Sequence":
        return {kind for part in decoder.get("decoders", []) for kind in _decoder_kinds(part)}
    return {decoder.get("type", "")}


class TokenBytes:
    """token id -> bytes for a byte-level BPE (GPT-2, Llama 3, Qwen) or a SentencePiece-style
    vocabulary with byte fallback (Llama 2, Mistral); other tokenizers fall back to the token's
    decoded text."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        kinds = _decoder_kinds(json.loads(tokenizer.to_str()).get("decoder"))
        self._byte_level = "ByteLevel" in kinds
        self._byte_fallback = "ByteFallback" in kinds
        self._special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one instance per served tokenizer
    def __call__(self, token_id: int) -> bytes:
        piece = self._tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if piece in self._special:
            return piece.encode()
        if self._byte_level:
            table = _byte_level_table()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        if self._byte_fallback:
            match = _BYTE_PIECE.match(piece)
            if match:
                return bytes([int(match.group(1), 16)])
            return piece.replace("\u2581", " ").encode()
        return self._tokenizer.decode([token_id], skip_special_tokens=False).encode()

"""Tokenizers the frontend tests run against: the demo byte-level BPE and a SentencePiece-style one."""

from __future__ import annotations

import functools
import json

from infermesh_cli.demo_tokenizer import build_demo_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

SENTENCEPIECE_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, hello there; the weather is fine today",
    "café crème, naïve résumé, über straße",
    "def main(): return 0",
] * 4


@functools.cache
def byte_level_tokenizer(vocab_size: int = 512) -> Tokenizer:
    """The demo byte-level BPE tokenizer (cached: training takes a few milliseconds each)."""
    return build_demo_tokenizer(vocab_size)


@functools.cache
def sentencepiece_tokenizer() -> Tokenizer:
    """A Llama-style tokenizer: Metaspace ('▁' for spaces), BPE with byte fallback (<0xNN>).

    Characters outside the trained vocabulary become byte tokens, so any UTF-8 text encodes, and
    one character may span several tokens just as with byte-level BPE.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tokenizer.train_from_iterator(SENTENCEPIECE_CORPUS, trainer)
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    # Llama's decoder: '▁' back to spaces, bytes back to characters, the first space dropped.
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return Tokenizer.from_str(json.dumps(spec))

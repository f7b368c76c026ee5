"""Incremental detokenization: deltas concatenate to the full decode, for any UTF-8 text.

Every test runs on both implementations: DecodeStream (Rust) and the Python fallback.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from infermesh_frontend.detokenizer import IncrementalDetokenizer, StreamDetokenizer

from tests.frontend.tokenizer_builders import byte_level_tokenizer, sentencepiece_tokenizer

# Text drawn from everything Unicode allows in UTF-8, with CJK and emoji made common.
_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("你好世界日本語한국어🙂🎉👩‍💻🇫🇷éèçñüß ▁Ġ\n\t")),
    ),
    max_size=60,
)


KINDS = ("decode_stream", "python")


def _new(kind: str, tokenizer, context=()):
    if kind == "decode_stream":
        return StreamDetokenizer(tokenizer, context, skip_special_tokens=True)
    return IncrementalDetokenizer(tokenizer.decode, context)


def _stream(tokenizer, ids: list[int], chunk_sizes: list[int], context: list[int], kind: str) -> list[str]:
    detokenizer = _new(kind, tokenizer, context)
    deltas, position, turn = [], 0, 0
    while position < len(ids):
        size = chunk_sizes[turn % len(chunk_sizes)] if chunk_sizes else 1
        deltas.append(detokenizer.add_tokens(ids[position : position + size]))
        position += size
        turn += 1
    deltas.append(detokenizer.finish())
    return deltas


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, chunk_sizes=st.lists(st.integers(1, 4), max_size=5))
def test_byte_level_deltas_concatenate_to_decode(text: str, chunk_sizes: list[int]) -> None:
    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode(text).ids
    stream, python = (_stream(tokenizer, ids, chunk_sizes, [], kind) for kind in KINDS)
    assert "".join(stream) == tokenizer.decode(ids)
    assert stream == python


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, chunk_sizes=st.lists(st.integers(1, 4), max_size=5))
def test_sentencepiece_deltas_concatenate_to_decode(text: str, chunk_sizes: list[int]) -> None:
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode(text).ids
    stream, python = (_stream(tokenizer, ids, chunk_sizes, [], kind) for kind in KINDS)
    assert "".join(stream) == tokenizer.decode(ids)
    assert stream == python


@settings(max_examples=100, deadline=None)
@given(prompt=_TEXT.filter(bool), output=_TEXT)
def test_deltas_after_a_prompt_continue_its_text(prompt: str, output: str) -> None:
    # With prompt context the first output token keeps its leading space (SentencePiece) and the
    # deltas are exactly what the output adds to the prompt's text.
    for tokenizer in (byte_level_tokenizer(), sentencepiece_tokenizer()):
        prompt_ids = tokenizer.encode(prompt).ids
        all_ids = tokenizer.encode(prompt + output).ids
        if all_ids[: len(prompt_ids)] != prompt_ids:
            continue  # the boundary merged differently; the prompt is not a token prefix
        output_ids = all_ids[len(prompt_ids) :]
        prompt_text = tokenizer.decode(prompt_ids)
        if prompt_text.endswith("\ufffd"):
            continue
        for kind in KINDS:
            deltas = _stream(tokenizer, output_ids, [1], prompt_ids, kind)
            assert prompt_text + "".join(deltas) == tokenizer.decode(all_ids), kind


@pytest.mark.parametrize("kind", KINDS)
def test_multibyte_character_is_held_until_complete(kind: str) -> None:
    tokenizer = byte_level_tokenizer()
    # One emoji as single-byte tokens: no delta may carry half a character.
    ids = [tokenizer.token_to_id(token) for token in ("ð", "Ł", "Ļ", "Ĥ")]
    assert tokenizer.decode(ids) == "🙂"
    detokenizer = _new(kind, tokenizer)
    deltas = [detokenizer.add_tokens([token_id]) for token_id in ids]
    assert deltas == ["", "", "", "🙂"]
    assert detokenizer.finish() == ""


@pytest.mark.parametrize("kind", KINDS)
def test_sentencepiece_spacing_across_tokens(kind: str) -> None:
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode("hello world the fox").ids
    detokenizer = _new(kind, tokenizer)
    deltas = [detokenizer.add_tokens([token_id]) for token_id in ids]
    assert deltas[0] == "hello"
    assert "".join(deltas) + detokenizer.finish() == "hello world the fox"
    assert any(delta.startswith(" ") for delta in deltas[1:])


@pytest.mark.parametrize("kind", KINDS)
def test_incomplete_character_at_the_end_is_flushed_as_replacement(kind: str) -> None:
    tokenizer = byte_level_tokenizer()
    detokenizer = _new(kind, tokenizer)
    assert detokenizer.add_tokens([tokenizer.token_to_id("A"), tokenizer.token_to_id("ð")]) == ""
    assert detokenizer.finish() == "A\ufffd"


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_ids_ending_inside_a_character_lose_nothing(kind: str) -> None:
    # A token-id prompt may end halfway through a character; the output completes it. The
    # output text must not repeat prompt text nor silently drop characters it holds.
    tokenizer = byte_level_tokenizer()
    ids = [tokenizer.token_to_id(token) for token in ("A", "ð", "Ł", "Ļ", "Ĥ", "B")]  # "A🙂B"
    prompt, output = ids[:2], ids[2:]
    deltas = _stream(tokenizer, output, [1], prompt, kind)
    # The emoji's three orphan bytes show as the decoder shows them alone (U+FFFD each), then "B".
    assert "".join(deltas) == tokenizer.decode(output) == "\ufffd" * 3 + "B"
    assert deltas == _stream(tokenizer, output, [1], prompt, "python")

"""Incremental detokenization: deltas concatenate to the full decode, for any UTF-8 text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from infermesh_frontend.detokenizer import IncrementalDetokenizer

from tests.frontend.tokenizer_builders import byte_level_tokenizer, sentencepiece_tokenizer

# Text drawn from everything Unicode allows in UTF-8, with CJK and emoji made common.
_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("你好世界日本語한국어🙂🎉👩‍💻🇫🇷éèçñüß ▁Ġ\n\t")),
    ),
    max_size=60,
)


def _stream(tokenizer, ids: list[int], chunk_sizes: list[int], context: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer.decode, context)
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
    deltas = _stream(tokenizer, ids, chunk_sizes, context=[])
    assert "".join(deltas) == tokenizer.decode(ids)


@settings(max_examples=150, deadline=None)
@given(text=_TEXT, chunk_sizes=st.lists(st.integers(1, 4), max_size=5))
def test_sentencepiece_deltas_concatenate_to_decode(text: str, chunk_sizes: list[int]) -> None:
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode(text).ids
    deltas = _stream(tokenizer, ids, chunk_sizes, context=[])
    assert "".join(deltas) == tokenizer.decode(ids)


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
        deltas = _stream(tokenizer, output_ids, [1], context=prompt_ids)
        assert prompt_text + "".join(deltas) == tokenizer.decode(all_ids)


def test_multibyte_character_is_held_until_complete() -> None:
    tokenizer = byte_level_tokenizer()
    # One emoji as single-byte tokens: no delta may carry half a character.
    ids = [tokenizer.token_to_id(token) for token in ("ð", "Ł", "Ļ", "Ĥ")]
    assert tokenizer.decode(ids) == "🙂"
    detokenizer = IncrementalDetokenizer(tokenizer.decode)
    deltas = [detokenizer.add_tokens([token_id]) for token_id in ids]
    assert deltas == ["", "", "", "🙂"]
    assert detokenizer.finish() == ""


def test_sentencepiece_spacing_across_tokens() -> None:
    tokenizer = sentencepiece_tokenizer()
    ids = tokenizer.encode("hello world the fox").ids
    detokenizer = IncrementalDetokenizer(tokenizer.decode)
    deltas = [detokenizer.add_tokens([token_id]) for token_id in ids]
    assert deltas[0] == "hello"
    assert "".join(deltas) + detokenizer.finish() == "hello world the fox"
    assert any(delta.startswith(" ") for delta in deltas[1:])


def test_incomplete_character_at_the_end_is_flushed_as_replacement() -> None:
    tokenizer = byte_level_tokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer.decode)
    assert detokenizer.add_tokens([tokenizer.token_to_id("A"), tokenizer.token_to_id("ð")]) == ""
    assert detokenizer.finish() == "A\ufffd"

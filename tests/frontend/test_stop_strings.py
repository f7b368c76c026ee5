"""Stop strings over streamed text: earliest match, across deltas, nothing of a stop shown."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from infermesh_frontend.stop_strings import StopStringMatcher


def _run(stops: list[str], deltas: list[str]) -> tuple[list[str], str | None]:
    matcher = StopStringMatcher(stops)
    shown = []
    for delta in deltas:
        check = matcher.feed(delta)
        shown.append(check.text)
        if check.matched_stop is not None:
            return shown, check.matched_stop
    shown.append(matcher.flush())
    return shown, None


def test_match_across_delta_boundary() -> None:
    shown, matched = _run(["END"], ["hello E", "N", "D and more"])
    assert matched == "END"
    assert "".join(shown) == "hello "
    # The 'E' and 'N' were held back, never shown before the match decided it.
    assert shown == ["hello ", "", ""]


def test_held_text_released_when_it_stops_being_a_prefix() -> None:
    shown, matched = _run(["END"], ["hello E", "Nx", " tail"])
    assert matched is None
    assert shown == ["hello ", "ENx", " tail", ""]


def test_first_completed_match_wins_over_list_order() -> None:
    shown, matched = _run(["world", "lo w"], ["hello world"])
    assert matched == "lo w"
    assert "".join(shown) == "hel"


def test_result_does_not_depend_on_delta_cuts() -> None:
    # 'b' completes before 'aba' could, whether the text comes whole or in pieces.
    assert _run(["b", "aba"], ["aaba"])[1] == "b"
    assert _run(["b", "aba"], ["aab", "a"])[1] == "b"
    assert "".join(_run(["b", "aba"], ["a", "a", "b", "a"])[0]) == "aa"


def test_overlapping_prefixes_hold_the_longest() -> None:
    shown, matched = _run(["aab"], ["a", "a", "a", "b"])
    assert matched == "aab"
    assert "".join(shown) == "a"


def test_flush_returns_held_text_when_no_match() -> None:
    shown, matched = _run(["STOP"], ["the end ST"])
    assert matched is None
    assert shown == ["the end ", "ST"]


def test_no_stop_strings_pass_everything() -> None:
    assert _run([], ["a", "b"]) == (["a", "b", ""], None)


def test_empty_stop_string_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        StopStringMatcher(["ok", ""])


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abc🙂 ", max_size=40),
    stops=st.lists(st.text(alphabet="abc🙂 ", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_streamed_result_equals_whole_text_search(text: str, stops: list[str], cuts: list[int]) -> None:
    points = sorted({min(cut, len(text)) for cut in cuts} | {0, len(text)})
    deltas = [text[a:b] for a, b in zip(points, points[1:], strict=False)]
    shown, matched = _run(stops, deltas)
    # Oracle: the stop string that completes first in the whole text (ties: the one starting first).
    found = [(text.find(stop) + len(stop), text.find(stop), stop) for stop in stops if stop in text]
    if not found:
        assert matched is None
        assert "".join(shown) == text
    else:
        _, start, _ = min(found)
        assert "".join(shown) == text[:start]
        assert matched is not None and text.startswith(matched, start)

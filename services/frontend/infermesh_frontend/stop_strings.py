"""Stop strings over streamed text: the output ends right before the first stop string to complete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class StopCheck:
    """Result of feeding text: what may be shown now, and the stop string if one matched."""

    text: str
    matched_stop: str | None = None


class StopStringMatcher:
    """Finds stop strings in text that arrives in pieces.

    Text that could still grow into a stop string is held back until it cannot, so a match that
    spans two deltas is found and no part of a stop string is ever shown.
    """

    def __init__(self, stop_strings: Sequence[str]) -> None:
        if any(not stop for stop in stop_strings):
            raise ValueError("stop strings must not be empty")
        self._stops = list(stop_strings)
        self._held = ""
        self.matched_stop: str | None = None

    def feed(self, delta: str) -> StopCheck:
        """Adds `delta`; returns the text that is safe to emit and the matched stop string, if any.

        After a match nothing more is accepted: further calls return empty text.
        """
        if self.matched_stop is not None:
            return StopCheck("", self.matched_stop)
        if not self._stops:
            return StopCheck(delta)
        buffer = self._held + delta
        # Everything before `_held` was checked already, so any match lies in buffer. The stop
        # string that completes first wins (as if text came one character at a time, so the
        # result does not depend on how the text was cut into deltas); on a tie, the longer one.
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            position = buffer.find(stop)
            if position >= 0:
                candidate = (position + len(stop), position, stop)
                if best is None or candidate[:2] < best[:2]:
                    best = candidate
        if best is not None:
            _, position, stop = best
            self._held = ""
            self.matched_stop = stop
            return StopCheck(buffer[:position], stop)
        keep = self._longest_suffix_that_starts_a_stop(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return StopCheck(buffer[: len(buffer) - keep])

    def flush(self) -> str:
        """Returns the held-back text once no more text will come (the completion ended)."""
        held, self._held = self._held, ""
        return "" if self.matched_stop is not None else held

    def _longest_suffix_that_starts_a_stop(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            # A full match was ruled out above, so only proper prefixes of `stop` matter.
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:length]):
                    longest = length
                    break
        return longest

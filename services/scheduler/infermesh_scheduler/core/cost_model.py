"""Step time as a + b * tokens, fitted online by least squares; sizes dynamic prefill chunks
and estimates service times for the edf and lrs policies."""

from __future__ import annotations


class StepCostModel:
    """Exponentially weighted least squares over (tokens in step, seconds) samples."""

    def __init__(self, fixed_s: float, per_token_s: float, decay: float = 0.99) -> None:
        # Priors used until two distinct step sizes have been seen.
        self.fixed_s = fixed_s
        self.per_token_s = per_token_s
        self._decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.num_samples = 0
        self.fitted = False

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds < 0:
            return
        d = self._decay
        self._w = self._w * d + 1.0
        self._x = self._x * d + tokens
        self._y = self._y * d + seconds
        self._xx = self._xx * d + tokens * tokens
        self._xy = self._xy * d + tokens * seconds
        self.num_samples += 1
        mean_x = self._x / self._w
        mean_y = self._y / self._w
        var = self._xx / self._w - mean_x * mean_x
        # Below this spread in step sizes the slope is noise: keep the priors.
        if var > 1e-6 * max(1.0, mean_x * mean_x):
            slope = (self._xy / self._w - mean_x * mean_y) / var
            if slope > 0:
                self.per_token_s = slope
                self.fixed_s = max(0.0, mean_y - slope * mean_x)
                self.fitted = True

    def predict(self, tokens: int) -> float:
        """Seconds one step of this many tokens should take."""
        return self.fixed_s + self.per_token_s * tokens

    def tokens_within(self, seconds: float) -> int:
        """Most tokens one step can hold and still take at most this long."""
        # The epsilon keeps an exact fit (399.9999... tokens) from losing a token to rounding.
        return int(max(0.0, seconds - self.fixed_s) / self.per_token_s + 1e-6)

    def service_time(self, prefill_tokens: int, decode_tokens: int) -> float:
        """Rough seconds to prefill and then decode one token per step."""
        return self.per_token_s * prefill_tokens + decode_tokens * (self.fixed_s + self.per_token_s)

"""The simulated worker's step-time law: seconds one engine step takes, from the step's plan.

    step_ms = fixed + per_token * tokens + per_seq * sequences
              + per_kilo_decode_context * decode_context + per_kilo_prefill_attended * prefill_attended

`tokens` are the tokens the step computes and `sequences` the sequences in its batch. Attention is
counted apart for decodes and prefill chunks, whose kernels scale differently: `decode_context` is
the keys the step's decodes read (a decode after c computed tokens reads c + 1), in thousands;
`prefill_attended` the query-key pairs of its prefill chunks (n tokens after c computed ones:
n * (c + (n + 1) / 2)), in thousands. The law is given as coefficients or fitted by least squares
to the samples `infermesh bench profile` measured on real hardware.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infermesh_scheduler.core.step_plan import StepPlan

COEFFICIENTS = (
    "fixed_ms",
    "per_token_ms",
    "per_seq_ms",
    "per_kilo_decode_context_ms",
    "per_kilo_prefill_attended_ms",
)


@dataclass(slots=True, frozen=True)
class StepFeatures:
    tokens: int
    sequences: int
    kilo_decode_context: float
    kilo_prefill_attended: float


def plan_features(plan: StepPlan) -> StepFeatures:
    """The law's inputs for one plan."""
    tokens = 0
    decode = 0.0
    prefill = 0.0
    for group in (plan.new_sequences, plan.running_sequences):
        for seq in group:
            n = seq.num_scheduled_tokens
            tokens += n
            if n == 1:
                decode += seq.num_computed_tokens + 1
            else:
                prefill += n * (seq.num_computed_tokens + (n + 1) * 0.5)
    count = len(plan.new_sequences) + len(plan.running_sequences)
    return StepFeatures(tokens, count, decode / 1000.0, prefill / 1000.0)


@dataclass(slots=True, frozen=True)
class StepTimeLaw:
    fixed_ms: float
    per_token_ms: float
    per_seq_ms: float = 0.0
    per_kilo_decode_context_ms: float = 0.0
    per_kilo_prefill_attended_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"step_time.{name} must be a finite number >= 0, got {value!r}")
        if self.fixed_ms + self.per_token_ms + self.per_seq_ms <= 0:
            raise ValueError("step_time: fixed_ms, per_token_ms and per_seq_ms cannot all be 0")

    def seconds(self, f: StepFeatures) -> float:
        ms = (
            self.fixed_ms
            + self.per_token_ms * f.tokens
            + self.per_seq_ms * f.sequences
            + self.per_kilo_decode_context_ms * f.kilo_decode_context
            + self.per_kilo_prefill_attended_ms * f.kilo_prefill_attended
        )
        return ms / 1000.0

    def plan_seconds(self, plan: StepPlan) -> float:
        """Seconds the worker takes for `plan` (called once per simulated step)."""
        return self.seconds(plan_features(plan))

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COEFFICIENTS}

    @classmethod
    def from_mapping(cls, values: dict, where: str = "step_time") -> StepTimeLaw:
        unknown = sorted(set(values) - set(COEFFICIENTS))
        if unknown:
            raise ValueError(f"{where}: unknown coefficient(s) {unknown}; expected {list(COEFFICIENTS)}")
        if "fixed_ms" not in values or "per_token_ms" not in values:
            raise ValueError(f"{where}: fixed_ms and per_token_ms are required")
        return cls(**{k: float(v) for k, v in values.items()})


def fit_law(samples: Sequence[tuple[StepFeatures, float, bool]]) -> tuple[StepTimeLaw, float]:
    """Least squares of milliseconds on the features, in relative terms (each sample's error over
    its own time: a 500 ms prefill must not drown the 5 ms decodes most steps are), kept
    non-negative by dropping any feature whose coefficient comes out negative and refitting. A
    sample flagged True also contains one request's overhead outside the steps (a time to first
    token: network hops, frontend); that overhead is fitted too and returned in ms. Needs samples
    that vary in each feature."""
    if len(samples) < 2:
        raise ValueError(f"fitting a step-time law needs at least 2 samples, got {len(samples)}")
    rows = [
        (1.0, f.tokens, f.sequences, f.kilo_decode_context, f.kilo_prefill_attended, 1.0 if flagged else 0.0)
        for f, _, flagged in samples
    ]
    ys = [seconds * 1000.0 for _, seconds, _ in samples]
    if min(ys) <= 0:
        raise ValueError("every profile sample needs a positive time")
    rows = [tuple(x / y for x in row) for row, y in zip(rows, ys, strict=True)]
    ys = [1.0] * len(ys)
    active = [0, 1, 2, 3, 4, 5]
    while True:
        coef = _least_squares([[r[i] for i in active] for r in rows], ys)
        negative = [i for i, c in zip(active, coef, strict=True) if c < 0 and i != 0]
        if not negative:
            break
        active.remove(min(negative, key=lambda i: coef[active.index(i)]))
    full = [0.0] * 6
    for i, c in zip(active, coef, strict=True):
        full[i] = max(0.0, c)
    if full[0] + full[1] + full[2] <= 0:
        raise ValueError("the profile's samples do not determine a positive step time; profile a wider grid")
    return StepTimeLaw(*full[:5]), full[5]


def _least_squares(rows: list[list[float]], ys: list[float]) -> list[float]:
    """Solves the normal equations by Gaussian elimination (a handful of columns; no numpy needed).
    Columns that carry no information (all zero, or collinear) get coefficient 0."""
    k = len(rows[0])
    ata = [[sum(r[i] * r[j] for r in rows) for j in range(k)] for i in range(k)]
    aty = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(k)]
    scale = [math.sqrt(ata[i][i]) or 1.0 for i in range(k)]
    m = [[ata[i][j] / (scale[i] * scale[j]) for j in range(k)] + [aty[i] / scale[i]] for i in range(k)]
    pivots: list[int] = []
    for col in range(k):
        row = max(range(len(pivots), k), key=lambda r: abs(m[r][col]), default=None)
        if row is None or abs(m[row][col]) < 1e-9:
            continue
        top = len(pivots)
        m[top], m[row] = m[row], m[top]
        for r in range(k):
            if r != top and m[r][col]:
                factor = m[r][col] / m[top][col]
                m[r] = [a - factor * b for a, b in zip(m[r], m[top], strict=True)]
        pivots.append(col)
    solution = [0.0] * k
    for top, col in enumerate(pivots):
        solution[col] = m[top][k] / m[top][col] / scale[col]
    return solution


def law_from_profile(path: Path) -> tuple[StepTimeLaw, dict]:
    """Fits the law to a profile file written by `infermesh bench profile`; returns it and the
    profile's other contents (model facts), with the fitted request overhead added."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read step-time profile {path}: {err}") from err
    samples = profile.get("samples") if isinstance(profile, dict) else None
    if not isinstance(samples, list) or not samples:
        raise ValueError(
            f"{path}: not a step-time profile (no 'samples' list); write one with `infermesh bench profile`"
        )
    parsed = []
    for i, s in enumerate(samples):
        try:
            features = StepFeatures(
                int(s["tokens"]),
                int(s["sequences"]),
                float(s["kilo_decode_context"]),
                float(s["kilo_prefill_attended"]),
            )
            parsed.append(
                (features, float(s["ms"]) / 1000.0, bool(s.get("includes_request_overhead", False)))
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: sample {i} is malformed ({err!r})") from err
    law, overhead_ms = fit_law(parsed)
    return law, {**profile, "request_overhead_ms": overhead_ms}

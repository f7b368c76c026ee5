"""The simulated worker's step-time law: seconds one engine step takes, from the step's plan.

    step_s = fixed + per_token * tokens + per_seq * sequences + per_context * attended

`tokens` are the tokens the step computes, `sequences` the sequences in the batch, and `attended`
the query-key pairs of attention in thousands: a chunk of n tokens after c computed ones attends
to n * (c + (n + 1) / 2) keys (a decode: c + 1). The law is given as coefficients or fitted by
least squares to the samples `infermesh bench profile` measured on real hardware.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infermesh_scheduler.core.step_plan import StepPlan

COEFFICIENTS = ("fixed_ms", "per_token_ms", "per_seq_ms", "per_kilo_attended_ms")


@dataclass(slots=True, frozen=True)
class StepFeatures:
    tokens: int
    sequences: int
    kilo_attended: float


def plan_features(plan: StepPlan) -> StepFeatures:
    """The law's inputs for one plan."""
    tokens = 0
    attended = 0.0
    count = 0
    for group in (plan.new_sequences, plan.running_sequences):
        for seq in group:
            n = seq.num_scheduled_tokens
            tokens += n
            attended += n * (seq.num_computed_tokens + (n + 1) * 0.5)
        count += len(group)
    return StepFeatures(tokens, count, attended / 1000.0)


@dataclass(slots=True, frozen=True)
class StepTimeLaw:
    fixed_ms: float
    per_token_ms: float
    per_seq_ms: float = 0.0
    per_kilo_attended_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"step_time.{name} must be a finite number >= 0, got {value!r}")
        if self.fixed_ms + self.per_token_ms + self.per_seq_ms <= 0:
            raise ValueError("step_time: fixed_ms, per_token_ms and per_seq_ms cannot all be 0")

    def seconds(self, features: StepFeatures) -> float:
        ms = (
            self.fixed_ms
            + self.per_token_ms * features.tokens
            + self.per_seq_ms * features.sequences
            + self.per_kilo_attended_ms * features.kilo_attended
        )
        return ms / 1000.0

    def plan_seconds(self, plan: StepPlan) -> float:
        """Seconds the worker takes for `plan` (inlined plan_features: called once per step)."""
        tokens = 0
        attended = 0.0
        for seq in plan.new_sequences:
            n = seq.num_scheduled_tokens
            tokens += n
            attended += n * (seq.num_computed_tokens + (n + 1) * 0.5)
        for seq in plan.running_sequences:
            n = seq.num_scheduled_tokens
            tokens += n
            attended += n * (seq.num_computed_tokens + (n + 1) * 0.5)
        count = len(plan.new_sequences) + len(plan.running_sequences)
        ms = (
            self.fixed_ms
            + self.per_token_ms * tokens
            + self.per_seq_ms * count
            + self.per_kilo_attended_ms * attended / 1000.0
        )
        return ms / 1000.0

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


def fit_law(samples: Sequence[tuple[StepFeatures, float]]) -> StepTimeLaw:
    """Non-negative least squares (by dropping any feature whose coefficient comes out negative
    and refitting) of step milliseconds on the features. Needs samples that vary in each feature."""
    if len(samples) < 2:
        raise ValueError(f"fitting a step-time law needs at least 2 samples, got {len(samples)}")
    rows = [(1.0, f.tokens, f.sequences, f.kilo_attended) for f, _ in samples]
    ys = [seconds * 1000.0 for _, seconds in samples]
    active = [0, 1, 2, 3]
    while True:
        coef = _least_squares([[r[i] for i in active] for r in rows], ys)
        negative = [i for i, c in zip(active, coef, strict=True) if c < 0 and i != 0]
        if not negative:
            break
        active.remove(min(negative, key=lambda i: coef[active.index(i)]))
    full = [0.0, 0.0, 0.0, 0.0]
    for i, c in zip(active, coef, strict=True):
        full[i] = max(0.0, c)
    if full[0] + full[1] + full[2] <= 0:
        raise ValueError("the profile's samples do not determine a positive step time; profile a wider grid")
    return StepTimeLaw(*full)


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
    profile's other contents (model facts, measured request overhead)."""
    try:
        profile = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read step-time profile {path}: {err}") from err
    samples = profile.get("samples")
    if not isinstance(samples, list) or not samples:
        raise ValueError(
            f"{path}: not a step-time profile (no 'samples' list); write one with `infermesh bench profile`"
        )
    parsed = []
    for i, s in enumerate(samples):
        try:
            parsed.append(
                (
                    StepFeatures(int(s["tokens"]), int(s["sequences"]), float(s["kilo_attended"])),
                    float(s["step_ms"]) / 1000.0,
                )
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: sample {i} is malformed ({err!r})") from err
    return fit_law(parsed), profile

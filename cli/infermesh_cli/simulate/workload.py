"""Simulated traffic: arrival times, prompt and output lengths, shared-prefix groups, priority
classes with their SLOs. Everything is drawn from one seeded generator, so a run repeats exactly."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ARRIVALS = ("poisson", "bursty")
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "trace")

# Token ids of generated prompts: a request's first token is unique to it (so unrelated prompts
# never share a cached block by accident), a group's prefix starts with a token unique to the group.
# Token ids are uint32 as on the wire (the prefix block hash is specified over uint32 ids).
_REQUEST_MARK = 1 << 30
_GROUP_MARK = 1 << 31


@dataclass(slots=True, frozen=True)
class LengthDist:
    """A token-length distribution: fixed, uniform [low, high], lognormal (median, sigma), or a
    trace column (drawn in order, cycling)."""

    kind: str = "fixed"
    value: int = 128
    low: int = 1
    high: int = 1
    median: float = 128.0
    sigma: float = 0.5
    max_value: int = 1 << 20
    trace: tuple[int, ...] = ()

    def validate(self, where: str) -> None:
        if self.kind not in LENGTH_KINDS:
            raise ValueError(f"{where}.kind must be one of {LENGTH_KINDS}, got {self.kind!r}")
        if self.kind == "fixed" and self.value < 1:
            raise ValueError(f"{where}.value must be >= 1")
        if self.kind == "uniform" and not 1 <= self.low <= self.high:
            raise ValueError(f"{where}: uniform needs 1 <= low <= high")
        if self.kind == "lognormal" and (self.median < 1 or self.sigma < 0):
            raise ValueError(f"{where}: lognormal needs median >= 1 and sigma >= 0")
        if self.kind == "trace" and not self.trace:
            raise ValueError(f"{where}: the trace has no lengths")
        if self.max_value < 1:
            raise ValueError(f"{where}.max_value must be >= 1")


@dataclass(slots=True, frozen=True)
class PriorityClassSpec:
    """A share of the traffic with its scheduler priority class and its latency SLOs (ms; 0 = none)."""

    name: str
    weight: float = 1.0
    latency_critical: bool = False
    priority: int = 0
    ttft_slo_ms: float = 0.0
    tpot_slo_ms: float = 0.0


@dataclass(slots=True)
class WorkloadSpec:
    # Requests per second; math.inf sends every request at time 0 (a closed benchmark burst).
    rate: float = 10.0
    arrival: str = "poisson"
    # bursty: on/off periods; during "on" the rate is rate * burst_factor, the mean stays `rate`.
    burst_factor: float = 4.0
    burst_period_s: float = 10.0
    duration_s: float = 60.0
    # Stop after this many requests (0 = as many as the duration brings).
    num_requests: int = 0
    prompt_len: LengthDist = field(default_factory=LengthDist)
    output_len: LengthDist = field(default_factory=lambda: LengthDist(value=64))
    # Shared-prefix groups: prefix_share of requests start with one of num_prefix_groups prefixes.
    num_prefix_groups: int = 0
    prefix_len: int = 0
    prefix_share: float = 1.0
    classes: tuple[PriorityClassSpec, ...] = (PriorityClassSpec("default"),)
    seed: int = 0

    def validate(self) -> None:
        if not (self.rate > 0):
            raise ValueError(f"workload.rate must be > 0 requests/s (or inf), got {self.rate}")
        if self.arrival not in ARRIVALS:
            raise ValueError(f"workload.arrival must be one of {ARRIVALS}, got {self.arrival!r}")
        if self.arrival == "bursty" and (self.burst_factor < 1 or self.burst_period_s <= 0):
            raise ValueError("workload: bursty needs burst_factor >= 1 and burst_period_s > 0")
        if not (self.duration_s > 0) or math.isinf(self.duration_s):
            raise ValueError(f"workload.duration_s must be a positive number, got {self.duration_s}")
        if self.num_requests < 0:
            raise ValueError("workload.num_requests must be >= 0")
        if math.isinf(self.rate) and self.num_requests < 1:
            raise ValueError("workload.rate = inf needs num_requests > 0 (how many arrive at once)")
        self.prompt_len.validate("workload.prompt_len")
        self.output_len.validate("workload.output_len")
        if self.num_prefix_groups < 0 or self.prefix_len < 0 or not 0 <= self.prefix_share <= 1:
            raise ValueError("workload: num_prefix_groups, prefix_len >= 0 and 0 <= prefix_share <= 1")
        if self.num_prefix_groups and self.prefix_len < 1:
            raise ValueError("workload: num_prefix_groups needs prefix_len >= 1")
        if not self.classes or any(c.weight <= 0 for c in self.classes):
            raise ValueError("workload.classes needs at least one class, each with weight > 0")


@dataclass(slots=True)
class SimRequest:
    index: int
    arrival_s: float
    prompt_token_ids: list[int]
    output_len: int
    prefix_group: int  # -1: no shared prefix
    klass: PriorityClassSpec


def load_length_trace(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reads a JSONL trace, one {"prompt_len": P, "output_len": O} object a line."""
    prompts: list[int] = []
    outputs: list[int] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read length trace {path}: {err}") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, output = int(row["prompt_len"]), int(row["output_len"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f'{path}:{number}: expected {{"prompt_len": int, "output_len": int}}, got {line[:80]!r}'
            ) from err
        if prompt < 1 or output < 1:
            raise ValueError(f"{path}:{number}: prompt_len and output_len must be >= 1")
        prompts.append(prompt)
        outputs.append(output)
    if not prompts:
        raise ValueError(f"length trace {path} has no rows")
    return tuple(prompts), tuple(outputs)


class _Lengths:
    def __init__(self, dist: LengthDist, rng: random.Random) -> None:
        self._d = dist
        self._rng = rng
        self._next = 0

    def draw(self) -> int:
        d = self._d
        if d.kind == "fixed":
            value = d.value
        elif d.kind == "uniform":
            value = self._rng.randint(d.low, d.high)
        elif d.kind == "lognormal":
            value = round(self._rng.lognormvariate(math.log(d.median), d.sigma))
        else:
            value = d.trace[self._next % len(d.trace)]
            self._next += 1
        return max(1, min(value, d.max_value))


def generate(spec: WorkloadSpec, max_len: int) -> Iterator[SimRequest]:
    """Yields requests in arrival order; prompt + output is capped at max_len tokens."""
    rng = random.Random(spec.seed)
    prompts = _Lengths(spec.prompt_len, random.Random(spec.seed + 1))
    outputs = _Lengths(spec.output_len, random.Random(spec.seed + 2))
    weights = [c.weight for c in spec.classes]
    prefixes = [[_GROUP_MARK + g, *range(1, spec.prefix_len)] for g in range(spec.num_prefix_groups)]
    t = 0.0
    index = 0
    while True:
        if spec.num_requests and index >= spec.num_requests:
            return
        if not math.isinf(spec.rate):
            t += _gap(spec, t, rng)
            if t >= spec.duration_s:
                return
        output_len = min(outputs.draw(), max_len - 1)
        prompt_len = max(1, min(prompts.draw(), max_len - output_len))
        group = -1
        tokens: list[int]
        if prefixes and rng.random() < spec.prefix_share:
            group = rng.randrange(len(prefixes))
            prefix = prefixes[group][:prompt_len]
            tail = prompt_len - len(prefix)
            tokens = prefix + ([_REQUEST_MARK + index, *range(2, tail + 1)] if tail else [])
        else:
            tokens = [_REQUEST_MARK + index, *range(2, prompt_len + 1)]
        klass = spec.classes[0] if len(spec.classes) == 1 else rng.choices(spec.classes, weights)[0]
        yield SimRequest(index, t, tokens, output_len, group, klass)
        index += 1


def _gap(spec: WorkloadSpec, now: float, rng: random.Random) -> float:
    """Time to the next arrival. Bursty traffic is an on/off Poisson process: the first
    1/burst_factor of every period runs at rate * burst_factor, the rest is quiet."""
    if spec.arrival == "poisson":
        return rng.expovariate(spec.rate)
    period = spec.burst_period_s
    on = period / spec.burst_factor
    fast = spec.rate * spec.burst_factor
    t = now
    while True:
        phase = t % period
        if phase >= on:
            t += period - phase  # skip the quiet part
            continue
        step = rng.expovariate(fast)
        if phase + step < on:
            return t + step - now
        t += on - phase  # memoryless: draw again from the next burst's start

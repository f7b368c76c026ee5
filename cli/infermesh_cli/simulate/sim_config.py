"""`infermesh simulate`'s configuration: a YAML file (sections below) overridden by command-line flags.

duration_s: 60                # arrivals stop here; the run then drains (max_drain_s)
seed: 0
check_invariants_every: 100   # the core's check_invariants() every N steps of each replica
cluster: {replicas: 4, frontends: 1, dispatch_policy: least_load, load_poll_interval_ms: 500}
scheduler: {...}              # any SchedulerCoreConfig option (block_size, num_blocks, policy, ...)
step_time: {fixed_ms: .., per_token_ms: .., per_seq_ms: .., per_kilo_attended_ms: ..}
           or {profile: FILE}  # written by `infermesh bench profile`
network: {client_frontend_ms: 0, frontend_scheduler_ms: 0, scheduler_worker_ms: 0}  # one way
workload: {rate, arrival, burst_factor, burst_period_s, num_requests, prompt_len, output_len,
           trace, prefix_groups: {count, len, share}, classes: [...]}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from infermesh_frontend.routing.policy_factory import DISPATCH_POLICIES
from infermesh_scheduler.core.config import SchedulerCoreConfig

from infermesh_cli.simulate.step_time import StepTimeLaw, law_from_profile
from infermesh_cli.simulate.workload import (
    LengthDist,
    PriorityClassSpec,
    WorkloadSpec,
    load_length_trace,
)

_SECTIONS = {
    "duration_s",
    "seed",
    "check_invariants_every",
    "max_drain_s",
    "cluster",
    "scheduler",
    "step_time",
    "network",
    "workload",
}
_HOPS = ("client_frontend_ms", "frontend_scheduler_ms", "scheduler_worker_ms")


@dataclass(slots=True)
class ClusterSpec:
    replicas: int = 4
    frontends: int = 1
    dispatch_policy: str = "least_load"
    load_poll_interval_ms: float = 500.0


@dataclass(slots=True)
class SimConfig:
    cluster: ClusterSpec
    scheduler: SchedulerCoreConfig
    law: StepTimeLaw
    # One-way delay of each hop (seconds).
    client_frontend_s: float
    frontend_scheduler_s: float
    scheduler_worker_s: float
    workload: WorkloadSpec
    check_invariants_every: int = 100
    max_drain_s: float = 3600.0
    # Where the law came from: "coefficients" or the profile's path.
    law_source: str = "coefficients"
    profile: dict = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The settings a summary records next to its results."""
        w = self.workload
        return {
            "cluster": dataclasses.asdict(self.cluster),
            "scheduler": {
                k: getattr(self.scheduler, k)
                for k in ("block_size", "num_blocks", "max_batch_size", "max_tokens_per_step", "policy")
            },
            "step_time": {**self.law.as_dict(), "source": self.law_source},
            "network_ms": {
                "client_frontend": self.client_frontend_s * 1000,
                "frontend_scheduler": self.frontend_scheduler_s * 1000,
                "scheduler_worker": self.scheduler_worker_s * 1000,
            },
            "workload": {
                "rate": "inf" if math.isinf(w.rate) else w.rate,
                "arrival": w.arrival,
                "duration_s": w.duration_s,
                "num_requests": w.num_requests,
                "prompt_len": _describe_dist(w.prompt_len),
                "output_len": _describe_dist(w.output_len),
                "prefix_groups": {"count": w.num_prefix_groups, "len": w.prefix_len, "share": w.prefix_share},
                "classes": [dataclasses.asdict(c) for c in w.classes],
                "seed": w.seed,
            },
        }


def _describe_dist(d: LengthDist) -> dict[str, Any]:
    keys = {"fixed": ("value",), "uniform": ("low", "high"), "lognormal": ("median", "sigma"), "trace": ()}
    out: dict[str, Any] = {"kind": d.kind, **{k: getattr(d, k) for k in keys[d.kind]}}
    if d.kind == "trace":
        out["rows"] = len(d.trace)
    return out


def load_sim_config(path: Path | None, overrides: dict[str, Any]) -> SimConfig:
    """Reads the YAML file (if any), applies flag overrides ({"replicas": 8, ...}), validates."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"cannot read simulation config {path}: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the simulation config must be a mapping of sections")
        unknown = sorted(set(raw) - _SECTIONS)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(_SECTIONS)}")
    base = Path(path).parent if path is not None else Path.cwd()
    cluster_raw = dict(_section(raw, "cluster"))
    workload_raw = dict(_section(raw, "workload"))
    step_raw = dict(_section(raw, "step_time"))
    for key in ("replicas", "frontends", "dispatch_policy"):
        if overrides.get(key) is not None:
            cluster_raw[key] = overrides[key]
    for key in ("rate", "num_requests"):
        if overrides.get(key) is not None:
            workload_raw[key] = overrides[key]
    if overrides.get("profile") is not None:
        step_raw = {"profile": str(overrides["profile"])}
    duration = float(overrides.get("duration_s") or raw.get("duration_s", 60.0))
    seed = int(overrides.get("seed") if overrides.get("seed") is not None else raw.get("seed", 0))

    cluster = _build(ClusterSpec, cluster_raw, "cluster")
    if cluster.replicas < 1 or cluster.frontends < 1:
        raise ValueError("cluster.replicas and cluster.frontends must be >= 1")
    if cluster.dispatch_policy not in DISPATCH_POLICIES:
        raise ValueError(
            f"cluster.dispatch_policy must be one of {DISPATCH_POLICIES}, got {cluster.dispatch_policy!r}"
        )
    if not cluster.load_poll_interval_ms > 0:
        raise ValueError("cluster.load_poll_interval_ms must be > 0")

    profile: dict = {}
    if "profile" in step_raw:
        if len(step_raw) > 1:
            raise ValueError("step_time: give either profile or coefficients, not both")
        profile_path = Path(step_raw["profile"])
        if not profile_path.is_absolute() and path is not None and overrides.get("profile") is None:
            profile_path = base / profile_path
        law, profile = law_from_profile(profile_path)
        law_source = str(profile_path)
    else:
        if not step_raw:
            raise ValueError(
                "no step-time law: give step_time coefficients in the config or --profile FILE "
                "(written by `infermesh bench profile`)"
            )
        law = StepTimeLaw.from_mapping(step_raw)
        law_source = "coefficients"

    # A profile knows the measured cluster's KV pool and model length: the defaults for its replicas.
    model = profile.get("model", {})
    sched_raw = {"eos_token_ids": (), "vocab_size": 0}
    for key in ("block_size", "num_blocks", "max_model_len"):
        if model.get(key):
            sched_raw[key] = int(model[key])
    sched_raw.update(_section(raw, "scheduler"))
    if "eos_token_ids" in sched_raw:
        sched_raw["eos_token_ids"] = tuple(sched_raw["eos_token_ids"])
    scheduler = _build(SchedulerCoreConfig, sched_raw, "scheduler")

    network = dict(_section(raw, "network"))
    unknown = sorted(set(network) - set(_HOPS))
    if unknown:
        raise ValueError(f"network: unknown key(s) {unknown}; expected {list(_HOPS)}")
    if not network and profile.get("request_overhead_ms"):
        # The profile measured the request's round trip outside the steps: client -> frontend ->
        # scheduler and back is four one-way hops.
        network = {k: float(profile["request_overhead_ms"]) / 4 for k in _HOPS[:2]}
    hops = {k: float(network.get(k, 0.0)) for k in _HOPS}
    if any(not (v >= 0) or math.isinf(v) for v in hops.values()):
        raise ValueError("network: every hop delay must be a finite number of ms >= 0")

    workload = _build_workload(workload_raw, duration, seed, base)
    check_every = int(raw.get("check_invariants_every", 100))
    if overrides.get("check_invariants_every") is not None:
        check_every = int(overrides["check_invariants_every"])
    if check_every < 0:
        raise ValueError("check_invariants_every must be >= 0 (0: only at the end)")
    max_drain = float(raw.get("max_drain_s", 3600.0))
    if not max_drain >= 0:
        raise ValueError("max_drain_s must be >= 0")
    return SimConfig(
        cluster=cluster,
        scheduler=scheduler,
        law=law,
        client_frontend_s=hops["client_frontend_ms"] / 1000,
        frontend_scheduler_s=hops["frontend_scheduler_ms"] / 1000,
        scheduler_worker_s=hops["scheduler_worker_ms"] / 1000,
        workload=workload,
        check_invariants_every=check_every,
        max_drain_s=max_drain,
        law_source=law_source,
        profile=profile,
    )


def _section(raw: dict, name: str) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a mapping, got {type(value).__name__}")
    return value


def _build(cls: type, values: dict, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _length(value: Any, where: str) -> LengthDist:
    if isinstance(value, int):
        return LengthDist(kind="fixed", value=value)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a length or a mapping with 'kind'")
    return _build(LengthDist, value, where)


def _build_workload(raw: dict, duration: float, seed: int, base: Path) -> WorkloadSpec:
    raw = dict(raw)
    known = {
        "rate",
        "arrival",
        "burst_factor",
        "burst_period_s",
        "num_requests",
        "prompt_len",
        "output_len",
        "trace",
        "prefix_groups",
        "classes",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"workload: unknown option(s) {unknown}; expected some of {sorted(known)}")
    rate = raw.pop("rate", 10.0)
    rate = math.inf if str(rate).lower() in ("inf", "infinity") else float(rate)
    values: dict[str, Any] = {"rate": rate, "duration_s": duration, "seed": seed}
    for key in ("arrival", "burst_factor", "burst_period_s", "num_requests"):
        if key in raw:
            values[key] = raw[key]
    if "trace" in raw:
        if "prompt_len" in raw or "output_len" in raw:
            raise ValueError("workload: give either trace or prompt_len/output_len")
        trace_path = Path(raw["trace"])
        prompts, outputs = load_length_trace(trace_path if trace_path.is_absolute() else base / trace_path)
        values["prompt_len"] = LengthDist(kind="trace", trace=prompts)
        values["output_len"] = LengthDist(kind="trace", trace=outputs)
    else:
        values["prompt_len"] = _length(raw.get("prompt_len", 128), "workload.prompt_len")
        values["output_len"] = _length(raw.get("output_len", 64), "workload.output_len")
    groups = raw.get("prefix_groups") or {}
    if groups:
        unknown = sorted(set(groups) - {"count", "len", "share"})
        if unknown:
            raise ValueError(f"workload.prefix_groups: unknown key(s) {unknown}; expected count, len, share")
        values["num_prefix_groups"] = int(groups.get("count", 0))
        values["prefix_len"] = int(groups.get("len", 0))
        values["prefix_share"] = float(groups.get("share", 1.0))
    if "classes" in raw:
        if not isinstance(raw["classes"], list):
            raise ValueError("workload.classes: expected a list of classes")
        values["classes"] = tuple(
            _build(PriorityClassSpec, c, f"workload.classes[{i}]") for i, c in enumerate(raw["classes"])
        )
    spec = _build(WorkloadSpec, values, "workload")
    spec.validate()
    return spec

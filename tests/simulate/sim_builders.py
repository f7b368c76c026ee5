"""Small simulation configs for the simulator's tests."""

from __future__ import annotations

from infermesh_cli.simulate.sim_config import SimConfig, load_sim_config


def small_config(**sections) -> SimConfig:
    """A few replicas, a fixed law and light Poisson traffic; keyword sections override (merged)."""
    raw = {
        "duration_s": 5,
        "check_invariants_every": 1,
        "cluster": {
            "replicas": 3,
            "frontends": 2,
            "dispatch_policy": "least_load",
            "load_poll_interval_ms": 100,
        },
        "scheduler": {"num_blocks": 400, "max_batch_size": 32, "max_tokens_per_step": 1024},
        "step_time": {
            "fixed_ms": 5,
            "per_token_ms": 0.02,
            "per_seq_ms": 0.1,
            "per_kilo_decode_context_ms": 0.5,
        },
        "network": {"client_frontend_ms": 1, "frontend_scheduler_ms": 0.5, "scheduler_worker_ms": 0.1},
        "workload": {"rate": 20, "prompt_len": {"kind": "uniform", "low": 16, "high": 100}, "output_len": 12},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **value}
        else:
            raw[name] = value
    return config_from(raw)


def config_from(raw: dict) -> SimConfig:
    import json
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="simcfg-")) / "sim.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    return load_sim_config(path, {})

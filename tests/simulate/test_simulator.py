"""`infermesh simulate` runs the service's own scheduler core and the frontend's own routing code."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from infermesh_cli.__main__ import main as cli_main
from infermesh_cli.simulate.engine import Simulation
from infermesh_cli.simulate.report import summarize
from infermesh_cli.simulate.step_time import StepFeatures, StepTimeLaw, fit_law
from infermesh_frontend.routing.policy_factory import make_routing_policy
from infermesh_frontend.routing.replica_table import ReplicaTable
from infermesh_scheduler import server as scheduler_server
from infermesh_scheduler.core.scheduler import Scheduler

from tests.simulate.sim_builders import small_config


def _run(config):
    result = Simulation(config).run()
    return result, summarize(config, result)


def test_replicas_drive_the_services_scheduler_class_with_invariants_checked_every_step(monkeypatch):
    checks = []
    original = Scheduler.check_invariants

    def counted(self):
        checks.append(self)
        original(self)

    # Counting only: the method still runs the core's own checks.
    monkeypatch.setattr(Scheduler, "check_invariants", counted)
    sim = Simulation(small_config())
    for replica in sim.replicas:
        # Exactly the class the scheduler service instantiates, not a subclass or a copy.
        assert type(replica.scheduler) is scheduler_server.Scheduler is Scheduler
        assert not {"schedule", "update", "add_request"} & set(dir(replica.scheduler)) - set(dir(Scheduler))
    result = sim.run()
    steps = sum(r.steps for r in result.replicas)
    assert steps > 100
    # One check after every step of every replica, plus one per replica at the end.
    assert len(checks) == steps + len(result.replicas)
    assert result.leaked_blocks == 0 and result.unfinished == 0


def test_frontends_use_the_real_routing_table_and_policies():
    sim = Simulation(small_config(cluster={"dispatch_policy": "prefix_aware"}))
    for frontend in sim.frontends:
        assert type(frontend.table) is ReplicaTable
        assert type(frontend.policy) is type(make_routing_policy("prefix_aware", block_size=16))
        assert frontend.policy.block_size == sim.config.scheduler.block_size


def test_every_request_completes_with_its_exact_output_length():
    result, summary = _run(small_config())
    assert summary["requests"]["completed"] == summary["requests"]["arrived"] > 50
    assert all(r.output_tokens == r.output_len for r in result.records)
    assert all(r.first_token_s > r.arrival_s and r.finish_s >= r.first_token_s for r in result.records)
    # The network hops alone take 2 * (1 + 0.5) ms before the first token reaches the client.
    assert summary["latency_ms"]["ttft"]["p50"] > 3.0
    assert summary["kv_blocks_leaked"] == 0


def test_ttft_of_a_lone_request_is_hops_plus_one_prefill_step():
    config = small_config(
        workload={"rate": "inf", "num_requests": 1, "prompt_len": 64, "output_len": 3},
        cluster={"replicas": 1, "frontends": 1},
    )
    result, _ = _run(config)
    (record,) = result.records
    law = config.law
    # Prefill of 64 tokens, 1 sequence, 64*65/2 attended pairs; worker round trip 0.2 ms.
    step = law.seconds(StepFeatures(64, 1, 0.0, 64 * 65 / 2 / 1000)) + 0.0002
    hops = 2 * (0.001 + 0.0005)
    assert record.first_token_s - record.arrival_s == pytest.approx(step + hops, rel=1e-9)


def test_a_small_kv_pool_makes_the_core_preempt():
    config = small_config(
        scheduler={"num_blocks": 40, "max_batch_size": 32},
        workload={"rate": 200, "prompt_len": 48, "output_len": 64},
        duration_s=1,
    )
    _, summary = _run(config)
    assert summary["preemptions"] > 0
    assert summary["requests"]["completed"] == summary["requests"]["arrived"]
    assert summary["kv_blocks_leaked"] == 0


def test_prefix_aware_routing_finds_more_cached_prefix_than_round_robin():
    shares = {}
    for policy in ("round_robin", "prefix_aware"):
        config = small_config(
            cluster={"replicas": 8, "frontends": 1, "dispatch_policy": policy},
            workload={
                "rate": 40,
                "prompt_len": 200,
                "output_len": 8,
                "prefix_groups": {"count": 8, "len": 160, "share": 1.0},
            },
            scheduler={"prefix_cache_capacity": 2048},
        )
        shares[policy] = _run(config)[1]["cached_prompt_token_share"]
    assert shares["prefix_aware"] > shares["round_robin"] + 0.1


def test_latency_critical_class_is_served_first_under_overload():
    config = small_config(
        cluster={"replicas": 1, "frontends": 1},
        scheduler={"max_batch_size": 4, "policy": "priority"},
        workload={
            "rate": 60,
            "prompt_len": 32,
            "output_len": 16,
            "classes": [
                {"name": "chat", "weight": 1, "latency_critical": True, "ttft_slo_ms": 500},
                {"name": "batch", "weight": 1, "ttft_slo_ms": 500},
            ],
        },
        duration_s=3,
    )
    _, summary = _run(config)
    slo = summary["slo"]
    assert slo["chat"]["ttft_ms_p50"] < slo["batch"]["ttft_ms_p50"]
    assert slo["chat"]["attainment"] > slo["batch"]["attainment"]


def test_same_seed_same_result_other_seed_other_result():
    a = _run(small_config(seed=1))[1]
    b = _run(small_config(seed=1))[1]
    c = _run(small_config(seed=2))[1]
    assert a["latency_ms"] == b["latency_ms"] and a["throughput"] == b["throughput"]
    assert a["latency_ms"] != c["latency_ms"]


def test_fit_recovers_a_known_law_and_the_request_overhead():
    truth = StepTimeLaw(4.0, 0.05, 0.3, 2.0, 0.7)
    samples = []
    for tokens, seqs, dec, pre in [
        (32, 1, 0, 0.5),
        (512, 1, 0, 131),
        (128, 1, 0, 8),
        (1, 1, 0.1, 0),
        (16, 16, 2.0, 0),
        (64, 64, 10.0, 0),
        (64, 64, 2.0, 0),
        (300, 4, 0, 20),
    ]:
        f = StepFeatures(tokens, seqs, dec, pre)
        overhead = seqs == 1 and tokens > 1
        samples.append((f, truth.seconds(f) + (0.003 if overhead else 0.0), overhead))
    law, overhead_ms = fit_law(samples)
    for name, value in truth.as_dict().items():
        assert getattr(law, name) == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert overhead_ms == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"cluster": {"dispatch_policy": "random"}}, "dispatch_policy must be one of"),
        ({"scheduler": {"num_blockz": 3}}, "unknown option(s) ['num_blockz']"),
        ({"step_time": {"fixed_ms": -1, "per_token_ms": 1}}, "fixed_ms must be a finite number >= 0"),
        ({"workload": {"arrival": "weibull"}}, "workload.arrival must be one of"),
        ({"workload": {"rate": "inf"}}, "needs num_requests > 0"),
        ({"network": {"lan_ms": 1}}, "unknown key(s) ['lan_ms']"),
    ],
)
def test_bad_config_is_refused_with_a_message_naming_the_option(sections, message):
    with pytest.raises(ValueError) as err:
        small_config(**sections)
    assert message in str(err.value)


def test_bursty_arrivals_come_only_in_the_on_phase():
    config = small_config(
        workload={"arrival": "bursty", "rate": 40, "burst_factor": 4, "burst_period_s": 2}, duration_s=8
    )
    result, _ = _run(config)
    phases = [r.arrival_s % 2 for r in result.records]
    assert phases and max(phases) < 0.5
    assert abs(len(phases) - 40 * 8) < 0.25 * 40 * 8


def test_cli_writes_summary_csv_and_plots(tmp_path, capsys):
    config = small_config()
    (tmp_path / "sim.yaml").write_text(
        json.dumps(
            {
                "duration_s": 2,
                "scheduler": {"num_blocks": 400},
                "step_time": config.law.as_dict(),
                "workload": {"rate": 30, "prompt_len": {"kind": "lognormal", "median": 60, "sigma": 0.5}},
            }
        )
    )
    argv = ["simulate", "--config", str(tmp_path / "sim.yaml"), "--replicas", "4"]
    argv += ["--dispatch-policy", "round_robin,least_load", "--csv", str(tmp_path / "r.csv")]
    argv += ["--plot", str(tmp_path / "plots"), "--output", str(tmp_path / "s.json")]
    assert cli_main(argv) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert set(runs) == {"round_robin", "least_load"}
    assert runs["least_load"]["config"]["cluster"]["replicas"] == 4
    assert runs["least_load"]["simulated_requests_per_wall_s"] > 0
    rows = (tmp_path / "r_least_load.csv").read_text().splitlines()
    assert rows[0].startswith("index,class") and len(rows) == runs["least_load"]["requests"]["arrived"] + 1
    for name in ("latency_cdf.png", "load_per_replica_round_robin.png", "load_per_replica_least_load.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "s.json").read_text())["runs"]["round_robin"]["wall_s"] > 0


def test_cli_without_a_step_time_law_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        cli_main(["simulate", "--replicas", "2"])
    assert "infermesh bench profile" in str(err.value)


def test_cli_runs_as_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "infermesh_cli", "simulate", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--profile" in out.stdout


def test_a_simulation_imports_no_model_stack(tmp_path):
    """The simulator lives beside the CLI on machines without torch: a whole run must not import it."""
    (tmp_path / "sim.yaml").write_text(
        json.dumps({"duration_s": 1, "step_time": small_config().law.as_dict(), "workload": {"rate": 20}})
    )
    probe = (
        "import json, sys\n"
        "from infermesh_cli.__main__ import main\n"
        f"main(['simulate', '--config', {str(tmp_path / 'sim.yaml')!r}])\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'safetensors') "
        "if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []

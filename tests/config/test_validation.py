"""Validation: seed 000's rules with their messages and exit status 2, seed 003's rules,
--validate / --print-schema, and refusal of what infermesh cannot honour."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from infermesh_shared.config import ConfigError, load_config, load_schema, resolve_config
from infermesh_shared.config.validate import not_applicable_notes

HEADLINE = "Error: Configuration validation failed"


def run_load(service: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """load_config as a service's main() runs it: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        load_config(service, argv)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


# Seed 000's Validation section, one case per check, with the message each must print.
SEED_000_RULES = [
    (["--block-size", "0"], "block_size must be > 0"),
    (["--gpu-memory-utilization", "0"], "gpu_memory_utilization must be in range (0.0, 1.0]"),
    (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must be in range (0.0, 1.0]"),
    (["--max-batch-size", "0"], "max_batch_size must be > 0"),
    (["--tp-size", "0"], "tp_size must be > 0"),
    (["--pp-size", "0"], "pp_size must be > 0"),
    (["--tp-size", "4", "--num-workers", "2"], "num_workers (2) must be >= tp_size * pp_size (4 * 1 = 4)"),
    (["--tp-size", "2", "--pp-size", "2", "--num-workers", "3"],
     "num_workers (3) must be >= tp_size * pp_size (2 * 2 = 4)"),
    (["--model-path", ""], "model_path must not be empty"),
    (["--log-level", "verbose"], "log_level must be one of trace/debug/info/warn/error (got 'verbose')"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "cause"), SEED_000_RULES)
def test_seed_000_rule_message_and_exit_status(llama_dir, capsys, args, cause):
    status, out, err = run_load("scheduler", ["--model-path", str(llama_dir), *args], capsys)
    assert status == 2
    assert out == ""
    assert err == f"{HEADLINE}\n  Caused by: {cause}\n"


def test_missing_model_path_is_required(capsys):
    status, _, err = run_load("scheduler", [], capsys)
    assert status == 2
    assert err == (
        f"{HEADLINE}\n"
        "  Caused by: model_path is required (set --model-path or model_path in the config file)\n"
    )


def test_seed_000_error_example_reproduces_in_a_real_process(llama_dir, write_file):
    # The seed's example error, from a config file, in a separate interpreter: exact text and status.
    path = write_file("bad.yaml", f"model_path: {llama_dir}\ngpu_memory_utilization: 1.2\n")
    code = "from infermesh_shared.config import load_config; load_config('scheduler')"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "Error: Configuration validation failed\n"
        "  Caused by: gpu_memory_utilization must be in range (0.0, 1.0]\n"
    )


def test_every_broken_rule_is_reported(llama_dir, capsys):
    status, _, err = run_load(
        "scheduler", ["--model-path", str(llama_dir), "--block-size", "0", "--log-level", "loud"], capsys
    )
    assert status == 2
    assert err.splitlines() == [
        HEADLINE,
        "  Caused by: block_size must be > 0",
        "  Caused by: log_level must be one of trace/debug/info/warn/error (got 'loud')",
    ]


def test_validate_prints_resolved_config_and_exits_0(llama_dir, capsys):
    status, out, err = run_load(
        "scheduler", ["--model-path", str(llama_dir), "--max-batch-size", "8", "--validate"], capsys
    )
    assert status == 0
    resolved = json.loads(out)
    assert resolved["max_batch_size"] == 8
    assert resolved["model_path"] == str(llama_dir)
    assert set(resolved) == set(load_schema("scheduler")["properties"])


def test_print_schema_needs_no_other_option(capsys):
    status, out, _ = run_load("worker", ["--print-schema"], capsys)
    assert status == 0
    assert json.loads(out) == load_schema("worker")


def test_model_path_without_config_json_is_refused(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(tmp_path)])
    assert err.value.causes == [
        f"model metadata read failed: model_path {str(tmp_path)!r} has no config.json "
        "(not a Hugging Face model directory)"
    ]


def test_max_model_len_must_fit_the_model(llama_dir):
    assert (
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--max-model-len", "8192"]).max_model_len
        == 8192
    )
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--max-model-len", "8193"])
    assert err.value.causes == ["max_model_len (8193) must be <= the model's max_position_embeddings (8192)"]


def test_prefix_cache_capacity_must_hold_a_block(llama_dir):
    base = ["--model-path", str(llama_dir), "--block-size", "16"]
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", [*base, "--prefix-cache-capacity", "8"])
    assert err.value.causes[0].startswith("prefix_cache_capacity (8 tokens) is less than one block")
    assert resolve_config("scheduler", [*base, "--prefix-cache-capacity", "16"]).prefix_cache_capacity == 16


def test_tp_size_must_divide_the_heads(llama_dir):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--tp-size", "3", "--num-workers", "3"])
    assert err.value.causes == ["tp_size (3) must divide the model's num_attention_heads (32)"]


def test_custom_config_must_be_a_json_object(llama_dir):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--custom-config", "{max_len: 3}"])
    assert err.value.causes[0].startswith("custom_config is not valid JSON: ")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--custom-config", "[1, 2]"])
    assert err.value.causes == ["custom_config must be a JSON object (got list)"]


def test_option_that_does_nothing_in_this_configuration_is_refused(llama_dir):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--num-cpu-blocks", "64"])
    assert err.value.causes == [
        "num_cpu_blocks only applies when enable_swap is true (it is false): "
        "remove num_cpu_blocks or set enable_swap"
    ]
    cfg = resolve_config(
        "scheduler", ["--model-path", str(llama_dir), "--num-cpu-blocks", "64", "--enable-swap"]
    )
    assert cfg.num_cpu_blocks == 64


def test_x_unsupported_refuses_a_non_default_value(llama_dir):
    schema = load_schema("scheduler")
    schema["properties"]["enable_cow"]["x-unsupported"] = "copy-on-write lands with beam search"
    assert (
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--enable-cow"], schema).enable_cow
        is True
    )
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--no-enable-cow"], schema)
    assert err.value.causes == [
        "enable_cow = false is not supported yet: copy-on-write lands with beam search"
    ]


def test_not_applicable_options_are_named_for_the_device():
    schema = load_schema("scheduler")
    notes = not_applicable_notes(schema, {"enable_flash_attn": True, "block_size": 16}, "cpu")
    assert notes == ["enable_flash_attn = true is not applicable on cpu (applies on cuda)"]
    assert not_applicable_notes(schema, {"enable_flash_attn": True}, "cuda") == []


# Seed 003's grouped options infermesh cannot honour: refused with a message saying why.
SEED_003_REFUSALS = [
    ("parallel_config: {dp: 2}",
     "parallel_config.dp = 2 is not supported: data-parallel replicas are separate scheduler "
     "deployments; run that many schedulers and list them in the frontend's scheduler_addresses"),
    ("quantization_config: {kvcache_quant_mode: fp8}",
     "quantization_config.kvcache_quant_mode = 'fp8' is not supported yet: infermesh keeps "
     "weights and KV cache in dtype (bf16/fp16/fp32); fp8/int8/int4 quantization is not implemented"),
    ("quantization_config: {gemm_quant_mode: fp4}",
     "Invalid gemm_quant_mode: 'fp4' (valid: float16, fp8, int8, int4)"),
    ("scheduling_config: {schedule_policy: lpm}",
     "scheduling_config.schedule_policy = 'lpm' (longest prefix match first) is not supported yet; use fcfs, "
     "priority, fair, edf or lrs"),
    ("scheduling_config: {chunked_prefill_enabled: false}",
     "scheduling_config.chunked_prefill_enabled = False is not supported: infermesh always "
     "splits long prefills into chunks of at most max_tokens_per_step tokens; "
     "raise max_tokens_per_step instead"),
]  # fmt: skip


@pytest.mark.parametrize(("grouped", "cause"), SEED_003_REFUSALS)
def test_seed_003_options_that_cannot_be_honoured_are_refused(llama_dir, write_file, grouped, cause):
    path = write_file("s.yaml", f"model_path: {llama_dir}\n{grouped}\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [cause]


def test_seed_003_tp_times_pp_over_total_gpus(llama_dir, write_file):
    path = write_file(
        "s.yaml",
        f"model_path: {llama_dir}\nparallel_config: {{tp: 4, pp: 2}}\nsystem_config: {{total_gpus: 4}}\n",
    )
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [
        "num_workers (4) must be >= tp_size * pp_size (4 * 2 = 8) (given as system_config.total_gpus)"
    ]


def test_enforce_eager_is_accepted_as_not_applicable(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmemory_config: {{enforce_eager: true}}\n")
    cfg = resolve_config("scheduler", ["--config-file", str(path)])
    assert cfg.notes == (
        "memory_config.enforce_eager is not applicable: "
        "infermesh always runs the model eagerly (no CUDA graphs)",
    )


def test_swap_space_gib_becomes_cpu_blocks(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nadvanced_tuning_config: {{swap_space: 1}}\n")
    cfg = resolve_config("scheduler", ["--config-file", str(path)])
    # Llama 3 8B, bf16, 16-token blocks: 16 * 2 * 32 * 8 * 128 * 2 = 2 MiB per block.
    assert cfg.enable_swap is True
    assert cfg.num_cpu_blocks == 512


def test_frontend_static_discovery_needs_addresses(llama_dir):
    with pytest.raises(ConfigError) as err:
        resolve_config("frontend", ["--model-path", str(llama_dir)])
    assert err.value.causes == ["discovery = 'static' needs scheduler_addresses to be set"]


def test_worker_scheduler_address_format():
    with pytest.raises(ConfigError) as err:
        resolve_config("worker", ["--scheduler-address", "localhost"])
    assert err.value.causes[0].startswith("scheduler_address = 'localhost' is not in the expected format")
    assert (
        resolve_config("worker", ["--scheduler-address", "unix:/tmp/s.sock"]).scheduler_address
        == "unix:/tmp/s.sock"
    )


def test_validate_shows_not_applicable_notes(llama_dir, write_file, capsys):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmemory_config: {{enforce_eager: false}}\n")
    status, out, err = run_load("scheduler", ["--config-file", str(path), "--validate"], capsys)
    assert status == 0 and json.loads(out)["model_path"] == str(llama_dir)
    assert err == (
        "note: memory_config.enforce_eager is not applicable: "
        "infermesh always runs the model eagerly (no CUDA graphs)\n"
    )


def test_frontend_discovery_and_port_rules_are_checked_at_load(llama_dir):
    base = ["--model-path", str(llama_dir)]
    with pytest.raises(ConfigError) as err:
        resolve_config("frontend", [*base, "--discovery", "dns", "--dns-name", "schedulers"])
    assert err.value.causes == [
        "dns_name must be HOST:PORT resolving to every scheduler replica "
        "(expected host:port, got 'schedulers')"
    ]
    with pytest.raises(ConfigError) as err:
        resolve_config(
            "frontend",
            [
                *base,
                "--discovery",
                "redis",
                "--redis-url",
                "redis://r:6379/0",
                "--scheduler-addresses",
                "a:1",
            ],
        )
    assert err.value.causes == [
        "scheduler_addresses only applies when discovery is 'static' (it is 'redis'): "
        "remove scheduler_addresses or set discovery"
    ]
    with pytest.raises(ConfigError) as err:
        resolve_config(
            "frontend", [*base, "--scheduler-addresses", "a:1", "--port", "9000", "--http-port", "9000"]
        )
    assert err.value.causes == [
        "http_port 9000 is also the gRPC port or the metrics port; give the HTTP API a port of its own"
    ]


@pytest.mark.parametrize("value", [False, True])
def test_seed_003_disable_sliding_window_is_the_option_sent_to_workers(llama_dir, write_file, value):
    grouped = f"advanced_tuning_config: {{disable_sliding_window: {str(value).lower()}}}"
    path = write_file("s.yaml", f"model_path: {llama_dir}\n{grouped}\n")
    cfg = resolve_config("scheduler", ["--config-file", str(path)])
    assert cfg.disable_sliding_window is value and cfg.notes == ()
    assert resolve_config("scheduler", ["--model-path", str(llama_dir)]).disable_sliding_window is False

"""Seed 003's legacy flat `parameters` form (runtime flag -> list of values): one value per flag is
mapped onto the same options as the grouped sections; a sweep or an unknown flag is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from infermesh_shared.config import ConfigError, load_schema, resolve_config
from infermesh_shared.config.sources import LEGACY_PARAMETERS, SEED003_ALIASES


def _resolve(write_file, llama_dir, parameters: dict, extra: str = ""):
    text = f"model_path: {llama_dir}\nparameters: {json.dumps(parameters)}\n{extra}"
    return resolve_config("scheduler", ["--config-file", str(write_file("s.yaml", text))])


def _causes(write_file, llama_dir, parameters: dict, extra: str = "") -> list[str]:
    with pytest.raises(ConfigError) as err:
        _resolve(write_file, llama_dir, parameters, extra)
    return err.value.causes


def test_legacy_parameters_equal_the_grouped_form(llama_dir, write_file):
    legacy = _resolve(
        write_file,
        llama_dir,
        {
            "tp-size": [2],
            "pp-size": [2],
            "mem-fraction-static": [0.85],
            "max-model-len": [4096],
            "schedule-policy": ["fcfs"],
            "max-num-batched-tokens": [8192],
            "max-num-seqs": [128],
            "kv-cache-dtype": ["float16"],
            "enable-prefix-caching": [False],
            "block-size": [32],
        },
        "num_workers: 4\n",
    )
    grouped = resolve_config(
        "scheduler",
        [
            "--config-file",
            str(
                write_file(
                    "g.yaml",
                    f"model_path: {llama_dir}\nnum_workers: 4\nparallel_config: {{tp: 2, pp: 2}}\n"
                    "memory_config: {mem_fraction_static: 0.85, max_model_len: 4096, block_size: 32}\n"
                    "scheduling_config: {schedule_policy: fcfs, max_num_batched_tokens: 8192,\n"
                    "                    max_num_seqs: 128}\n"
                    "quantization_config: {kvcache_quant_mode: float16}\n"
                    "advanced_tuning_config: {enable_prefix_caching: false}\n",
                )
            ),
        ],
    )
    assert legacy.to_dict() == grouped.to_dict()
    assert (legacy.tp_size, legacy.gpu_memory_utilization, legacy.max_batch_size) == (2, 0.85, 128)
    assert legacy.block_size == 32 and legacy.policy == "continuous"


def test_vllm_flag_names_and_the_seeds_example(llama_dir, write_file):
    cfg = _resolve(
        write_file,
        llama_dir,
        {"tensor-parallel-size": [2], "gpu-memory-utilization": [0.8], "disable-sliding-window": [True]},
        "num_workers: 2\n",
    )
    assert (cfg.tp_size, cfg.gpu_memory_utilization, cfg.disable_sliding_window) == (2, 0.8, True)
    seeds_example = {"tp-size": [4], "mem-fraction-static": [0.9]}
    cfg = _resolve(write_file, llama_dir, seeds_example, "num_workers: 4\n")
    assert (cfg.tp_size, cfg.gpu_memory_utilization) == (4, 0.9)


def test_several_values_are_refused_because_a_run_takes_one(llama_dir, write_file):
    assert _causes(write_file, llama_dir, {"tp-size": [2, 4]}) == [
        "parameters.tp-size = [2, 4] lists 2 values: a legacy parameters entry is a sweep (one run per "
        "value) but a scheduler runs with one value; keep one (e.g. [2]) and start one scheduler per "
        "value to compare them"
    ]
    assert _causes(write_file, llama_dir, {"max-num-seqs": []}) == [
        "parameters.max-num-seqs is empty: give the one value to run with, e.g. max-num-seqs: [4]"
    ]


def test_unknown_flag_is_refused_with_a_hint_in_the_seeds_format(llama_dir, write_file):
    assert _causes(write_file, llama_dir, {"tp-sise": [2], "mem-fraction-static": [0.9]}) == [
        "Invalid parameters key: 'tp-sise' (did you mean 'tp-size'?)"
    ]
    causes = _causes(write_file, llama_dir, {"nonsense-knob": [1]})
    assert causes == ["Invalid parameters key: 'nonsense-knob'"]


def test_grouped_rules_apply_to_the_legacy_form(llama_dir, write_file):
    assert _causes(write_file, llama_dir, {"kv-cache-dtype": ["fp8"]}) == [
        "parameters.kv-cache-dtype = 'fp8' is not supported yet: infermesh keeps weights and KV cache in "
        "dtype (bf16/fp16/fp32); fp8/int8/int4 quantization is not implemented"
    ]
    causes = _causes(write_file, llama_dir, {"dp-size": [2]})
    assert causes[0].startswith("parameters.dp-size = 2 is not supported")
    assert _causes(write_file, llama_dir, {"max-num-seqs": [0]})  # the schema still checks the value


def test_legacy_and_grouped_values_that_disagree_name_both(llama_dir, write_file):
    assert _causes(write_file, llama_dir, {"tp-size": [4]}, "num_workers: 4\nparallel_config: {tp: 2}\n") == [
        "tp_size is given twice with different values: parameters.tp-size = 4 and parallel_config.tp = 2"
    ]


def test_parameters_must_be_a_mapping(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nparameters: [tp-size]\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == ["parameters must be a mapping of flag: [value] (got list)"]


def test_every_legacy_flag_names_a_scheduler_option_or_a_grouped_rule():
    props = load_schema("scheduler")["properties"]
    for flag, target in LEGACY_PARAMETERS.items():
        if "." in target:
            section, alias = target.split(".")
            assert alias in SEED003_ALIASES[section], flag
        else:
            assert target in props, flag


def test_only_the_scheduler_takes_legacy_parameters(write_file):
    path = write_file("w.yaml", "parameters: {tp-size: [2]}\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("worker", ["--config-file", str(path)])
    assert err.value.causes[0].startswith("unknown option 'parameters' for the worker")


def test_the_cli_prints_the_refusal_in_the_seed_000_format(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nparameters: {{tp-size: [2, 4]}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "infermesh_scheduler", "--config-file", str(path), "--validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    expected = "Error: Configuration validation failed\n  Caused by: parameters.tp-size = [2, 4]"
    assert proc.stderr.startswith(expected)

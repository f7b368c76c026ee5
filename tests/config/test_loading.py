"""Loading: defaults < config file < command line; YAML and JSON; flat and grouped keys."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from infermesh_shared.config import ConfigError, load_schema, resolve_config
from infermesh_shared.config.flags import build_parser, parse_flags
from infermesh_shared.config.schema import flag_name, property_types
from infermesh_shared.config.sources import normalise


def test_defaults_come_from_the_schema(llama_dir):
    cfg = resolve_config("scheduler", ["--model-path", str(llama_dir)])
    schema = load_schema("scheduler")
    derived = {"max_model_len": 8192}  # 0 = the model's max_position_embeddings, resolved at load
    for key, prop in schema["properties"].items():
        if "default" in prop:
            assert getattr(cfg, key) == derived.get(key, prop["default"]), key
    assert cfg.source("max_batch_size") == "default"


def test_file_overrides_default_and_flag_overrides_file(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmax_batch_size: 128\nlog_level: warn\n")
    cfg = resolve_config("scheduler", ["--config-file", str(path), "--max-batch-size", "8"])
    assert cfg.max_batch_size == 8  # flag beats file
    assert cfg.log_level == "warn"  # file beats default
    assert cfg.block_size == 16  # default
    assert cfg.source("max_batch_size") == "flag"
    assert cfg.source("log_level") == f"file:{path}:log_level"


def test_flag_order_does_not_matter_relative_to_config_file(llama_dir, write_file):
    path = write_file("s.json", json.dumps({"model_path": str(llama_dir), "block_size": 32}))
    cfg = resolve_config("scheduler", ["--block-size", "64", "--config-file", str(path)])
    assert cfg.block_size == 64


def test_yaml_and_json_files_mean_the_same(llama_dir, write_file):
    body = {
        "model_path": str(llama_dir),
        "max_batch_size": 64,
        "enable_preemption": False,
        "gpu_memory_utilization": 0.8,
        "custom_config": None,
    }
    from_json = resolve_config("scheduler", ["--config-file", str(write_file("a.json", json.dumps(body)))])
    yaml_text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items())
    from_yaml = resolve_config("scheduler", ["--config-file", str(write_file("a.yaml", yaml_text))])
    assert from_json.to_dict() == from_yaml.to_dict()
    assert from_yaml.enable_preemption is False and from_yaml.max_batch_size == 64


def test_boolean_flags_both_ways(llama_dir, write_file):
    path = write_file(
        "s.yaml", f"model_path: {llama_dir}\nenable_preemption: false\nenable_prefix_cache: true\n"
    )
    cfg = resolve_config(
        "scheduler", ["--config-file", str(path), "--enable-preemption", "--no-enable-prefix-cache"]
    )
    assert cfg.enable_preemption is True
    assert cfg.enable_prefix_cache is False


def test_flat_and_grouped_keys_are_equivalent(llama_dir, write_file):
    flat = write_file(
        "flat.yaml",
        f"""
model_path: {llama_dir}
tp_size: 2
pp_size: 2
num_workers: 4
gpu_memory_utilization: 0.85
max_model_len: 4096
policy: continuous
max_tokens_per_step: 8192
max_batch_size: 128
enable_prefix_cache: false
block_size: 32
log_level: debug
""",
    )
    grouped = write_file(
        "grouped.yaml",
        f"""
model_config: {{model_path: {llama_dir}}}
parallel_config: {{tp: 2, pp: 2, dp: 1}}
system_config: {{total_gpus: 4}}
memory_config: {{mem_fraction_static: 0.85, max_model_len: 4096, block_size: 32}}
scheduling_config: {{schedule_policy: fcfs, max_num_batched_tokens: 8192, max_num_seqs: 128,
                     chunked_prefill_enabled: true}}
quantization_config: {{gemm_quant_mode: float16, kvcache_quant_mode: float16}}
advanced_tuning_config: {{enable_prefix_caching: false}}
logging_config: {{log_level: debug}}
""",
    )
    flat_cfg = resolve_config("scheduler", ["--config-file", str(flat)])
    grouped_cfg = resolve_config("scheduler", ["--config-file", str(grouped)])
    assert grouped_cfg.to_dict() == flat_cfg.to_dict()
    assert grouped_cfg.tp_size == 2 and grouped_cfg.max_tokens_per_step == 8192


def test_own_sections_group_our_flat_keys(llama_dir, write_file):
    path = write_file(
        "s.yaml", f"model_config:\n  model_path: {llama_dir}\nmemory_config:\n  block_size: 32\n"
    )
    assert resolve_config("scheduler", ["--config-file", str(path)]).block_size == 32


def test_flat_and_grouped_conflict_names_both(llama_dir, write_file):
    path = write_file(
        "s.yaml", f"model_path: {llama_dir}\nblock_size: 16\nmemory_config: {{block_size: 32}}\n"
    )
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [
        "block_size is given twice with different values: block_size = 16 and memory_config.block_size = 32"
    ]


def test_same_value_given_flat_and_grouped_is_fine(llama_dir, write_file):
    path = write_file(
        "s.yaml", f"model_path: {llama_dir}\nmax_batch_size: 8\nscheduling_config: {{max_num_seqs: 8}}\n"
    )
    assert resolve_config("scheduler", ["--config-file", str(path)]).max_batch_size == 8


def test_flag_overrides_grouped_file_value(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nparallel_config: {{tp: 2}}\nnum_workers: 2\n")
    cfg = resolve_config("scheduler", ["--config-file", str(path), "--tp-size", "1"])
    assert cfg.tp_size == 1


def test_unknown_key_in_file_is_refused_with_a_hint(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmax_batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [
        "unknown option 'max_batch_sise' for the scheduler (did you mean 'max_batch_size'?)"
    ]


def test_unknown_key_in_a_section_is_refused_with_a_hint(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmemory_config: {{blok_size: 8}}\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert (
        "unknown option 'memory_config.blok_size' for the scheduler (did you mean 'block_size'?)"
        in err.value.causes
    )


def test_key_in_the_wrong_section_says_where_it_belongs(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmemory_config: {{max_batch_size: 8}}\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [
        "memory_config.max_batch_size: max_batch_size belongs in scheduling_config (or at the top level), "
        "not in memory_config"
    ]


def test_unknown_flag_is_refused_with_a_hint(llama_dir):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--max-batch-sise", "8"])
    assert err.value.causes == ["unknown option --max-batch-sise (did you mean --max-batch-size?)"]


def test_prefix_of_a_flag_is_not_accepted(llama_dir):
    with pytest.raises(ConfigError):
        resolve_config("scheduler", ["--model-path", str(llama_dir), "--max-batch", "8"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch-size", "eight"], "max_batch_size must be an integer (got string 'eight')"),
        (["--gpu-memory-utilization", "high"], "gpu_memory_utilization must be a number (got string 'high')"),
    ],
)
def test_wrong_type_on_the_command_line(llama_dir, args, message):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--model-path", str(llama_dir), *args])
    assert err.value.causes == [message]


def test_wrong_type_in_a_file(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nenable_preemption: 'sometimes'\nblock_size: 1.5\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [
        "block_size must be an integer (got number 1.5)",
        "enable_preemption must be a boolean (got string 'sometimes')",
    ]


def test_every_schema_property_has_a_flag_and_nothing_else_does():
    for service in ("scheduler", "worker", "frontend"):
        schema = load_schema(service)
        parser = build_parser(service, schema)
        dests = {a.dest for a in parser._actions} - {"help", "config_file", "validate", "print_schema"}
        assert dests == set(schema["properties"]), service


def test_array_option_from_a_comma_separated_flag(llama_dir):
    cfg = resolve_config(
        "frontend", ["--model-path", str(llama_dir), "--scheduler-addresses", "127.0.0.1:5001,127.0.0.1:5002"]
    )
    assert cfg.scheduler_addresses == ("127.0.0.1:5001", "127.0.0.1:5002")  # frozen: a tuple


def test_custom_config_mapping_in_a_file_is_its_json_text(llama_dir, write_file):
    path = write_file(
        "s.yaml", f"model_path: {llama_dir}\ncustom_config: {{max_position_embeddings: 4096}}\n"
    )
    cfg = resolve_config("scheduler", ["--config-file", str(path)])
    assert json.loads(cfg.custom_config) == {"max_position_embeddings": 4096}
    assert cfg.model_metadata.max_position_embeddings == 4096


def test_attribute_for_an_unknown_option_raises():
    cfg = resolve_config("worker", ["--scheduler-address", "127.0.0.1:50051"])
    with pytest.raises(AttributeError, match="no option 'max_batch_size'"):
        _ = cfg.max_batch_size


def _sample(prop: dict):
    """A valid non-default value of a property, as a file would hold it."""
    kinds = property_types(prop)
    if "enum" in prop:
        return next(v for v in prop["enum"] if v != prop.get("default"))
    if "boolean" in kinds:
        return not prop.get("default", False)
    if "integer" in kinds:
        return int(prop.get("minimum", prop.get("exclusiveMinimum", 0))) + 3
    if "number" in kinds:
        return 0.5
    if "array" in kinds:
        return ["127.0.0.1:7001", "127.0.0.1:7002"]
    return "some-text"


def _as_flag(key: str, value) -> list[str]:
    if isinstance(value, bool):
        return [flag_name(key) if value else "--no-" + key.replace("_", "-")]
    if isinstance(value, list):
        return [flag_name(key), ",".join(value)]
    return [flag_name(key), str(value)]


@pytest.mark.parametrize("service", ["scheduler", "worker", "frontend"])
def test_every_option_reads_the_same_from_a_flag_and_from_a_file(service):
    # Flags are derived from the schema: for every option and type, the flag and the file agree.
    schema = load_schema(service)
    file_values, argv = {}, []
    for key, prop in schema["properties"].items():
        if "pattern" in prop or "null" in property_types(prop):
            continue  # free-form formats are covered by their own tests
        file_values[key] = _sample(prop)
        argv += _as_flag(key, file_values[key])
    from_flags = parse_flags(service, schema, argv).values
    from_file = normalise(file_values, schema, service).values
    assert from_flags == from_file
    assert len(from_flags) >= len(schema["properties"]) - 4


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(tmp_path / "nope.yaml")])
    assert err.value.causes[0].startswith(f"cannot read config file {tmp_path / 'nope.yaml'}: ")


def test_config_file_must_hold_a_mapping(write_file):
    path = write_file("l.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [f"config file {path} must hold a mapping of options, not a list"]


def test_config_survives_pickle_and_deepcopy(llama_dir):
    # Services hand the config to child processes (spawn pickles it).
    cfg = resolve_config("scheduler", ["--model-path", str(llama_dir), "--max-batch-size", "8"])
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg)):
        assert clone.to_dict() == cfg.to_dict()
        assert clone.max_batch_size == 8
        assert clone.model_metadata == cfg.model_metadata
        assert clone.source("max_batch_size") == "flag"


def test_error_from_a_grouped_key_names_what_the_user_wrote(llama_dir, write_file):
    path = write_file("s.yaml", f"model_path: {llama_dir}\nmemory_config: {{mem_fraction_static: 1.5}}\n")
    with pytest.raises(ConfigError) as err:
        resolve_config("scheduler", ["--config-file", str(path)])
    assert err.value.causes == [
        "gpu_memory_utilization must be in range (0.0, 1.0] (given as memory_config.mem_fraction_static)"
    ]

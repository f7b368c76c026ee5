"""`infermesh config translate` and `import-aiconfigurator` on seed 003's examples."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest
import yaml
from infermesh_cli.config_commands import add_config_subcommands
from infermesh_shared.config import ConfigError, resolve_config
from infermesh_shared.config.aiconfigurator import import_aiconfigurator_file
from infermesh_shared.config.translate import translate_file

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "scheduler"

# Seed 003's parallel_config and memory_config examples, in one structured file.
SEED_003_STRUCTURED = """
parallel_config:
  tp: 4
  pp: 2
memory_config:
  mem_fraction_static: 0.85
  max_model_len: 8192
scheduling_config:
  schedule_policy: fcfs
"""


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="infermesh")
    add_config_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status = args.handler(args)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_seed_003_structured_config_to_vllm(write_file, capsys):
    path = write_file("structured.yaml", SEED_003_STRUCTURED)
    status, out, err = run_cli(["config", "translate", "--to", "vllm", str(path)], capsys)
    assert status == 0 and err == ""
    assert shlex.split(out) == [
        "--max-model-len", "8192", "--gpu-memory-utilization", "0.85", "--scheduling-policy", "fcfs",
        "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2",
    ]  # fmt: skip


def test_seed_003_structured_config_to_sglang(write_file, capsys):
    path = write_file("structured.yaml", SEED_003_STRUCTURED)
    status, out, _ = run_cli(["config", "translate", "--to", "sglang", str(path)], capsys)
    assert status == 0
    assert shlex.split(out) == [
        "--context-length", "8192", "--mem-fraction-static", "0.85", "--schedule-policy", "fcfs",
        "--tp-size", "4", "--pp-size", "2",
    ]  # fmt: skip


def test_shared_options_map_to_both_engines(write_file):
    path = write_file(
        "s.yaml",
        """
model_path: /models/llama3-8b
dtype: fp16
max_batch_size: 64
max_tokens_per_step: 2048
enable_prefix_cache: false
block_size: 32
total_blocks: 100
enable_swap: true
swap_space_gb: 4
policy: edf
""",
    )
    vllm = translate_file(path, "vllm")
    assert shlex.split(shlex.join(vllm.args)) == [
        "--model", "/models/llama3-8b", "--dtype", "float16", "--block-size", "32",
        "--num-gpu-blocks-override", "100", "--no-enable-prefix-caching", "--swap-space", "4",
        "--max-num-seqs", "64", "--max-num-batched-tokens", "2048",
    ]  # fmt: skip
    assert vllm.unmapped == ['policy = "edf"']
    sglang = translate_file(path, "sglang")
    assert sglang.args == [
        "--model-path", "/models/llama3-8b", "--dtype", "float16", "--page-size", "32",
        "--max-total-tokens", "3200", "--disable-radix-cache", "--max-running-requests", "64",
        "--chunked-prefill-size", "2048",
    ]  # fmt: skip
    assert sglang.unmapped == ["swap_space_gb = 4", 'policy = "edf"', "enable_swap = true"]


def test_translate_refuses_an_invalid_file(write_file, capsys):
    path = write_file("bad.yaml", "gpu_memory_utilization: 2\n")
    status, out, err = run_cli(["config", "translate", "--to", "vllm", str(path)], capsys)
    assert status == 2 and out == ""
    assert err == (
        "Error: Configuration validation failed\n"
        "  Caused by: gpu_memory_utilization must be in range (0.0, 1.0]\n"
    )


def test_import_seed_003_aiconfigurator_example(capsys):
    status, out, err = run_cli(
        ["config", "import-aiconfigurator", str(EXAMPLES / "aiconfigurator-llama70b.yaml")], capsys
    )
    assert status == 0
    assert yaml.safe_load(out) == {"num_workers": 8, "tp_size": 4, "pp_size": 2}
    assert '# aiconfigurator predicted_metrics: {"throughput": 1200.0, "ttft": 150.0, "tpot": 12.0}' in out
    assert "# NOT IMPORTED: worker_config.kvcache_quant_mode = 'fp8' is not supported yet" in out
    assert err.splitlines()[0].startswith("warning: not imported: worker_config.gemm_quant_mode = 'fp8'")


def test_imported_file_validates_as_a_scheduler_config(tmp_path, capsys):
    model = tmp_path / "llama70b"
    model.mkdir()
    (model / "config.json").write_text(
        '{"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192,'
        ' "vocab_size": 128256, "max_position_embeddings": 8192}'
    )
    out_file = tmp_path / "imported.yaml"
    status, out, _ = run_cli(
        [
            "config",
            "import-aiconfigurator",
            str(EXAMPLES / "aiconfigurator-llama70b.yaml"),
            "-o",
            str(out_file),
            "--model-path",
            str(model),
        ],
        capsys,
    )
    assert status == 0 and out == ""
    cfg = resolve_config("scheduler", ["--config-file", str(out_file)])
    assert (cfg.tp_size, cfg.pp_size, cfg.num_workers, cfg.model_path) == (4, 2, 8, str(model))


def test_import_strict_fails_on_what_cannot_be_imported(capsys):
    status, out, _ = run_cli(
        ["config", "import-aiconfigurator", "--strict", str(EXAMPLES / "aiconfigurator-llama70b.yaml")],
        capsys,
    )
    assert status == 2 and out == ""


def test_import_refuses_disaggregated_serving(write_file):
    path = write_file("disagg.yaml", "serving_mode: disagg\nworker_config: {tp: 1}\n")
    with pytest.raises(ConfigError, match="serving_mode 'disagg' is not supported"):
        import_aiconfigurator_file(path)


def test_config_validate_subcommand(llama_dir, capsys):
    status, out, _ = run_cli(["config", "validate", "scheduler", "--model-path", str(llama_dir)], capsys)
    assert status == 0 and '"model_path"' in out
    status, _, err = run_cli(
        ["config", "validate", "scheduler", "--model-path", str(llama_dir), "--block-size", "0"], capsys
    )
    assert status == 2 and "Caused by: block_size must be > 0" in err


def test_imported_aiconfigurator_result_translates_to_engine_flags(tmp_path, capsys):
    imported = tmp_path / "imported.yaml"
    source = str(EXAMPLES / "aiconfigurator-llama70b.yaml")
    run_cli(["config", "import-aiconfigurator", source, "-o", str(imported)], capsys)
    status, out, err = run_cli(["config", "translate", "--to", "vllm", str(imported)], capsys)
    assert status == 0
    assert out == "--tensor-parallel-size 4 --pipeline-parallel-size 2\n"
    assert err == "# no vllm equivalent, not translated: num_workers = 8\n"


def test_infermesh_command_has_the_config_subcommands(write_file, capsys):
    from infermesh_cli.__main__ import main

    path = write_file("structured.yaml", SEED_003_STRUCTURED)
    assert main(["config", "translate", "--to", "sglang", str(path)]) == 0
    assert "--tp-size 4 --pp-size 2" in capsys.readouterr().out


def test_disable_sliding_window_translates_only_where_it_means_the_same(write_file):
    keep = write_file("keep.yaml", "model_path: /models/mistral\ndisable_sliding_window: false\n")
    assert translate_file(keep, "vllm").args == ["--model", "/models/mistral"]
    assert translate_file(keep, "vllm").unmapped == []
    # vLLM's --disable-sliding-window also caps max_model_len to the window: not what true does here.
    full = write_file("full.yaml", "model_path: /models/mistral\ndisable_sliding_window: true\n")
    assert translate_file(full, "vllm").unmapped == ["disable_sliding_window = true"]
    assert translate_file(full, "sglang").unmapped == ["disable_sliding_window = true"]

"""`infermesh make-model`: write a random-weight Llama checkpoint (benchmarks, offline trials)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infermesh_cli.demo_model import DEMO_ARCH, DEMO_VOCAB_SIZE, write_llama_checkpoint

PRESETS: dict[str, dict[str, int]] = {
    "demo": {**DEMO_ARCH, "vocab_size": DEMO_VOCAB_SIZE},
    # The ~100M-parameter configuration the serving benchmarks report on.
    "llama-100m": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "intermediate_size": 2048,
        "vocab_size": 32000,
        "max_position_embeddings": 2048,
    },
}


def add_make_model_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-model",
        help="write a random-weight Llama checkpoint with a byte-level tokenizer",
        description="Writes config.json, generation_config.json, model.safetensors and tokenizer files.",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_make_model)


def run_make_model(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    write_llama_checkpoint(args.out, seed=args.seed, **preset)
    print(f"wrote {args.preset} model to {args.out}")
    return 0

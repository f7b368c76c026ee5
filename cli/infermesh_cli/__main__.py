"""The `infermesh` command: run the services locally, talk to them, benchmark them, handle configs."""

from __future__ import annotations

import argparse
import sys

from infermesh_cli.bench_command import add_bench_subcommand
from infermesh_cli.certs_command import add_certs_subcommand
from infermesh_cli.config_commands import add_config_subcommands
from infermesh_cli.generate_command import add_generate_subcommand
from infermesh_cli.make_model_command import add_make_model_subcommand
from infermesh_cli.migrate_commands import add_migrate_subcommands
from infermesh_cli.simulate_command import add_simulate_subcommand
from infermesh_cli.up_command import add_up_subcommand


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infermesh", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_up_subcommand(subparsers)
    add_generate_subcommand(subparsers)
    add_bench_subcommand(subparsers)
    add_config_subcommands(subparsers)
    add_make_model_subcommand(subparsers)
    add_certs_subcommand(subparsers)
    add_simulate_subcommand(subparsers)
    add_migrate_subcommands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

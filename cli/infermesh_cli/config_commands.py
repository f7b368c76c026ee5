"""`infermesh config ...`: translate configs to vLLM/SGLang flags, import aiconfigurator
results, validate a service's config, print a service's schema."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from infermesh_shared.config import SERVICES, ConfigError, load_config, load_schema
from infermesh_shared.config.aiconfigurator import import_aiconfigurator_file
from infermesh_shared.config.errors import EXIT_INVALID_CONFIG
from infermesh_shared.config.reference import render_markdown
from infermesh_shared.config.translate import TARGETS, translate_file


def run_translate(args: argparse.Namespace) -> int:
    """Print the target engine's flags for a scheduler config file; unmapped options go to stderr."""
    try:
        translation = translate_file(args.file, args.to)
    except ConfigError as exc:
        sys.stderr.write(exc.render())
        return EXIT_INVALID_CONFIG
    sys.stdout.write(shlex.join(translation.args) + "\n")
    for option in translation.unmapped:
        sys.stderr.write(f"# no {translation.target} equivalent, not translated: {option}\n")
    return 0


def run_import_aiconfigurator(args: argparse.Namespace) -> int:
    """Write the infermesh scheduler config for an aiconfigurator YAML to stdout or -o FILE."""
    try:
        imported = import_aiconfigurator_file(args.file, args.model_path)
    except ConfigError as exc:
        sys.stderr.write(exc.render())
        return EXIT_INVALID_CONFIG
    for reason in imported.dropped:
        sys.stderr.write(f"warning: not imported: {reason}\n")
    if imported.dropped and args.strict:
        sys.stderr.write("error: --strict: some settings could not be imported (see above)\n")
        return EXIT_INVALID_CONFIG
    text = imported.to_yaml()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """Resolve and validate a service's config exactly as the service would, print it as JSON."""
    try:
        load_config(args.service, [*args.service_args, "--validate"])
    except SystemExit as done:  # load_config ends with SystemExit(0) or (2), having printed
        return int(done.code or 0)
    return 0


def run_schema(args: argparse.Namespace) -> int:
    """Print a service's JSON Schema."""
    sys.stdout.write(json.dumps(load_schema(args.service), indent=2) + "\n")
    return 0


def run_docs(args: argparse.Namespace) -> int:
    """Print a service's options as a Markdown reference."""
    sys.stdout.write(render_markdown(args.service))
    return 0


def add_config_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register `infermesh config {translate,import-aiconfigurator,validate,schema,docs}`."""
    config = subparsers.add_parser("config", help="Translate, import, validate and describe configs.")
    commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")

    translate = commands.add_parser(
        "translate", help="Print the vLLM or SGLang flags equivalent to a scheduler config file."
    )
    translate.add_argument("--to", required=True, choices=TARGETS, help="Engine whose flags to print.")
    translate.add_argument(
        "file", metavar="FILE", help="infermesh scheduler config (YAML/JSON, flat or grouped)."
    )
    translate.set_defaults(handler=run_translate)

    importer = commands.add_parser(
        "import-aiconfigurator", help="Turn an aiconfigurator result YAML into an infermesh scheduler config."
    )
    importer.add_argument(
        "file", metavar="FILE", help="aiconfigurator YAML (model_name, worker_config, ...)."
    )
    importer.add_argument("-o", "--output", metavar="FILE", help="Write the config here instead of stdout.")
    importer.add_argument("--model-path", help="Model directory to put in the config as model_path.")
    importer.add_argument(
        "--strict", action="store_true", help="Fail (exit 2) if any setting cannot be imported."
    )
    importer.set_defaults(handler=run_import_aiconfigurator)

    validate = commands.add_parser(
        "validate", help="Resolve a service's config (flags, --config-file) and print it, or the errors."
    )
    validate.add_argument("service", choices=SERVICES)
    validate.add_argument("service_args", nargs=argparse.REMAINDER, help="The service's own flags.")
    validate.set_defaults(handler=run_validate)

    schema = commands.add_parser("schema", help="Print a service's JSON Schema.")
    schema.add_argument("service", choices=SERVICES)
    schema.set_defaults(handler=run_schema)

    docs = commands.add_parser("docs", help="Print a service's options as a Markdown reference.")
    docs.add_argument("service", choices=SERVICES)
    docs.set_defaults(handler=run_docs)

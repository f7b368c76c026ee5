"""`infermesh generate`: send one prompt to a frontend and print the completion."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc and the stubs load in the handler, so `infermesh --help` does not pay for them
    from infermesh.v1 import frontend_pb2

from infermesh_cli.frontend_client import add_frontend_client_options, call_metadata, frontend_tls

DEFAULT_FRONTEND_ADDRESS = "127.0.0.1:50050"


def add_generate_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Adds `generate` to the infermesh command's subparsers."""
    parser = subparsers.add_parser(
        "generate",
        help="generate a completion for a prompt",
        description="Sends TEXT to an infermesh frontend and prints the generated text.",
    )
    parser.add_argument("text", metavar="TEXT", help="the prompt")
    parser.add_argument("--address", default=DEFAULT_FRONTEND_ADDRESS, help="frontend host:port")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="tokens to generate (frontend default if unset)"
    )
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1] (default 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens; 0 = off")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (unseeded if unset)")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating after EOS")
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the answer")
    add_frontend_client_options(parser)
    parser.set_defaults(handler=run_generate)


def _request_input(args: argparse.Namespace) -> frontend_pb2.GenerateInput:
    from infermesh.v1 import frontend_pb2

    sampling = frontend_pb2.ClientSamplingParams(stop=args.stop, ignore_eos=args.ignore_eos)
    for field in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        value = getattr(args, field)
        if value is not None:
            setattr(sampling, field, value)
    return frontend_pb2.GenerateInput(text=args.text, sampling=sampling)


def run_generate(args: argparse.Namespace) -> int:
    """Prints the completion (or its deltas with --stream); returns the exit code."""
    import grpc
    from infermesh.v1 import frontend_pb2, frontend_pb2_grpc
    from infermesh_shared.grpc_transport import open_channel

    try:
        metadata = call_metadata(args)
        with open_channel(args.address, frontend_tls(args)) as channel:
            stub = frontend_pb2_grpc.FrontendServiceStub(channel)
            request_input = _request_input(args)
            if args.stream:
                request = frontend_pb2.GenerateStreamRequest(input=request_input)
                for message in stub.GenerateStream(request, timeout=args.timeout, metadata=metadata):
                    sys.stdout.write(message.text)
                    sys.stdout.flush()
                sys.stdout.write("\n")
            else:
                response = stub.Generate(
                    frontend_pb2.GenerateRequest(input=request_input), timeout=args.timeout, metadata=metadata
                )
                sys.stdout.write(response.completions[0].text + "\n")
    except grpc.RpcError as error:
        sys.stderr.write(f"Error: {error.code().name}: {error.details()}\n")
        return 1
    except ValueError as error:  # protobuf rejects out-of-range numbers (e.g. a negative --max-tokens)
        sys.stderr.write(f"Error: {error}\n")
        return 2
    return 0

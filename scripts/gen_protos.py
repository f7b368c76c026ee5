"""Generates the Python gRPC stubs (with .pyi) from protos/ into shared/infermesh/v1/.

The generated files are build output: never edit them, rerun this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "shared"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "infermesh" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    status = protoc.main(args)
    if status != 0:
        print(f"protoc failed with status {status}", file=sys.stderr)
        return status
    for package in (OUT / "infermesh", OUT / "infermesh" / "v1"):
        (package / "__init__.py").touch()
    print(f"generated stubs for {len(protos)} protos in {OUT / 'infermesh' / 'v1'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

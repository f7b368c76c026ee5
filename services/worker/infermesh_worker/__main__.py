"""`infermesh-worker` / `python -m infermesh_worker`: run one worker rank."""

from __future__ import annotations

import sys

from infermesh_shared.config import load_config


def main(argv: list[str] | None = None) -> int:
    cfg = load_config("worker", sys.argv[1:] if argv is None else argv)
    from infermesh_worker.server import run  # torch import only after the config is valid

    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())

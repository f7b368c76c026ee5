"""Builds (once per machine and source version) and loads the C++/OpenMP paged-attention kernel.

The kernel is optional: without a compiler, or if the build fails, attention falls back to the
pure-torch path (gather + SDPA) and the reason is logged once. `scripts/setup.sh` builds it ahead
so a worker's first start does not pay the compile.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("paged_attention.cpp")
# The build uses -march=native: keyed by the CPU's feature flags so a copy of the environment on
# another machine builds its own instead of loading instructions it may not have.
DIR_ENV = "INFERMESH_KERNEL_DIR"
DISABLE_ENV = "INFERMESH_DISABLE_PAGED_KERNEL"
MODULE = "infermesh_paged_attention"

_lock = threading.Lock()
_loaded: dict[str, Callable | None] = {}


def build_dir() -> Path:
    base = Path(os.environ.get(DIR_ENV) or Path(sys.prefix) / "infermesh-kernels")
    return base / _cpu_key()


def load_paged_attention(build_if_missing: bool = True) -> Callable | None:
    """The kernel's `paged_attention(q, k_cache, v_cache, tables, seq_of_token, ctx_lens, window, scale)`,
    or None (fallback) when disabled or unavailable."""
    with _lock:
        if "fn" in _loaded:
            return _loaded["fn"]
        fn = None
        if os.environ.get(DISABLE_ENV):
            logger.info("paged-attention kernel disabled by %s: using the torch path", DISABLE_ENV)
        else:
            fn = _load(build_if_missing)
        _loaded["fn"] = fn
        return fn


def _load(build_if_missing: bool) -> Callable | None:
    directory = build_dir()
    built = directory / f"{MODULE}.so"
    if built.is_file():
        # Import the built module directly: cpp_extension.load re-checks the build with ninja,
        # which costs tens of seconds of a busy machine at every worker start.
        try:
            fn = _import(built)
        except ImportError as exc:
            logger.warning("cannot import %s (%s): rebuilding", built, exc)
        else:
            logger.info("paged-attention kernel loaded from %s", built)
            return fn
    if not build_if_missing:
        logger.warning("paged-attention kernel not built in %s: using the torch path", directory)
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _build_guard(directory):
            if built.is_file():  # another process built it while this one waited
                return _import(built)
            module = _build(directory)
    except Exception as exc:  # any build or load failure means: fall back, and say why
        logger.warning(
            "paged-attention kernel unavailable (%s: %s): using the torch path", type(exc).__name__, exc
        )
        return None
    logger.info("paged-attention kernel loaded from %s", directory)
    return module.paged_attention


@contextmanager
def _build_guard(directory: Path) -> Iterator[None]:
    """One builder per directory at a time, by an flock the OS releases when its holder dies.

    torch's own build lock is a plain file: a process killed mid-build leaves it behind and every
    later build waits on it forever. Holding the flock means no live process is building, so that
    file, if present, is stale and is removed.
    """
    with open(directory / "build.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _build(directory: Path):
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name=MODULE,
        sources=[str(SOURCE)],
        build_directory=str(directory),
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def _import(path: Path) -> Callable:
    import torch  # noqa: F401 - the extension links against libtorch: load that first

    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module in {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.paged_attention


def _cpu_key() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    digest = hashlib.sha256((flags + SOURCE.read_bytes().hex()).encode()).hexdigest()
    return digest[:16]


if __name__ == "__main__":  # scripts/setup.sh: build ahead; a failure is logged, not fatal
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_paged_attention()

"""`infermesh up MODEL`: a model directory, or a Hugging Face hub id found in the local HF cache.

Nothing is downloaded: a hub id resolves only from a snapshot already in the cache
($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), the way transformers finds it
with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(Exception):
    """The reference is neither a model directory nor a hub id in the local cache."""


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def _cached_snapshot(hub_id: str, revision: str) -> Path | None:
    repo = hub_cache_dir() / f"models--{hub_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if (snapshot / "config.json").is_file():
        return snapshot
    # No ref for the revision (a cache copied by hand): take the one snapshot there is.
    snapshots = [p for p in (repo / "snapshots").glob("*") if (p / "config.json").is_file()]
    return snapshots[0] if len(snapshots) == 1 and revision == "main" else None


def resolve_model(reference: str, revision: str = "main") -> tuple[Path, bool]:
    """(model directory, whether `reference` was a hub id); raises ModelNotFoundError saying where
    it looked."""
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path.resolve()} has no config.json: give a Hugging Face model directory"
            )
        return path.resolve(), False
    if _HUB_ID.match(reference):
        snapshot = _cached_snapshot(reference, revision)
        if snapshot is not None:
            return snapshot, True
        raise ModelNotFoundError(
            f"{reference!r} is not a directory and is not in the local Hugging Face cache "
            f"({hub_cache_dir()}); infermesh does not download models: fetch it first "
            f"(e.g. `huggingface-cli download {reference}`, or set HF_HOME to the cache that has it) "
            "or pass the model directory"
        )
    raise ModelNotFoundError(
        f"{reference!r} is neither a model directory nor a Hugging Face hub id (org/name)"
    )

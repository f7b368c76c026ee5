"""Reads tensors, or just this rank's slice of them, from a Hugging Face safetensors checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from infermesh_worker.errors import InvalidArgumentError


class CheckpointReader:
    """Maps tensor names to the *.safetensors file holding them; reads whole tensors or row/column slices.

    Slices go through safe_open(...).get_slice so a rank never materialises other ranks' shards.
    """

    def __init__(self, model_path: str | Path, dtype: torch.dtype, device: torch.device) -> None:
        self.model_path = Path(model_path)
        self.dtype = dtype
        self.device = device
        files = sorted(self.model_path.glob("*.safetensors"))
        if not files:
            raise InvalidArgumentError(f"no *.safetensors files in model_path {str(model_path)!r}")
        index_path = self.model_path / "model.safetensors.index.json"
        self._file_of: dict[str, Path] = {}
        if index_path.is_file():
            weight_map = json.loads(index_path.read_text())["weight_map"]
            self._file_of = {name: self.model_path / fname for name, fname in weight_map.items()}
        else:
            for path in files:
                with safe_open(path, framework="pt") as handle:
                    for name in handle.keys():
                        self._file_of[name] = path
        self._handles: dict[Path, object] = {}

    def has(self, name: str) -> bool:
        return name in self._file_of

    def _handle(self, name: str):
        path = self._file_of.get(name)
        if path is None:
            raise InvalidArgumentError(f"checkpoint in {str(self.model_path)!r} has no tensor {name!r}")
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path]

    def read(
        self,
        name: str,
        expected_shape: tuple[int, ...],
        dim: int | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> torch.Tensor:
        """Tensor `name`, restricted to [start, end) along `dim` when dim is given, in the model dtype.

        The whole tensor must have `expected_shape` (what config.json implies): slicing would
        otherwise load a mismatched checkpoint without complaint.
        """
        view = self._handle(name).get_slice(name)
        shape = list(view.get_shape())
        if shape != list(expected_shape):
            raise InvalidArgumentError(
                f"checkpoint tensor {name!r} has shape {tuple(shape)} but config.json implies "
                f"{tuple(expected_shape)}; the checkpoint in {str(self.model_path)!r} "
                "does not match its config.json"
            )
        if dim is None:
            tensor = view[:]
        else:
            end = shape[dim] if end is None else end
            if end > shape[dim]:
                # Padding past the real size (vocab padded to a multiple of tp_size): read what
                # exists and pad with zeros.
                real_end = min(end, shape[dim])
                part = self._slice(view, len(shape), dim, min(start, real_end), real_end)
                pad_shape = list(part.shape)
                pad_shape[dim] = (end - start) - part.shape[dim]
                tensor = torch.cat([part, torch.zeros(pad_shape, dtype=part.dtype)], dim=dim)
            else:
                tensor = self._slice(view, len(shape), dim, start, end)
        return tensor.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _slice(view, ndim: int, dim: int, start: int, end: int) -> torch.Tensor:
        index = tuple(slice(start, end) if d == dim else slice(None) for d in range(ndim))
        return view[index]

    def close(self) -> None:
        self._handles.clear()

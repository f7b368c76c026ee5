"""KV blocks between the same rank of two worker groups (live migration), over a gRPC stream.

The sender reads blocks of its device cache and streams them in pieces of at most `chunk_bytes`,
so memory stays bounded whatever the block count: the sync client pulls the generator only as
HTTP/2 flow control lets it. The receiver checks the sender's layout against its own before any
byte is written, verifies each block's BLAKE2b-128 digest, writes it into the block its scheduler
reserved, and returns the digests read back from its cache.

Reading blocks while steps run is safe: the blocks sent are held by the sequence on the source
(never reallocated) and, apart from the last partial block sent in the final stop-and-copy, no
longer written. Written blocks on the destination are reserved and held by no sequence, so no step
reads them until the scheduler adopts the sequence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from infermesh.v1 import worker_pb2

from infermesh_worker.errors import FailedPreconditionError, Fault, InvalidArgumentError, WorkerError
from infermesh_worker.kv_cache import KVCache
from infermesh_worker.parallel import ParallelContext

DEFAULT_CHUNK_BYTES = 1 << 20
# Below this a piece costs more in per-message overhead than it saves in memory.
MIN_CHUNK_BYTES = 256

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class ChecksumMismatchError(WorkerError):
    """A block's bytes do not match the digest its sender computed (corrupted in transit)."""

    fault = Fault.CORRUPTED


@dataclass(frozen=True, slots=True)
class KVLayout:
    """What must be equal on both ranks for a block's bytes to mean the same thing."""

    tp_size: int
    tp_rank: int
    pp_size: int
    pp_rank: int
    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    block_bytes: int

    @classmethod
    def of(cls, cache: KVCache, parallel: ParallelContext) -> KVLayout:
        layers, _, _, block_size, heads, head_dim = cache.device_cache.shape
        tensor = cache.device_cache
        return cls(
            tp_size=parallel.tp_size,
            tp_rank=parallel.tp_rank,
            pp_size=parallel.pp_size,
            pp_rank=parallel.pp_rank,
            num_layers=layers,
            block_size=block_size,
            num_kv_heads=heads,
            head_dim=head_dim,
            dtype=_DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype)),
            block_bytes=layers * 2 * block_size * heads * head_dim * tensor.element_size(),
        )

    @classmethod
    def from_proto(cls, message: worker_pb2.KVLayout) -> KVLayout:
        return cls(**{f.name: getattr(message, f.name) for f in fields(cls)})

    def to_proto(self) -> worker_pb2.KVLayout:
        return worker_pb2.KVLayout(**{f.name: getattr(self, f.name) for f in fields(self)})

    def mismatch(self, sender: KVLayout) -> str:
        """Why blocks laid out as `sender` cannot be written here; "" when they can."""
        diffs = [
            f"{f.name} {getattr(sender, f.name)} there vs {getattr(self, f.name)} here"
            for f in fields(self)
            if getattr(sender, f.name) != getattr(self, f.name)
        ]
        if not diffs:
            return ""
        return (
            "KV layouts differ ("
            + "; ".join(diffs)
            + "): blocks move only between ranks of groups with the same tp/pp layout, model, dtype "
            "and block size"
        )


def block_checksum(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def read_block(cache: KVCache, block_id: int) -> bytes:
    """The block's bytes on this rank: [layers, 2, block_size, kv_heads, head_dim], contiguous."""
    block = cache.device_cache[:, :, block_id].to("cpu").contiguous()
    return block.view(torch.uint8).numpy().tobytes()


def write_block(cache: KVCache, block_id: int, data: bytes) -> None:
    target = cache.device_cache[:, :, block_id]
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    target.copy_(flat.view(target.dtype).view(target.shape).to(target.device))


def check_block_ids(ids: Sequence[int], num_blocks: int, what: str) -> None:
    bad = [b for b in ids if b >= num_blocks]
    if bad:
        raise InvalidArgumentError(f"{what} {bad[:5]} out of range: this cache has {num_blocks} blocks")
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError(f"{what} name a block twice")


def send_stream(
    cache: KVCache,
    layout: KVLayout,
    src_block_ids: Sequence[int],
    dst_block_ids: Sequence[int],
    transfer_id: str,
    chunk_bytes: int,
) -> Iterator[worker_pb2.ReceiveKVBlocksRequest]:
    """The header, then each block in pieces of at most chunk_bytes; the last piece carries the digest."""
    header = worker_pb2.KVBlocksHeader(
        layout=layout.to_proto(), dst_block_ids=list(dst_block_ids), transfer_id=transfer_id
    )
    yield worker_pb2.ReceiveKVBlocksRequest(header=header)
    for index, block_id in enumerate(src_block_ids):
        data = read_block(cache, block_id)
        digest = block_checksum(data)
        for start in range(0, len(data), chunk_bytes):
            end = min(start + chunk_bytes, len(data))
            piece = worker_pb2.KVBlockPiece(
                index=index, data=data[start:end], checksum=digest if end == len(data) else b""
            )
            yield worker_pb2.ReceiveKVBlocksRequest(piece=piece)


def resolve_chunk_bytes(requested: int) -> int:
    if requested == 0:
        return DEFAULT_CHUNK_BYTES
    if requested < MIN_CHUNK_BYTES:
        raise InvalidArgumentError(f"chunk_bytes {requested} is below the minimum of {MIN_CHUNK_BYTES}")
    return requested


def receive_stream(
    cache: KVCache, layout: KVLayout, messages: Iterable[worker_pb2.ReceiveKVBlocksRequest]
) -> list[bytes]:
    """Verifies and writes every block of the stream; returns the digests read back, in order.

    Raises before writing when the header is missing or the layout or block ids are wrong, and at
    the first block whose bytes are short, long, out of order or fail their digest.
    """
    stream = iter(messages)
    first = next(stream, None)
    if first is None or not first.HasField("header"):
        raise InvalidArgumentError("a KV block stream starts with its header (layout and block ids)")
    header = first.header
    reason = layout.mismatch(KVLayout.from_proto(header.layout))
    if reason:
        raise FailedPreconditionError(f"transfer {header.transfer_id!r} refused: {reason}")
    dst_ids = list(header.dst_block_ids)
    check_block_ids(dst_ids, cache.num_blocks, "dst_block_ids")
    label = f"transfer {header.transfer_id!r}"
    buffer = bytearray()
    index = 0
    for message in stream:
        if message.HasField("header"):
            raise InvalidArgumentError(f"{label}: a second header in the stream")
        piece = message.piece
        if piece.index != index or index >= len(dst_ids):
            raise InvalidArgumentError(f"{label}: piece of block {piece.index} while expecting block {index}")
        buffer += piece.data
        if len(buffer) > layout.block_bytes:
            raise InvalidArgumentError(f"{label}: block {index} is longer than {layout.block_bytes} bytes")
        if not piece.checksum:
            continue
        if len(buffer) != layout.block_bytes:
            raise InvalidArgumentError(
                f"{label}: block {index} has {len(buffer)} bytes, expected {layout.block_bytes}"
            )
        if block_checksum(buffer) != piece.checksum:
            raise ChecksumMismatchError(
                f"{label}: block {index} (destination block {dst_ids[index]}) does not match its checksum"
            )
        write_block(cache, dst_ids[index], bytes(buffer))
        buffer.clear()
        index += 1
    if index != len(dst_ids) or buffer:
        raise InvalidArgumentError(f"{label}: stream ended after {index} of {len(dst_ids)} blocks")
    return [block_checksum(read_block(cache, b)) for b in dst_ids]

"""KV blocks between two real worker processes (live migration's transport), driven over gRPC.

The proof that the bytes arrived intact is behavioural as well as by digest: the destination
continues the sequence from the copied blocks without computing the prompt (num_computed_tokens
= prompt length) and produces the same greedy tokens as the source and as transformers.
"""

from __future__ import annotations

import grpc
import pytest
from infermesh.v1 import worker_pb2, worker_pb2_grpc
from infermesh_shared.peer_roles import SCHEDULER, WORKER, allowed_roles
from infermesh_worker.kv_transfer import block_checksum

from tests.model_factory import transformers_greedy
from tests.worker.step_plans import StepPlanner
from tests.worker.test_worker_grpc import serve_fake_scheduler, start_worker, stop_worker

pytestmark = pytest.mark.e2e

BLOCK_SIZE = 4
BLOCK_BYTES = BLOCK_SIZE * 2 * 2 * 2 * 16 * 4  # the qwen2 test model in fp32 (see test_worker_grpc)
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]  # 10 tokens: two full blocks and a partial one


def load(stub, model_dir, block_size: int = BLOCK_SIZE, num_blocks: int = 32) -> None:
    stub.LoadModel(
        worker_pb2.LoadModelRequest(
            model_path=str(model_dir), dtype="fp32", block_size=block_size, max_model_len=256
        ),
        timeout=120,
    )
    stub.InitKVCache(worker_pb2.InitKVCacheRequest(num_blocks=num_blocks), timeout=30)


def decode(stub, planner: StepPlanner, seq_id: int, steps: int) -> None:
    for _ in range(steps):
        response = stub.Execute(worker_pb2.ExecuteRequest(plan=planner.plan({seq_id: 1})), timeout=30)
        planner.record(response.tokens)


@pytest.fixture(scope="module")
def two_workers():
    """Two worker processes for the module; each test loads the models it needs (LoadModel and
    InitKVCache replace the whole cache, so tests do not see each other's blocks)."""
    server, _, port = serve_fake_scheduler()
    started = [start_worker(f"127.0.0.1:{port}") for _ in range(2)]
    channels = [grpc.insecure_channel(address) for _, address, _ in started]
    try:
        yield [
            (worker_pb2_grpc.WorkerServiceStub(c), a) for c, (_, a, _) in zip(channels, started, strict=True)
        ]
    finally:
        for channel in channels:
            channel.close()
        for process, _, _ in started:
            stop_worker(process)
        server.stop(grace=0).wait()


def test_blocks_copied_bit_for_bit_and_the_destination_continues_without_recompute(two_workers, model_dirs):
    (source, _), (destination, destination_address) = two_workers
    model_dir = model_dirs["qwen2"]
    load(source, model_dir)
    load(destination, model_dir)

    source_plan = StepPlanner(BLOCK_SIZE, 16)
    seq = source_plan.add(1, PROMPT)
    response = source.Execute(worker_pb2.ExecuteRequest(plan=source_plan.plan({1: len(PROMPT)})), timeout=30)
    source_plan.record(response.tokens)
    first_token = seq.outputs[0]

    dst_blocks = [20, 21, 22]
    sent = source.SendKVBlocks(
        worker_pb2.SendKVBlocksRequest(
            destination_address=destination_address,
            src_block_ids=seq.block_ids,
            dst_block_ids=dst_blocks,
            transfer_id="req-1/stage-1",
            chunk_bytes=300,  # several pieces per block: reassembly is exercised
        ),
        timeout=30,
    )
    assert sent.num_blocks == 3 and sent.num_bytes == 3 * BLOCK_BYTES
    assert len(sent.block_checksums) == 3 and len(set(sent.block_checksums)) == 3

    # Back from the destination into other blocks of the source: the digests read back there must
    # equal the ones read back on the destination (the bytes are the same on both processes).
    back = destination.SendKVBlocks(
        worker_pb2.SendKVBlocksRequest(
            destination_address=two_workers[0][1],
            src_block_ids=dst_blocks,
            dst_block_ids=[13, 14, 15],
            transfer_id="req-1/back",
        ),
        timeout=30,
    )
    assert list(back.block_checksums) == list(sent.block_checksums)

    # The destination continues from the copied KV: prompt already computed, first token known.
    destination_plan = StepPlanner(BLOCK_SIZE, 12)
    moved = destination_plan.add(
        1, PROMPT + [first_token], prefix_blocks=dst_blocks, num_computed=len(PROMPT), num_output=1
    )
    moved.outputs.append(first_token)
    decode(destination, destination_plan, 1, 4)
    decode(source, source_plan, 1, 4)
    expected = transformers_greedy(model_dir, PROMPT, 5)
    assert seq.outputs == expected
    assert moved.outputs == expected


def test_a_different_layout_is_refused_with_the_reason(two_workers, model_dirs):
    (source, _), (destination, destination_address) = two_workers
    load(source, model_dirs["qwen2"])
    load(destination, model_dirs["qwen2"], block_size=8)
    with pytest.raises(grpc.RpcError) as excinfo:
        source.SendKVBlocks(
            worker_pb2.SendKVBlocksRequest(
                destination_address=destination_address, src_block_ids=[0], dst_block_ids=[0], transfer_id="t"
            ),
            timeout=30,
        )
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "block_size 4 there vs 8 here" in excinfo.value.details()
    assert destination_address in excinfo.value.details()

    # A sender claiming another tensor-parallel layout is refused before any byte is written.
    layout = worker_pb2.KVLayout(
        tp_size=2,
        pp_size=1,
        num_layers=2,
        block_size=8,
        num_kv_heads=1,
        head_dim=16,
        dtype="fp32",
        block_bytes=BLOCK_BYTES,
    )
    header = worker_pb2.KVBlocksHeader(layout=layout, dst_block_ids=[0], transfer_id="tp")
    with pytest.raises(grpc.RpcError) as excinfo:
        destination.ReceiveKVBlocks(iter([worker_pb2.ReceiveKVBlocksRequest(header=header)]), timeout=30)
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tp_size 2 there vs 1 here" in excinfo.value.details()


def test_corrupted_block_short_stream_and_bad_ids_are_refused(two_workers, model_dirs):
    (source, _), (destination, _) = two_workers
    load(destination, model_dirs["qwen2"])
    load(source, model_dirs["qwen2"])
    layout = worker_pb2.KVLayout(
        tp_size=1,
        pp_size=1,
        num_layers=2,
        block_size=BLOCK_SIZE,
        num_kv_heads=2,
        head_dim=16,
        dtype="fp32",
        block_bytes=BLOCK_BYTES,
    )

    def stream(dst_ids, blocks):
        header = worker_pb2.KVBlocksHeader(layout=layout, dst_block_ids=dst_ids, transfer_id="x")
        yield worker_pb2.ReceiveKVBlocksRequest(header=header)
        for index, (data, digest) in enumerate(blocks):
            yield worker_pb2.ReceiveKVBlocksRequest(
                piece=worker_pb2.KVBlockPiece(index=index, data=data, checksum=digest)
            )

    data = bytes(range(256)) * (BLOCK_BYTES // 256)
    ok = destination.ReceiveKVBlocks(stream([5], [(data, block_checksum(data))]), timeout=30)
    assert list(ok.block_checksums) == [block_checksum(data)]

    cases = [
        ([5], [(data, block_checksum(b"other"))], grpc.StatusCode.DATA_LOSS, "does not match its checksum"),
        ([5, 6], [(data, block_checksum(data))], grpc.StatusCode.INVALID_ARGUMENT, "after 1 of 2 blocks"),
        ([5], [(data[:-4], block_checksum(data[:-4]))], grpc.StatusCode.INVALID_ARGUMENT, "expected"),
        ([99], [], grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ]
    for dst_ids, blocks, code, text in cases:
        with pytest.raises(grpc.RpcError) as excinfo:
            destination.ReceiveKVBlocks(stream(dst_ids, blocks), timeout=30)
        assert excinfo.value.code() == code, excinfo.value.details()
        assert text in excinfo.value.details()

    with pytest.raises(grpc.RpcError) as excinfo:
        source.SendKVBlocks(
            worker_pb2.SendKVBlocksRequest(
                destination_address="127.0.0.1:1", src_block_ids=[0], dst_block_ids=[0]
            ),
            timeout=30,
        )
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as excinfo:
        source.SendKVBlocks(
            worker_pb2.SendKVBlocksRequest(
                destination_address="127.0.0.1:1", src_block_ids=[0, 1], dst_block_ids=[0]
            ),
            timeout=30,
        )
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_only_a_worker_certificate_may_push_blocks_and_only_a_scheduler_may_order_a_send():
    assert allowed_roles("/infermesh.v1.WorkerService/ReceiveKVBlocks") == {WORKER}
    assert allowed_roles("/infermesh.v1.WorkerService/SendKVBlocks") == {SCHEDULER}

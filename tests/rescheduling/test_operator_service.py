"""ReschedulerService's checks on hand-built replicas: it names only known replicas, refuses a
second drain of one replica while the first runs, and a drain moves every running request."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from infermesh.v1 import rescheduler_pb2
from infermesh_frontend.rescheduling.operator_service import ReschedulerServicer

from tests.rescheduling.fakes import FakeReplica, options, report


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    async def abort(self, code, details):
        raise _Aborted(code, details)


def _servicer():
    a = FakeReplica(report(("r1", 10, 1), ("r2", 10, 1), ("r3", 10, 1), waiting=("w1",)))
    b = FakeReplica(report(projected=0.5))
    c = FakeReplica(report(projected=0.1))
    replicas = {"a:1": a, "b:1": b, "c:1": c}
    return ReschedulerServicer(lambda: replicas, options()), a


def _code(call) -> grpc.StatusCode:
    with pytest.raises(_Aborted) as caught:
        asyncio.run(call)
    return caught.value.code


def test_a_drain_moves_every_running_request_least_loaded_destination_first():
    servicer, a = _servicer()
    request = rescheduler_pb2.DrainReplicaRequest(replica_address="a:1")
    result = asyncio.run(servicer.DrainReplica(request, _Context()))
    assert (result.num_running, result.num_migrated, result.num_not_running) == (3, 3, 1)
    assert sorted(a.calls) == [("r1", "c:1"), ("r2", "b:1"), ("r3", "c:1")]


def test_unknown_replicas_and_self_destinations_are_refused():
    servicer, a = _servicer()
    drain = rescheduler_pb2.DrainReplicaRequest
    assert _code(servicer.DrainReplica(drain(replica_address="x:1"), _Context())) == grpc.StatusCode.NOT_FOUND
    unknown_to = drain(replica_address="a:1", destination_addresses=["x:1"])
    assert _code(servicer.DrainReplica(unknown_to, _Context())) == grpc.StatusCode.NOT_FOUND
    to_itself = drain(replica_address="a:1", destination_addresses=["a:1"])
    assert _code(servicer.DrainReplica(to_itself, _Context())) == grpc.StatusCode.INVALID_ARGUMENT
    same = rescheduler_pb2.MigrateOneRequest(request_id="r1", source_address="a:1", destination_address="a:1")
    assert _code(servicer.MigrateOne(same, _Context())) == grpc.StatusCode.INVALID_ARGUMENT
    assert a.calls == []


def test_a_second_drain_of_the_same_replica_is_aborted_while_the_first_runs():
    async def scenario():
        servicer, a = _servicer()
        a.hold = asyncio.Event()
        request = rescheduler_pb2.DrainReplicaRequest(replica_address="a:1")
        first = asyncio.ensure_future(servicer.DrainReplica(request, _Context()))
        await asyncio.sleep(0.05)
        with pytest.raises(_Aborted) as caught:
            await servicer.DrainReplica(request, _Context())
        assert caught.value.code == grpc.StatusCode.ABORTED
        a.hold.set()
        assert (await first).num_migrated == 3

    asyncio.run(scenario())


def test_with_api_keys_only_an_operator_key_may_drain(tmp_path):
    from types import SimpleNamespace

    from infermesh_frontend.client_auth import ApiKeys

    operators = tmp_path / "operators"
    operators.write_text("# the on-call\nop-key\n")
    cfg = SimpleNamespace(api_keys=["client-key"], api_keys_file="", operator_api_keys_file=str(operators))
    keys = ApiKeys.from_config(cfg, environ={})
    assert keys.authenticate("Bearer op-key")[1] == ""  # an operator key is a client key too
    assert keys.operator_refusal("Bearer op-key") == ""
    assert "operator key" in keys.operator_refusal("Bearer client-key")
    assert "operator key" in keys.operator_refusal("")
    assert ApiKeys(()).operator_refusal("") == ""  # an open frontend is open for these too

    replicas = {"a:1": FakeReplica(report(("r1", 10, 1))), "b:1": FakeReplica(report())}
    servicer = ReschedulerServicer(lambda: replicas, options(), lambda _context: keys.operator_refusal(""))
    request = rescheduler_pb2.DrainReplicaRequest(replica_address="a:1")
    assert _code(servicer.DrainReplica(request, _Context())) == grpc.StatusCode.PERMISSION_DENIED
    assert replicas["a:1"].calls == []

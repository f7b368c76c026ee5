"""The FIRST request a freshly formed tensor/pipeline-parallel group serves is right.

Issue 11: right after `infermesh up --tp-size 2` the first answer was sometimes garbage while later
ones were fine, so a test that warms a cluster up first cannot see it. Here every group is new and
its very first Submit is compared, token id for token id, with tp=1 and with transformers.

Every group is new processes, scheduler and workers, as after `infermesh up`. To keep twenty of
them inside the suite's budget the next group's processes start while the current one answers, and
no frontend is started (the tokenizer is not under test).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from infermesh.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from infermesh_cli.demo_model import ensure_demo_model
from infermesh_cli.local_cluster import ServiceProcess, wait_serving
from tokenizers import Tokenizer

from tests.free_port import free_port
from tests.model_factory import transformers_greedy

pytestmark = [pytest.mark.e2e, pytest.mark.multiproc, pytest.mark.slow]

PROMPT = "Once upon a time in a small village"
MAX_TOKENS = 24
FRESH_GROUPS = 10


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory) -> Path:
    return ensure_demo_model(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="module")
def prompt_ids(demo_model) -> list[int]:
    return Tokenizer.from_file(str(demo_model / "tokenizer.json")).encode(PROMPT).ids


def _service(module: str, log: Path, *args: str) -> ServiceProcess:
    process = ServiceProcess(
        name=module.removeprefix("infermesh_"), args=[sys.executable, "-m", module, *args], log_path=log
    )
    process.start()
    return process


def _first_answer(address: str, prompt: list[int]) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        request = scheduler_pb2.SubmitRequest(
            request_id="first",
            prompt_token_ids=prompt,
            sampling=common_pb2.SamplingParams(
                temperature=0.0, top_p=1.0, n=1, max_tokens=MAX_TOKENS, ignore_eos=True
            ),
        )
        return [t for message in stub.Submit(request, timeout=120) for t in message.token_ids]


@dataclass
class _Group:
    """One cluster without a frontend: a scheduler and its tp·pp workers, all new processes."""

    address: str
    scheduler: ServiceProcess
    workers: list[ServiceProcess]

    def kill(self) -> None:
        for service in (*self.workers, self.scheduler):
            service.kill()


def _start_group(model: Path, logs: Path, tp: int, pp: int, index: int) -> _Group:
    """Starts the processes of a new group; they form it on their own (workers retry registering
    until the scheduler listens)."""
    address = f"127.0.0.1:{free_port()}"
    host, port = address.split(":")
    scheduler = _service(
        "infermesh_scheduler", logs / f"scheduler-{index}.log",
        "--host", host, "--port", port, "--model-path", str(model), "--dtype", "fp32",
        "--tp-size", str(tp), "--pp-size", str(pp), "--num-workers", str(tp * pp),
    )  # fmt: skip
    workers = [
        _service(
            "infermesh_worker",
            logs / f"worker-{index}-{rank}.log",
            "--host",
            host,
            "--port",
            "0",
            "--scheduler-address",
            address,
            "--worker-name",
            f"w{rank}",
            # One torch thread each: tp·pp workers share two cores (as the e2e clusters run them).
            "--num-threads",
            "1",
            "--kv-cache-memory-bytes",
            str(64 * 1024 * 1024),
        )  # fmt: skip
        for rank in range(tp * pp)
    ]
    return _Group(address, scheduler, workers)


def _fresh_groups(
    model: Path, logs: Path, prompt: list[int], tp: int, pp: int, count: int
) -> list[list[int]]:
    """First answers of `count` fresh groups of shape tp x pp: each one new scheduler and worker
    processes. The next group's processes start while the current group answers (process start
    is most of a group's cost); each group is killed right after its first answer."""
    logs.mkdir(parents=True, exist_ok=True)
    answers: list[list[int]] = []
    started = [_start_group(model, logs, tp, pp, 0)]
    try:
        for index in range(count):
            group = started[index]
            wait_serving(group.address, 180, give_up=lambda g=group: _exited(g))
            if index + 1 < count:
                started.append(_start_group(model, logs, tp, pp, index + 1))
            answers.append(_first_answer(group.address, prompt))
            group.kill()
    finally:
        for group in started:
            group.kill()
    return answers


def _exited(group: _Group) -> str:
    for service in (group.scheduler, *group.workers):
        if not service.alive():
            return f"{service.name} exited: {service.first_error_line()}"
    return ""


def test_every_fresh_parallel_group_answers_its_first_request_like_tp1_and_transformers(
    demo_model, prompt_ids, tmp_path
):
    expected = transformers_greedy(demo_model, prompt_ids, MAX_TOKENS)
    assert _fresh_groups(demo_model, tmp_path / "tp1", prompt_ids, 1, 1, 1) == [expected]
    for tp, pp in ((2, 1), (2, 2)):
        answers = _fresh_groups(demo_model, tmp_path / f"tp{tp}pp{pp}", prompt_ids, tp, pp, FRESH_GROUPS)
        wrong = [i for i, answer in enumerate(answers) if answer != expected]
        assert not wrong, (
            f"tp={tp} pp={pp}: fresh groups {wrong} answered their first request with "
            f"{[answers[i] for i in wrong]}, expected {expected} (logs under {tmp_path})"
        )

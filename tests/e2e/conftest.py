"""e2e fixtures: clusters of real service processes, stopped after use, checked for leaked blocks."""

from __future__ import annotations

import pytest

from tests.e2e.harness import build_served_model, start_cluster, wait_all_blocks_free


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory) -> object:
    return build_served_model("llama", tmp_path_factory.mktemp("llama-model"))


@pytest.fixture(scope="module")
def llama_cluster(llama_model, tmp_path_factory):
    cluster = start_cluster(
        llama_model,
        tmp_path_factory.mktemp("llama-logs"),
        scheduler_args=["--dtype", "fp32", "--total-blocks", "512", "--max-batch-size", "64"],
    )
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def no_leaked_blocks(request):
    """After every test that used a cluster, every KV block is back in the pool."""
    yield
    for name in ("llama_cluster",):
        if name in request.fixturenames:
            cluster = request.getfixturevalue(name)
            wait_all_blocks_free(cluster.scheduler_address)

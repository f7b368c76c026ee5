"""`up` gives each service its own drain_timeout_s (from the config its flags resolve to) plus a
margin between SIGTERM and SIGKILL."""

from __future__ import annotations

import json

from infermesh_cli.local_cluster import STOP_MARGIN_S, stop_grace_s

from tests.e2e.harness import build_served_model


def test_the_grace_is_the_services_drain_timeout_plus_a_margin(tmp_path):
    model = [
        *("--model-path", str(build_served_model("llama", tmp_path / "model"))),
        *("--scheduler-addresses", "127.0.0.1:50051"),
    ]
    assert stop_grace_s("frontend", model) == 30 + STOP_MARGIN_S  # the schema default
    assert stop_grace_s("frontend", [*model, "--drain-timeout-s", "45"]) == 45 + STOP_MARGIN_S
    assert stop_grace_s("worker", ["--drain-timeout-s=2"]) == 2 + STOP_MARGIN_S
    config = tmp_path / "frontend.json"
    config.write_text(json.dumps({"drain_timeout_s": 90}))
    assert stop_grace_s("frontend", [*model, "--config-file", str(config)]) == 90 + STOP_MARGIN_S
    # Flags the service will refuse: the default (the service exits on its own anyway).
    assert stop_grace_s("frontend", [*model, "--drain-timeout-s", "-1"]) == 30 + STOP_MARGIN_S

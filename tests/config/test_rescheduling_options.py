"""Seed 001's rescheduler options: the seed's names and defaults in the frontend's and
infermesh-rescheduler's schemas (one shared fragment), and the rules that refuse what cannot work."""

from __future__ import annotations

import pytest
from infermesh_shared.config import ConfigError, config_from_options, load_schema

# Seed 001, "Rescheduler" (core, load balance, migration request, gRPC): name -> default.
SEED_001_RESCHEDULER = {
    "enable_rescheduling": False,
    "rescheduling_policies": ["decode_load", "prefill_failover", "decode_failover", "neutral_failover"],
    "rescheduling_interval_ms": 500,
    "colocated_rescheduling_mode": False,
    "standalone_rescheduling_mode": False,
    "rescheduling_decode_load_metric": "kv_cache_usage_ratio_projected",
    "rescheduling_decode_load_threshold": 1.0,
    "rescheduling_neutral_load_metric": "kv_cache_usage_ratio_projected",
    "rescheduling_neutral_load_threshold": 1.0,
    "rescheduling_load_balance_threshold": 0.0,
    "rescheduling_load_balance_scope": "cluster",
    "rescheduling_req_select_rule": "TOKEN",
    "rescheduling_req_select_order": "SR",
    "rescheduling_req_select_value": 1024,
    "llumlet_grpc_timeout_seconds": 5,
}
RUNNABLE = ["decode_load", "neutral_failover"]


def test_the_frontend_has_every_seed_option_with_the_seed_default():
    props = load_schema("frontend")["properties"]
    for key, default in SEED_001_RESCHEDULER.items():
        assert props[key]["default"] == default, key
    assert props["rescheduling_req_select_order"]["enum"] == ["LCR", "FCR", "LR", "SR", "FCW", "FCWSR"]
    assert props["rescheduling_req_select_rule"]["enum"] == ["NUM_REQ", "TOKEN", "RATIO"]


def test_the_standalone_rescheduler_shares_them_and_defaults_to_running():
    props = load_schema("rescheduler")["properties"]
    for key in SEED_001_RESCHEDULER:
        assert key in props
    assert props["enable_rescheduling"]["default"] is True
    assert props["standalone_rescheduling_mode"]["default"] is True
    cfg = config_from_options(
        "rescheduler", scheduler_addresses=["127.0.0.1:1"], rescheduling_policies=RUNNABLE
    )
    assert cfg.rescheduling_config.rescheduling_req_select_value == 1024


def _frontend(tmp_path, **options):
    return config_from_options(
        "frontend", model_path=str(tmp_path), scheduler_addresses=["127.0.0.1:1"], **options
    )


def _errors(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    return str(caught.value)


def test_policies_that_need_pd_roles_are_refused_naming_issue_15(tmp_path):
    text = _errors(lambda: _frontend(tmp_path, enable_rescheduling=True, colocated_rescheduling_mode=True))
    assert "prefill_failover, decode_failover" in text and "issue 15" in text
    assert "--rescheduling-policies decode_load,neutral_failover" in text
    for policy in ("binpacking_mitigation", "binpacking_consolidation"):
        text = _errors(
            lambda p=policy: _frontend(
                tmp_path,
                enable_rescheduling=True,
                colocated_rescheduling_mode=True,
                rescheduling_policies=[p],
            )
        )
        assert policy in text and "issue 15" in text
    cfg = _frontend(
        tmp_path, enable_rescheduling=True, colocated_rescheduling_mode=True, rescheduling_policies=RUNNABLE
    )
    assert cfg.rescheduling_policies == tuple(RUNNABLE)


def test_the_frontend_needs_the_colocated_mode_and_refuses_the_standalone_one(tmp_path):
    text = _errors(lambda: _frontend(tmp_path, enable_rescheduling=True, rescheduling_policies=RUNNABLE))
    assert "colocated_rescheduling_mode" in text
    text = _errors(lambda: _frontend(tmp_path, standalone_rescheduling_mode=True))
    assert "infermesh-rescheduler" in text
    text = _errors(
        lambda: config_from_options(
            "rescheduler",
            scheduler_addresses=["127.0.0.1:1"],
            rescheduling_policies=RUNNABLE,
            colocated_rescheduling_mode=True,
        )
    )
    assert "standalone" in text


def test_unit_scope_and_unusable_select_values_are_refused(tmp_path):
    on = {"enable_rescheduling": True, "colocated_rescheduling_mode": True, "rescheduling_policies": RUNNABLE}
    assert "issue 15" in _errors(lambda: _frontend(tmp_path, **on, rescheduling_load_balance_scope="unit"))
    text = _errors(
        lambda: _frontend(
            tmp_path, **on, rescheduling_req_select_rule="RATIO", rescheduling_req_select_value=2
        )
    )
    assert "fraction" in text
    text = _errors(
        lambda: _frontend(
            tmp_path, **on, rescheduling_req_select_rule="NUM_REQ", rescheduling_req_select_value=1.5
        )
    )
    assert "whole number" in text


def test_tuning_rescheduling_while_it_is_off_is_refused_not_ignored(tmp_path):
    text = _errors(lambda: _frontend(tmp_path, rescheduling_interval_ms=100))
    assert "rescheduling_interval_ms only applies when enable_rescheduling is true" in text

"""grpc's ExecuteBatchError (the client left as the server wrote its last message or status) is one
INFO line without a traceback; other servicer errors keep ERROR and their traceback."""

from __future__ import annotations

import logging

from grpc._cython import cygrpc
from infermesh_shared.telemetry.grpc_core_log import GRPC_CORE_LOGGER
from infermesh_shared.telemetry.structured_logging import configure_logging


def _log_from_grpc_core(error: Exception) -> None:
    try:
        raise error
    except Exception:
        logging.getLogger(GRPC_CORE_LOGGER).exception(
            "%s raised in core by servicer method [%s]",
            type(error).__name__,
            "/infermesh.v1.FrontendService/GenerateStream",
        )


def test_a_client_gone_at_the_last_write_is_one_info_line(capsys):
    configure_logging("frontend")
    _log_from_grpc_core(cygrpc.ExecuteBatchError('Failed "execute_batch": (SendStatusFromServerOperation,)'))
    err = capsys.readouterr().err
    assert "Traceback" not in err and " INFO " in err and " ERROR " not in err, err
    assert "GenerateStream" in err and "client cancelled" in err

    _log_from_grpc_core(KeyError("a bug"))
    err = capsys.readouterr().err
    assert "Traceback" in err and " ERROR " in err, err

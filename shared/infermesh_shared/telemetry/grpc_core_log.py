"""grpc's asyncio server logs an ExecuteBatchError, with a traceback at ERROR, when core refuses a
batch because the call is already over: the client cancelled, or its deadline passed, just as the
handler sent its last message or its status. That is a client leaving, not a server failure, so it
becomes one INFO line; every other error grpc logs for a servicer keeps its level and traceback."""

from __future__ import annotations

import logging

from grpc._cython import cygrpc

GRPC_CORE_LOGGER = "grpc._cython.cygrpc"


class ClientGoneFilter(logging.Filter):
    """Rewrites grpc's ExecuteBatchError records (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, cygrpc.ExecuteBatchError):
            what = record.getMessage()
            record.msg = (
                "the call was over (client cancelled or deadline passed) before the server's last "
                "write: %s (%s)"
            )
            record.args = (what, error)
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_gone() -> None:
    """Installs ClientGoneFilter on grpc's core logger (once)."""
    logger = logging.getLogger(GRPC_CORE_LOGGER)
    if not any(isinstance(f, ClientGoneFilter) for f in logger.filters):
        logger.addFilter(ClientGoneFilter())

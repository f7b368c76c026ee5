"""A real redis-server for tests, installed from Debian's packages when the machine lacks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.free_port import free_port

STARTUP_TIMEOUT_S = 15.0


def ensure_redis_server_installed() -> str:
    """Returns the path of redis-server, installing the Debian package first when it is missing.

    CI machines start fresh, so the test installs what it needs itself; a machine where that is
    impossible fails the test with the reason rather than skipping it.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail("redis-server is not installed and apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "redis-server"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    found = shutil.which("redis-server")
    if not found:
        pytest.fail(f"could not install redis-server with apt-get: {result.stderr[-2000:]}")
    return found


@contextmanager
def running_redis_server(work_dir: Path, port: int = 0) -> Iterator[str]:
    """Starts redis-server on loopback `port` (0 = a free one) without persistence; yields its
    URL and stops it on exit."""
    binary = ensure_redis_server_installed()
    port = port or free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(work_dir), "--daemonize", "no", "--loglevel", "warning"]
    log = open(work_dir / "redis.log", "w")  # noqa: SIM115 - closed in finally
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (work_dir / "redis.log").read_text()
                    raise RuntimeError(f"redis-server did not start: {log_text}") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()

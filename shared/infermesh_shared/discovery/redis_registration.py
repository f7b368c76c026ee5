"""A scheduler's lease in Redis: registered at start, renewed by a heartbeat, removed on shutdown.

A replica that dies without deregistering disappears when its TTL runs out, so frontends stop
seeing it within `ttl_s` even if their own health checks have not noticed yet.
"""

from __future__ import annotations

import logging
import threading

import redis

from infermesh_shared.discovery.redis_keys import DEFAULT_NAMESPACE, REDIS_SOCKET_TIMEOUT_S, replica_key

logger = logging.getLogger(__name__)


class RedisRegistration:
    """Keeps `address` registered under `redis_url` with a `ttl_s` lease while started."""

    def __init__(
        self, redis_url: str, address: str, ttl_s: float, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        if not redis_url:
            raise ValueError("RedisRegistration needs a redis_url (e.g. redis://redis:6379/0)")
        if not address:
            raise ValueError("RedisRegistration needs the host:port frontends should dial")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.address = address
        self.ttl_s = ttl_s
        self._key = replica_key(namespace, address)
        self._client = redis.Redis.from_url(
            redis_url,
            socket_timeout=min(REDIS_SOCKET_TIMEOUT_S, ttl_s / 3),
            socket_connect_timeout=min(REDIS_SOCKET_TIMEOUT_S, ttl_s / 3),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Renew three times per lease so one lost heartbeat does not drop the replica.
        self._interval_s = ttl_s / 3

    def start(self) -> None:
        """Registers now (raising redis.RedisError if Redis is unreachable, so a misconfigured
        scheduler fails at start) and renews the lease in a background thread."""
        self._renew()
        self._thread = threading.Thread(target=self._heartbeat, name="redis-registration", daemon=True)
        self._thread.start()
        logger.info("registered scheduler %s in Redis (ttl %.1fs)", self.address, self.ttl_s)

    def stop(self) -> None:
        """Stops the heartbeat and removes the registration; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + REDIS_SOCKET_TIMEOUT_S)
        try:
            self._client.delete(self._key)
            logger.info("deregistered scheduler %s from Redis", self.address)
        except redis.RedisError as exc:
            logger.warning(
                "could not deregister %s from Redis (its lease expires in %.1fs): %s",
                self.address,
                self.ttl_s,
                exc,
            )
        finally:
            self._client.close()

    def __enter__(self) -> RedisRegistration:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _renew(self) -> None:
        self._client.set(self._key, self.address, px=max(1, int(self.ttl_s * 1000)))

    def _heartbeat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._renew()
            except redis.RedisError as exc:
                # Keep trying: Redis may come back before the lease ends, and a restarted Redis
                # gets the key again on the next beat.
                logger.warning("Redis heartbeat for %s failed: %s", self.address, exc)

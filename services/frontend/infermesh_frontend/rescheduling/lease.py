"""Which rescheduler acts: exactly one per deployment.

With no Redis configured the rescheduler is alone and always active (NoLease). With Redis, the
reschedulers contend for one key: `SET key holder NX PX ttl` takes it, a compare-and-expire script
renews it every third of its lifetime, and a compare-and-delete gives it back on stop. A holder
trusts its lease only until `start of the call that took or renewed it + ttl` minus a margin, on
its own monotonic clock, so it stops acting before any standby can take over; a renewal that
fails (Redis down, key taken) ends its activity at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

# Renew when this fraction of the lifetime has passed; trust the lease for the rest minus a margin.
_RENEW_FRACTION = 1 / 3
_SAFETY_FRACTION = 0.1

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class NoLease:
    """The only rescheduler of its deployment: always active."""

    holder = "sole"

    def active(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class RedisLease:
    """Holds (or waits for) the rescheduler lease under `key` in the Redis at `url`."""

    def __init__(self, url: str, key: str, ttl_ms: int, holder: str = "") -> None:
        self.key = key
        self.ttl_ms = ttl_ms
        self.holder = holder or uuid.uuid4().hex
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=ttl_ms / 3000, socket_connect_timeout=ttl_ms / 3000
        )
        self._valid_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._was_active = False

    def active(self) -> bool:
        """True while this process holds the lease (as far as it can be sure)."""
        return time.monotonic() < self._valid_until

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def refresh(self) -> bool:
        """Takes the lease if free, renews it if ours; returns whether it is ours now."""
        began = time.monotonic()
        try:
            ours = bool(await self._client.eval(_RENEW, 1, self.key, self.holder, self.ttl_ms))
            if not ours:
                ours = bool(await self._client.set(self.key, self.holder, nx=True, px=self.ttl_ms))
        except (RedisError, OSError) as error:
            self._lose(f"Redis unreachable: {error}")
            return False
        if ours:
            self._valid_until = began + self.ttl_ms / 1000 * (1 - _SAFETY_FRACTION)
            if not self._was_active:
                logger.info(
                    "rescheduler lease %s taken (holder %s): this rescheduler is active",
                    self.key,
                    self.holder,
                )
            self._was_active = True
        else:
            self._lose("another rescheduler holds it")
        return ours

    def _lose(self, why: str) -> None:
        self._valid_until = 0.0
        if self._was_active:
            logger.warning("rescheduler lease %s lost (%s): this rescheduler stands by", self.key, why)
        self._was_active = False

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 1000 * _RENEW_FRACTION)
            await self.refresh()

    async def stop(self) -> None:
        """Stops renewing and gives the lease back if held, so a standby takes over at once."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        held = self._valid_until > 0
        self._valid_until = 0.0
        try:
            if held:
                await self._client.eval(_RELEASE, 1, self.key, self.holder)
        except (RedisError, OSError):
            pass  # it expires by itself
        finally:
            await self._client.aclose()


def make_lease(options) -> NoLease | RedisLease:
    """The lease a rescheduling_config section asks for: Redis when rescheduling_lease_redis_url is set."""
    if not options.rescheduling_lease_redis_url:
        return NoLease()
    return RedisLease(
        options.rescheduling_lease_redis_url,
        options.rescheduling_lease_key,
        options.rescheduling_lease_ttl_ms,
    )

"""Shared counters and cached replies: Redis when REDIS_URL is set (shared by every web process), an
in-process cache otherwise (the demo, a single process).

Redis is a speed-up, never a dependency of an answer: when it fails, calls go to the in-process store for a
few seconds (each process then limits and caches on its own) and Redis is tried again after that."""

from __future__ import annotations

import logging
import threading
import time

import redis
from cachetools import TLRUCache
from flask import current_app

log = logging.getLogger(__name__)
RETRY_REDIS_AFTER = 5.0  # seconds on the in-process store after a Redis error


class LocalStore:
    """Each entry lives for its own ttl (a 60 s fallback must not outlive the model's recovery)."""

    def __init__(self, maxsize: int = 50_000, timer=time.monotonic):
        self._data = TLRUCache(maxsize=maxsize, ttu=lambda _key, value, now: now + value[1], timer=timer)
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._data.get(key)
        return entry[0] if entry is not None else None

    def set(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._data[key] = (value, ttl)

    def incr(self, key: str, ttl: int) -> int:
        with self._lock:
            entry = self._data.get(key)
            count = int(entry[0]) + 1 if entry is not None else 1
            self._data[key] = (str(count), ttl)
            return count


class RedisStore:
    def __init__(self, url: str):
        self._redis = redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)
        self._local = LocalStore()
        self._down_until = 0.0

    def _call(self, local, remote):
        if time.monotonic() < self._down_until:
            return local()
        try:
            return remote()
        except redis.RedisError as exc:
            log.warning("Redis unavailable (%s): in-process cache and limits for %ss", exc, RETRY_REDIS_AFTER)
            self._down_until = time.monotonic() + RETRY_REDIS_AFTER
            return local()

    def get(self, key: str) -> str | None:
        def remote():
            value = self._redis.get(key)
            return value.decode() if value is not None else None
        return self._call(lambda: self._local.get(key), remote)

    def set(self, key: str, value: str, ttl: int) -> None:
        self._call(lambda: self._local.set(key, value, ttl), lambda: self._redis.set(key, value, ex=ttl))

    def incr(self, key: str, ttl: int) -> int:
        def remote():
            pipe = self._redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, ttl)
            return pipe.execute()[0]
        return self._call(lambda: self._local.incr(key, ttl), remote)


def store() -> LocalStore | RedisStore:
    app = current_app._get_current_object()
    if "pairwell_store" not in app.extensions:
        url = app.config["REDIS_URL"]
        app.extensions["pairwell_store"] = RedisStore(url) if url else LocalStore()
    return app.extensions["pairwell_store"]


clock = time.time  # the limits' clock (tests hold it inside one window)


def over_limit(scope: str, identity: str, per_minute: int) -> int | None:
    """Fixed one-minute windows; returns the seconds to wait when `identity` is over its limit."""
    now = clock()
    if store().incr(f"rate:{scope}:{identity}:{int(now // 60)}", 90) > per_minute:
        return 60 - int(now % 60)
    return None

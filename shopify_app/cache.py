"""Shared counters and cached replies: Redis when REDIS_URL is set (shared by every web process), an
in-process TTL cache otherwise (the demo, a single process)."""

from __future__ import annotations

import threading
import time

import redis
from cachetools import TTLCache
from flask import current_app


class LocalStore:
    def __init__(self, maxsize: int = 50_000, ttl: float = 24 * 3600):
        self._data = TTLCache(maxsize=maxsize, ttl=ttl)
        self._counters = TTLCache(maxsize=maxsize, ttl=3600)
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    def set(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self._data[key] = value  # TTLCache has one ttl for all entries; ours is the longest we use

    def incr(self, key: str, ttl: int) -> int:
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            return self._counters[key]


class RedisStore:
    def __init__(self, url: str):
        self._redis = redis.Redis.from_url(url, socket_timeout=0.2, socket_connect_timeout=0.2)

    def get(self, key: str) -> str | None:
        value = self._redis.get(key)
        return value.decode() if value is not None else None

    def set(self, key: str, value: str, ttl: int) -> None:
        self._redis.set(key, value, ex=ttl)

    def incr(self, key: str, ttl: int) -> int:
        pipe = self._redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, ttl)
        return pipe.execute()[0]


def store() -> LocalStore | RedisStore:
    app = current_app._get_current_object()
    if "pairwell_store" not in app.extensions:
        url = app.config["REDIS_URL"]
        app.extensions["pairwell_store"] = RedisStore(url) if url else LocalStore()
    return app.extensions["pairwell_store"]


def over_limit(scope: str, identity: str, per_minute: int) -> int | None:
    """Fixed one-minute windows; returns the seconds to wait when `identity` is over its limit."""
    window = int(time.time() // 60)
    if store().incr(f"rate:{scope}:{identity}:{window}", 90) > per_minute:
        return 60 - int(time.time() % 60)
    return None

"""The reports the admin starts and reads back (Evaluate now, Check the assistant): each job's status and result
as one JSON file per shop and kind, next to the shop's training artifacts, written whole or not at all."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from core.storage.artifacts import artifacts_root
from core.storage.models import Shop, utcnow

log = logging.getLogger(__name__)
STALE = timedelta(hours=2)  # a report "running" this long lost its worker: it may be started again


def _path(shop: Shop, kind: str) -> Path:
    return artifacts_root() / shop.domain / f"{kind}-report.json"


def read(shop: Shop, kind: str) -> dict | None:
    path = _path(shop, kind)
    return json.loads(path.read_text()) if path.exists() else None


def write(shop: Shop, kind: str, record: dict) -> dict:
    path = _path(shop, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    written.write_text(json.dumps(record))
    written.replace(path)
    return record


def running(record: dict | None) -> bool:
    """Whether a report is being made now (one that started more than STALE ago died with its worker)."""
    return bool(record) and record["status"] == "running" and \
        datetime.fromisoformat(record["started_at"]) > utcnow() - STALE


def begin(shop: Shop, kind: str) -> dict:
    return write(shop, kind, {"status": "running", "started_at": utcnow().isoformat()})


def produce(shop: Shop, kind: str, make: Callable[[], dict], **about) -> dict:
    """Run `make`, recording `running`, then `succeeded` with its report or `failed` with what went wrong."""
    record = begin(shop, kind)
    try:
        report = make()
    except Exception as exc:  # the page says what went wrong; the worker's log has the trace
        log.exception("%s report of %s failed", kind, shop.domain)
        return write(shop, kind, {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                  "finished_at": utcnow().isoformat()})
    return write(shop, kind, {**record, **about, "status": "succeeded", "finished_at": utcnow().isoformat(),
                              "report": report})

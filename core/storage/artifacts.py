"""Where the jobs keep a shop's files (datasets, training runs, models, reports, the merchant's uploads):
`PAIRWELL_ARTIFACTS`, one folder per shop."""

from __future__ import annotations

from pathlib import Path

from flask import current_app


def artifacts_root() -> Path:
    return Path(current_app.config["PAIRWELL_ARTIFACTS"])

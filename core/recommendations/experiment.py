"""The A/B holdout: a stable share of storefront visitors sees the plain co-purchase list instead of the
served ranking (and model), so the merchant can read whether the model earns its place. A visitor is the
signed-in customer Shopify signs, else the block's random visitor id; the same visitor always lands in the
same arm (a hash, not a coin per request)."""

from __future__ import annotations

import hashlib
import math

from core.inputs import BadInput
from core.storage.models import Shop

HOLDOUT = "holdout"  # the control arm's source: co-purchase, no model
DEFAULTS = {"enabled": True, "holdout_percent": 10}


def settings(shop: Shop) -> dict:
    return {**DEFAULTS, **(shop.experiment or {})}


def validate_settings(body: object) -> dict:
    if not isinstance(body, dict) or not set(body) <= set(DEFAULTS):
        raise BadInput(f"Send some of {sorted(DEFAULTS)}.")
    if "enabled" in body and not isinstance(body["enabled"], bool):
        raise BadInput("enabled must be true or false.")
    share = body.get("holdout_percent", DEFAULTS["holdout_percent"])
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 50:
        raise BadInput("holdout_percent must be a whole number from 0 to 50.")
    return body


def arm(shop: Shop, visitor: str) -> str:
    """`holdout` or `served` for this visitor; no visitor (a bot, storage off) is always served."""
    chosen = settings(shop)
    if not visitor or not chosen["enabled"] or not chosen["holdout_percent"]:
        return "served"
    bucket = int.from_bytes(hashlib.sha256(f"{shop.id}:{visitor}".encode()).digest()[:4], "big") % 100
    return HOLDOUT if bucket < chosen["holdout_percent"] else "served"


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95% Wilson interval of a rate (well-behaved at small counts and rates near 0)."""
    if not trials:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return round(max(centre - half, 0.0), 4), round(min(centre + half, 1.0), 4)


def mean_interval(values: list[float], z: float = 1.96) -> tuple[float, float] | None:
    """A normal 95% interval of a mean (order values); None with fewer than two."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return round(mean - z * spread, 2), round(mean + z * spread, 2)

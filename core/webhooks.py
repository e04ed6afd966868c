"""The webhook topics Pairwell subscribes to (shopify.app.toml): what the receiving endpoint accepts and the
worker handles, one list for both."""

from __future__ import annotations

TOPICS = frozenset({
    "products/create", "products/update", "products/delete",
    "orders/create", "orders/updated",
    "app/uninstalled", "app/scopes_update",
    "bulk_operations/finish",
    "customers/data_request", "customers/redact", "shop/redact",
})

"""A sample outdoor-gear store and a loopback stand-in for Shopify that serves it (demo and tests)."""

from .catalog import SampleStore, generate_store
from .server import SampleShopify

__all__ = ["SampleShopify", "SampleStore", "generate_store"]

"""Typed records the code uses, one per JSON Schema file in this folder.

The JSON Schema files are the truth consumers read; ``tests/test_schemas.py``
checks that :mod:`launchpulse.schemas.validate` accepts exactly what the files
accept (plus the range checks JSON Schema cannot express).

The records are immutable named tuples: the ingest stage builds one or more for every
input event, and a frozen dataclass costs about 2.7 us to build against 0.5 us here.
"""
from __future__ import annotations

from typing import NamedTuple

CLICK_TYPES = ("view", "search", "add_to_cart", "remove_from_cart", "wishlist", "review")
CATALOG_STATUSES = ("planned", "live", "retired")
# The pipeline's own state keys beside item ids (an item id is its item's key): users' and categories'
# states, sessionless searches, and bookkeeping. An item id may not begin like one (validate refuses it).
USER_KEY_PREFIX = "user:"
CATEGORY_KEY_PREFIX = "category:"
SESSION_KEY_PREFIX = "session:"
BOOKKEEPING_KEY_PREFIX = "#"
RESERVED_ITEM_PREFIXES = (USER_KEY_PREFIX, CATEGORY_KEY_PREFIX, SESSION_KEY_PREFIX, BOOKKEEPING_KEY_PREFIX)
SIGNAL_TYPES = (
    "boost_exposure",
    "restock_risk",
    "overstock_risk",
    "accelerate_cadence",
    "slow_cadence",
    "homogeneity_warning",
    "bundle_opportunity",
)


class ClickEvent(NamedTuple):
    event_id: str
    ts_ms: int
    user_key: str  # keyed pseudonym of user_id; the raw id never leaves the parser
    session_key: str  # keyed pseudonym of session_id
    event_type: str
    item_id: str | None
    category_id: str | None
    price: float | None
    rating: int | None


class OrderLine(NamedTuple):
    item_id: str
    quantity: int
    price: float
    category_id: str | None


class OrderEvent(NamedTuple):
    order_id: str
    ts_ms: int
    user_key: str
    lines: tuple[OrderLine, ...]


class CatalogEvent(NamedTuple):
    item_id: str
    ts_ms: int
    title: str
    category_id: str
    price: float
    status: str
    launched_at_ms: int | None
    stock: int | None


Event = ClickEvent | OrderEvent | CatalogEvent

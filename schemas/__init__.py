"""The data: JSON Schema files (the truth) and the typed records and validator the code uses."""
from importlib import resources as _resources

from .records import (
    CATALOG_STATUSES,
    CLICK_TYPES,
    RESERVED_ITEM_PREFIXES,
    SIGNAL_TYPES,
    CatalogEvent,
    ClickEvent,
    Event,
    OrderEvent,
    OrderLine,
)

SCHEMA_FILES = {
    "clickstream": "clickstream.json",
    "order": "order.json",
    "catalog": "catalog.json",
    "launch_signal": "launch_signal.json",
    "dead_letter": "dead_letter.json",
}


def load_schema(name: str) -> dict:
    """The JSON Schema document for ``name`` (a key of SCHEMA_FILES)."""
    import json

    return json.loads(_resources.files(__name__).joinpath(SCHEMA_FILES[name]).read_text("utf-8"))


__all__ = [
    "CATALOG_STATUSES", "CLICK_TYPES", "RESERVED_ITEM_PREFIXES", "SIGNAL_TYPES", "CatalogEvent", "ClickEvent", "Event",
    "OrderEvent", "OrderLine", "SCHEMA_FILES", "load_schema",
]

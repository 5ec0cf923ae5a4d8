"""Parse and validate input messages into typed records, or say exactly why not.

A Kafka message holds one JSON event or a JSON array of events. Each element is
validated on its own: valid neighbours of a bad element are kept. Every refusal
carries a stable ``code`` (for machines and metrics) and a readable ``error``.

This is the hot path of ingestion, so it is written by hand rather than run
through a generic JSON Schema engine; ``tests/test_schemas.py`` checks it
against the schema files with generated inputs.
"""
from __future__ import annotations

import hashlib
import math
from datetime import datetime, timezone
from typing import Callable, NamedTuple

import orjson

from .records import (
    CATALOG_STATUSES,
    CLICK_TYPES,
    RESERVED_ITEM_PREFIXES,
    CatalogEvent,
    ClickEvent,
    Event,
    OrderEvent,
    OrderLine,
)

MAX_MESSAGE_BYTES = 512 * 1024  # a whole Kafka message; larger ones are refused unread
MAX_EVENTS_PER_MESSAGE = 10_000
MAX_ID_LEN = 128
MAX_TEXT_LEN = 512
MAX_ORDER_LINES = 500
MAX_EXTRA_DEPTH = 16  # nesting allowed inside unknown extra fields
MAX_PRICE = 1_000_000_000.0
MAX_QUANTITY = 100_000
MAX_STOCK = 1_000_000_000_000
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive)

KINDS = ("clickstream", "order", "catalog")

# Stable machine-readable codes; the dead-letter schema documents them.
CODES = {
    "too_large": "message larger than the size limit",
    "invalid_utf8": "message is not valid UTF-8",
    "invalid_json": "message is not valid JSON",
    "not_object": "event is not a JSON object",
    "empty_array": "message is an empty JSON array",
    "too_many_events": "message holds more events than allowed",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "invalid_value": "a field has a value outside its allowed set or range",
    "bad_timestamp": "ts is not an RFC 3339 date-time or epoch milliseconds in 2000..2099",
    "string_too_long": "a string field is longer than allowed",
    "control_characters": "an identifier holds control characters",
    "too_deep": "an extra field is nested too deeply",
    "late_event": "event time is older than the window grace period allows",
}


class Rejection(NamedTuple):
    index: int | None  # position in the JSON array; None when the whole message is refused
    code: str
    error: str
    fragment: bytes | None  # the refused element re-serialised (None: the whole raw message)


class Parsed(NamedTuple):
    events: list[Event]
    rejections: list[Rejection]
    n_elements: int  # events the message claimed to hold (1 for a bare object or an unreadable message)


class Invalid(Exception):
    def __init__(self, code: str, error: str):
        super().__init__(error)
        self.code = code
        self.error = error


class Pseudonymiser:
    """Keyed hash of user and session identifiers (HMAC-SHA256, truncated to 128 bits).

    The key comes from the caller (the stream layer reads it from the
    environment); without it pseudonyms are unlinkable across deployments.

    HMAC's inner and outer hashes of the padded key are computed once and copied per value
    (RFC 2104): 1.9 us a value against 4.3 us for ``hmac.new``, which pads the key every time.

    >>> import hmac
    >>> key = b"k" * 70  # longer than SHA-256's block: hashed first, as HMAC does
    >>> Pseudonymiser(key)("user-1") == hmac.new(key, b"user-1", hashlib.sha256).hexdigest()[:32]
    True
    """

    __slots__ = ("_inner", "_outer", "_cache", "_limit")

    def __init__(self, key: bytes, cache_size: int = 100_000):
        if not key:
            raise ValueError("pseudonymisation key must not be empty")
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._cache: dict[str, str] = {}
        self._limit = cache_size

    def __call__(self, value: str) -> str:
        hit = self._cache.get(value)
        if hit is not None:
            return hit
        inner = self._inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        digest = outer.hexdigest()[:32]
        if len(self._cache) >= self._limit:
            self._cache.clear()  # bounded memory; recomputing is cheap
        self._cache[value] = digest
        return digest


def _has_control(s: str) -> bool:
    for ch in s:
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            return True
    return False


# An item id is the item's key in the worker's state and replica tables, beside the pipeline's own keys
# (records.RESERVED_ITEM_PREFIXES): an item id beginning like one would be read as that other kind of state.


def _item_ident(obj: dict, field: str = "item_id", required: bool = True) -> str | None:
    v = _ident(obj, field, required)
    if v is not None and v.startswith(RESERVED_ITEM_PREFIXES):
        raise Invalid("invalid_value", f"{field} must not begin with {', '.join(map(repr, RESERVED_ITEM_PREFIXES))}: "
                                       "those keys are the pipeline's own")
    return v


def _ident(obj: dict, field: str, required: bool = True) -> str | None:
    v = obj.get(field)
    if v is None:
        if required or field in obj:
            if field in obj:
                raise Invalid("wrong_type", f"{field} must be a string, got null")
            raise Invalid("missing_field", f"{field} is required")
        return None
    if type(v) is not str:
        raise Invalid("wrong_type", f"{field} must be a string, got {_tname(v)}")
    if not v:
        raise Invalid("invalid_value", f"{field} must not be empty")
    if len(v) > MAX_ID_LEN:
        raise Invalid("string_too_long", f"{field} is {len(v)} characters, the limit is {MAX_ID_LEN}")
    if not v.isprintable() and _has_control(v):
        raise Invalid("control_characters", f"{field} holds control characters")
    return v


def _text(obj: dict, field: str, required: bool) -> str | None:
    v = obj.get(field)
    if v is None:
        if field in obj or required:
            raise Invalid("missing_field" if field not in obj else "wrong_type", f"{field} is required" if field not in obj else f"{field} must be a string, got null")
        return None
    if type(v) is not str:
        raise Invalid("wrong_type", f"{field} must be a string, got {_tname(v)}")
    if len(v) > MAX_TEXT_LEN:
        raise Invalid("string_too_long", f"{field} is {len(v)} characters, the limit is {MAX_TEXT_LEN}")
    return v


def _tname(v) -> str:
    if v is None:
        return "null"
    if type(v) is bool:
        return "boolean"
    if type(v) is int:
        return "integer"
    if type(v) is float:
        return "number"
    if type(v) is str:
        return "string"
    if type(v) is list:
        return "array"
    return "object"


def _number(obj: dict, field: str, required: bool, lo: float, hi: float) -> float | None:
    v = obj.get(field)
    if v is None:
        if field in obj:
            raise Invalid("wrong_type", f"{field} must be a number, got null")
        if required:
            raise Invalid("missing_field", f"{field} is required")
        return None
    t = type(v)
    if t is not int and t is not float:
        raise Invalid("wrong_type", f"{field} must be a number, got {_tname(v)}")
    if t is float and not math.isfinite(v):
        raise Invalid("invalid_value", f"{field} must be finite")
    if v < lo or v > hi:
        raise Invalid("invalid_value", f"{field} must be between {lo:g} and {hi:g}, got {v!r}")
    return float(v)


def _integer(obj: dict, field: str, required: bool, lo: int, hi: int) -> int | None:
    v = obj.get(field)
    if v is None:
        if field in obj:
            raise Invalid("wrong_type", f"{field} must be an integer, got null")
        if required:
            raise Invalid("missing_field", f"{field} is required")
        return None
    if type(v) is not int:
        if type(v) is float and v.is_integer():
            v = int(v)  # JSON Schema's integer is any number without a fractional part: 2.0 is 2
        else:
            raise Invalid("wrong_type", f"{field} must be an integer, got {_tname(v)}")
    if v < lo or v > hi:
        raise Invalid("invalid_value", f"{field} must be between {lo} and {hi}, got {v}")
    return v


def parse_ts(v, field: str = "ts") -> int:
    """Epoch milliseconds from an RFC 3339 string or an epoch-ms integer.

    >>> parse_ts("2025-11-01T10:00:00Z")
    1761991200000
    >>> parse_ts(1761991200000)
    1761991200000
    >>> parse_ts(1761991200000.0)
    1761991200000
    """
    if v is None:
        raise Invalid("missing_field", f"{field} is required")
    t = type(v)
    if t is float and v.is_integer():  # an integer to JSON Schema (and to the schema files)
        v, t = int(v), int
    if t is int:
        if MIN_TS_MS <= v < MAX_TS_MS:
            return v
        raise Invalid("bad_timestamp", f"{field}={v} is outside 2000..2099 in epoch milliseconds")
    if t is str:
        if len(v) > 40 or len(v) < 19 or v[4:5] != "-" or not v[:4].isdigit():
            raise Invalid("bad_timestamp", f"{field} is not an RFC 3339 date-time")
        if not v.isascii():
            raise Invalid("bad_timestamp", f"{field} is not an RFC 3339 date-time")
        s = v
        if s[-1] in "Zz":
            s = s[:-1] + "+00:00"
        elif not (s[-6] in "+-" and s[-3] == ":"):
            raise Invalid("bad_timestamp", f"{field} must carry a time zone (Z or +hh:mm)")
        if s[10] not in "Tt ":
            raise Invalid("bad_timestamp", f"{field} is not an RFC 3339 date-time")
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise Invalid("bad_timestamp", f"{field} is not an RFC 3339 date-time") from None
        ms = int(dt.timestamp() * 1000)
        if MIN_TS_MS <= ms < MAX_TS_MS:
            return ms
        raise Invalid("bad_timestamp", f"{field} is outside 2000..2099")
    raise Invalid("bad_timestamp", f"{field} must be an RFC 3339 string or epoch milliseconds, got {_tname(v)}")


def format_ts(ms: int) -> str:
    """RFC 3339 UTC with milliseconds.

    >>> format_ts(1761991200000)
    '2025-11-01T10:00:00.000Z'
    """
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _depth_ok(v, limit: int) -> bool:
    # Iterative so a nesting bomb cannot blow the Python stack.
    stack = [(v, 1)]
    while stack:
        x, d = stack.pop()
        if d > limit:
            return False
        if type(x) is dict:
            stack.extend((y, d + 1) for y in x.values())
        elif type(x) is list:
            stack.extend((y, d + 1) for y in x)
    return True


_CLICK_FIELDS = frozenset(("event_id", "ts", "user_id", "session_id", "event_type", "item_id", "category_id", "price", "query", "rating"))
_ORDER_FIELDS = frozenset(("order_id", "ts", "user_id", "items"))
_LINE_FIELDS = frozenset(("item_id", "quantity", "price", "category_id"))
_CATALOG_FIELDS = frozenset(("item_id", "ts", "title", "category_id", "price", "status", "launched_at", "stock"))


def _check_extras(obj: dict, known: frozenset) -> None:
    for k, v in obj.items():
        if k not in known and type(v) in (dict, list) and not _depth_ok(v, MAX_EXTRA_DEPTH):
            raise Invalid("too_deep", f"extra field {k[:40]!r} is nested deeper than {MAX_EXTRA_DEPTH} levels")


# The fields a click may hold to take validate_click's fast path: the free-text query and the
# rating are rare, and so are extra fields; a click with any of them is checked the full way.
_CLICK_FAST_FIELDS = frozenset(("event_id", "ts", "user_id", "session_id", "event_type", "item_id", "category_id", "price"))
_CLICK_TYPE_SET = frozenset(CLICK_TYPES)


def validate_click(obj, pseudonymise: Callable[[str], str]) -> ClickEvent:
    """A click event from its JSON object, or :class:`Invalid` saying why not.

    The common click (string ids, epoch-ms time, known fields only) is accepted by one inlined
    test of everything :func:`validate_click_fully` checks; anything else, the refusals included,
    goes the full way, which words them. The two agree on every input (``tests/test_schemas.py``).

    >>> ok = {"event_id": "e1", "ts": 1761991200000, "user_id": "u", "session_id": "s", "event_type": "view",
    ...       "item_id": "i", "price": 2}
    >>> validate_click(ok, str.upper) == validate_click_fully(ok, str.upper)
    True
    """
    if type(obj) is dict and obj.keys() <= _CLICK_FAST_FIELDS:
        get = obj.get
        event_id, ts, user_id, session_id = get("event_id"), get("ts"), get("user_id"), get("session_id")
        et, item_id, category_id, price = get("event_type"), get("item_id"), get("category_id"), get("price")
        if (type(event_id) is str and type(user_id) is str and type(session_id) is str and type(item_id) is str
                and 0 < len(event_id) <= MAX_ID_LEN and 0 < len(user_id) <= MAX_ID_LEN
                and 0 < len(session_id) <= MAX_ID_LEN and 0 < len(item_id) <= MAX_ID_LEN
                and event_id.isprintable() and user_id.isprintable() and session_id.isprintable()
                and item_id.isprintable() and not item_id.startswith(RESERVED_ITEM_PREFIXES)
                and type(ts) is int and MIN_TS_MS <= ts < MAX_TS_MS
                and type(et) is str and et in _CLICK_TYPE_SET
                and ((type(category_id) is str and 0 < len(category_id) <= MAX_ID_LEN and category_id.isprintable())
                     or "category_id" not in obj)
                and ((type(price) is float and 0.0 <= price <= MAX_PRICE)  # NaN fails both comparisons
                     or (type(price) is int and 0 <= price <= MAX_PRICE) or "price" not in obj)):
            return ClickEvent(event_id, ts, pseudonymise(user_id), pseudonymise(session_id), et, item_id, category_id,
                              None if price is None else float(price), None)
    return validate_click_fully(obj, pseudonymise)


def validate_click_fully(obj, pseudonymise: Callable[[str], str]) -> ClickEvent:
    """:func:`validate_click` without its fast path: every check one at a time, each refusal worded."""
    if type(obj) is not dict:
        raise Invalid("not_object", f"event must be a JSON object, got {_tname(obj)}")
    event_id = _ident(obj, "event_id")
    ts = parse_ts(obj.get("ts"))
    user_id = _ident(obj, "user_id")
    session_id = _ident(obj, "session_id")
    et = obj.get("event_type")
    if et is None:
        raise Invalid("missing_field", "event_type is required")
    if type(et) is not str:
        raise Invalid("wrong_type", f"event_type must be a string, got {_tname(et)}")
    if et not in CLICK_TYPES:
        raise Invalid("invalid_value", f"event_type must be one of {', '.join(CLICK_TYPES)}")
    item_id = _item_ident(obj, "item_id", required=et != "search")
    category_id = _ident(obj, "category_id", required=False)
    price = _number(obj, "price", False, 0.0, MAX_PRICE)
    _text(obj, "query", False)  # validated, never kept: free text may hold personal data
    rating = _integer(obj, "rating", False, 1, 5)
    _check_extras(obj, _CLICK_FIELDS)
    return ClickEvent(event_id, ts, pseudonymise(user_id), pseudonymise(session_id), et, item_id, category_id, price, rating)


def validate_order(obj, pseudonymise: Callable[[str], str]) -> OrderEvent:
    if type(obj) is not dict:
        raise Invalid("not_object", f"event must be a JSON object, got {_tname(obj)}")
    order_id = _ident(obj, "order_id")
    ts = parse_ts(obj.get("ts"))
    user_id = _ident(obj, "user_id")
    items = obj.get("items")
    if items is None:
        raise Invalid("missing_field" if "items" not in obj else "wrong_type", "items is required and must be a non-empty array")
    if type(items) is not list:
        raise Invalid("wrong_type", f"items must be an array, got {_tname(items)}")
    if not items:
        raise Invalid("invalid_value", "items must not be empty")
    if len(items) > MAX_ORDER_LINES:
        raise Invalid("invalid_value", f"items holds {len(items)} lines, the limit is {MAX_ORDER_LINES}")
    lines = []
    for i, line in enumerate(items):
        if type(line) is not dict:
            raise Invalid("wrong_type", f"items[{i}] must be an object, got {_tname(line)}")
        try:
            lines.append(OrderLine(
                _item_ident(line, "item_id"),
                _integer(line, "quantity", True, 1, MAX_QUANTITY),
                _number(line, "price", True, 0.0, MAX_PRICE),
                _ident(line, "category_id", required=False),
            ))
            _check_extras(line, _LINE_FIELDS)
        except Invalid as e:
            raise Invalid(e.code, f"items[{i}].{e.error}") from None
    _check_extras(obj, _ORDER_FIELDS)
    return OrderEvent(order_id, ts, pseudonymise(user_id), tuple(lines))


def validate_catalog(obj, pseudonymise: Callable[[str], str] | None = None) -> CatalogEvent:
    if type(obj) is not dict:
        raise Invalid("not_object", f"event must be a JSON object, got {_tname(obj)}")
    item_id = _item_ident(obj, "item_id")
    ts = parse_ts(obj.get("ts"))
    title = _text(obj, "title", True)
    category_id = _ident(obj, "category_id")
    price = _number(obj, "price", True, 0.0, MAX_PRICE)
    status = obj.get("status")
    if status is None:
        raise Invalid("missing_field", "status is required")
    if type(status) is not str:
        raise Invalid("wrong_type", f"status must be a string, got {_tname(status)}")
    if status not in CATALOG_STATUSES:
        raise Invalid("invalid_value", f"status must be one of {', '.join(CATALOG_STATUSES)}")
    launched = obj.get("launched_at")
    launched_ms = None if launched is None and "launched_at" not in obj else parse_ts(launched, "launched_at")
    stock = _integer(obj, "stock", False, 0, MAX_STOCK)
    _check_extras(obj, _CATALOG_FIELDS)
    return CatalogEvent(item_id, ts, title, category_id, price, status, launched_ms, stock)


VALIDATORS = {"clickstream": validate_click, "order": validate_order, "catalog": validate_catalog}


def validate_event(kind: str, obj, pseudonymise: Callable[[str], str]) -> Event:
    return VALIDATORS[kind](obj, pseudonymise)


def parse_message(raw: bytes, kind: str, pseudonymise: Callable[[str], str],
                  max_bytes: int = MAX_MESSAGE_BYTES) -> Parsed:
    """Parse one Kafka message value of topic kind ``kind``.

    >>> p = parse_message(b'[{"order_id":"o1","ts":1761991200000,"user_id":"u","items":[{"item_id":"a","quantity":1,"price":2.5}]}, 7]',
    ...                   "order", lambda s: "x")
    >>> [e.order_id for e in p.events], [(r.index, r.code) for r in p.rejections]
    (['o1'], [(1, 'not_object')])
    """
    if raw is None:
        return Parsed([], [Rejection(None, "not_object", "message has no value (tombstone)", None)], 1)
    if len(raw) > max_bytes:
        return Parsed([], [Rejection(None, "too_large", f"message is {len(raw)} bytes, the limit is {max_bytes}", None)], 1)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        except UnicodeDecodeError:
            return Parsed([], [Rejection(None, "invalid_utf8", "message is not valid UTF-8", None)], 1)
        return Parsed([], [Rejection(None, "invalid_json", f"invalid JSON: {str(e)[:200]}", None)], 1)
    validate = VALIDATORS[kind]
    if type(doc) is list:
        if not doc:
            return Parsed([], [Rejection(None, "empty_array", "message is an empty JSON array", None)], 1)
        if len(doc) > MAX_EVENTS_PER_MESSAGE:
            return Parsed([], [Rejection(None, "too_many_events", f"message holds {len(doc)} events, the limit is {MAX_EVENTS_PER_MESSAGE}", None)], len(doc))
        events: list[Event] = []
        rejections: list[Rejection] = []
        for i, obj in enumerate(doc):
            try:
                events.append(validate(obj, pseudonymise))
            except Invalid as e:
                rejections.append(Rejection(i, e.code, e.error, orjson.dumps(obj)))
        return Parsed(events, rejections, len(doc))
    try:
        return Parsed([validate(doc, pseudonymise)], [], 1)
    except Invalid as e:
        return Parsed([], [Rejection(None, e.code, e.error, None)], 1)


DEAD_LETTER_MAX_BYTES = 16 * 1024  # the original message is cut to this size in a dead-letter record


def dead_letter_record(topic: str, partition: int, offset: int, rejection: Rejection, raw: bytes | None,
                       now_ms: int) -> dict:
    """The dead-letter record for one refused message or array element (schemas/dead_letter.json)."""
    original = rejection.fragment if rejection.fragment is not None else (raw or b"")
    cut = original[:DEAD_LETTER_MAX_BYTES]
    rec = {"topic": topic, "partition": partition, "offset": offset, "index": rejection.index,
           "code": rejection.code, "error": rejection.error, "ts": format_ts(now_ms),
           "message_truncated": len(original) > DEAD_LETTER_MAX_BYTES}
    try:
        rec["message"] = cut.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        if len(original) > DEAD_LETTER_MAX_BYTES:
            # A cut may split a multi-byte character; fall back to base64 only when the text itself is bad.
            try:
                original.decode("utf-8")
                rec["message"] = cut.decode("utf-8", errors="ignore")
                return rec
            except UnicodeDecodeError:
                pass
        rec["message_b64"] = base64.b64encode(cut).decode("ascii")
    return rec

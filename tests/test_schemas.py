"""The hand-written validator agrees with the JSON Schema files, which stay the truth."""
import math

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from launchpulse.schemas import load_schema
from launchpulse.schemas.validate import (
    CODES, Invalid, MAX_MESSAGE_BYTES, dead_letter_record, format_ts, parse_message, parse_ts, validate_click,
    validate_click_fully, validate_event,
)

KIND_SCHEMA = {"clickstream": "clickstream", "order": "order", "catalog": "catalog"}
VALIDATORS = {k: jsonschema.Draft202012Validator(load_schema(v), format_checker=None) for k, v in KIND_SCHEMA.items()}
ID = lambda s: s  # noqa: E731


def schema_ok(kind, obj) -> bool:
    return VALIDATORS[kind].is_valid(obj)


def ours_ok(kind, obj) -> bool:
    try:
        validate_event(kind, obj, ID)
        return True
    except Invalid as e:
        assert e.code in CODES, e.code
        assert e.error
        return False


ids = st.one_of(st.text(min_size=0, max_size=140), st.integers(), st.none(), st.booleans(), st.just("x" * 129),
                st.just("a\x00b"), st.sampled_from(["i1", "i2", "item-3", "user:u", "#meta:0", "category:c", "session:s"]))
tss = st.one_of(st.integers(min_value=-10**15, max_value=10**16), st.sampled_from(
    ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00.123+02:00", "1999-12-31T23:59:59Z", "2026-13-01T00:00:00Z",
     "2026-11-01 10:00:00Z", "2026-11-01T10:00:00", "yesterday", "", "2099-12-31T23:59:59Z"]),
    st.floats(allow_nan=False), st.none(), st.booleans())
nums = st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e10, max_value=2e9), st.integers(-5, 10**10),
                 st.text(max_size=3), st.none(), st.booleans())
click = st.fixed_dictionaries(
    {}, optional={"event_id": ids, "ts": tss, "user_id": ids, "session_id": ids,
                  "event_type": st.one_of(st.sampled_from(["view", "search", "add_to_cart", "remove_from_cart", "wishlist",
                                                           "review", "buy", ""]), st.integers()),
                  "item_id": ids, "category_id": ids, "price": nums, "query": st.one_of(st.text(max_size=20), st.integers()),
                  "rating": st.one_of(st.integers(-1, 7), st.floats(allow_nan=False)), "extra": st.recursive(
                      st.integers(), lambda c: st.lists(c, max_size=2), max_leaves=4)})
line = st.fixed_dictionaries({}, optional={"item_id": ids, "quantity": st.one_of(st.integers(-2, 200000), st.floats(allow_nan=False)),
                                          "price": nums, "category_id": ids})
order = st.fixed_dictionaries({}, optional={"order_id": ids, "ts": tss, "user_id": ids,
                                            "items": st.one_of(st.lists(line, max_size=3), st.integers(), st.none())})
catalog = st.fixed_dictionaries({}, optional={"item_id": ids, "ts": tss, "title": st.one_of(st.text(max_size=10), st.integers()),
                                              "category_id": ids, "price": nums,
                                              "status": st.sampled_from(["planned", "live", "retired", "gone"]),
                                              "launched_at": tss, "stock": st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=False))})


def _valid_variants(kind, obj):
    """Schema-valid documents must also pass our validator, except for range checks JSON Schema can't express."""
    if schema_ok(kind, obj) and not ours_ok(kind, obj):
        # Only a calendar-impossible date or an out-of-range RFC 3339 instant may differ.
        with pytest.raises(Invalid) as ei:
            validate_event(kind, obj, ID)
        assert ei.value.code == "bad_timestamp", (obj, ei.value.error)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(click.map(lambda o: ("clickstream", o)), order.map(lambda o: ("order", o)),
                 catalog.map(lambda o: ("catalog", o))))
def test_validator_agrees_with_schema_files(case):
    kind, obj = case
    if ours_ok(kind, obj):
        assert schema_ok(kind, obj), f"validator accepted what {kind}.json refuses: {obj!r}"
    _valid_variants(kind, obj)


def _click_outcome(validate, obj):
    try:
        return validate(obj, str.upper)
    except Invalid as e:
        return (e.code, e.error)


# Mostly valid clicks with one field changed: they sit on the fast path's edges.
BASE_CLICK = {"event_id": "e1", "ts": 1793527200000, "user_id": "u", "session_id": "s", "event_type": "view",
              "item_id": "i", "category_id": "c", "price": 2.5}
near_click = st.tuples(st.sampled_from([*BASE_CLICK, "query", "rating", "extra"]),
                       st.one_of(ids, tss, nums, st.sampled_from(["view", "search", "buy", None, 3, "", "a\u2028b"])),
                       st.booleans()).map(lambda c: {k: v for k, v in {**BASE_CLICK, c[0]: c[1]}.items()
                                                     if not (c[2] and k == c[0])})


@settings(max_examples=4000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.one_of(click, near_click, st.just(BASE_CLICK), st.integers(), st.lists(st.integers(), max_size=2)))
def test_click_fast_path_agrees_with_full_validation(obj):
    """validate_click's fast path accepts nothing the full checks refuse, and gives the same event."""
    assert _click_outcome(validate_click, obj) == _click_outcome(validate_click_fully, obj)


def test_click_fast_path_is_taken_for_a_plain_click(monkeypatch):
    import launchpulse.schemas.validate as v

    def refuse(*a):
        raise AssertionError("full validation ran")
    monkeypatch.setattr(v, "validate_click_fully", refuse)
    for variant in (BASE_CLICK, {k: x for k, x in BASE_CLICK.items() if k not in ("price", "category_id")},
                    {**BASE_CLICK, "price": 3}):
        ev = v.validate_click(variant, str.upper)
        assert (ev.user_key, ev.price, ev.rating) == ("U", None if "price" not in variant else float(variant["price"]), None)


def test_pseudonymiser_is_hmac_sha256():
    import hashlib
    import hmac

    from launchpulse.schemas.validate import Pseudonymiser

    for key in (b"k", b"x" * 64, b"y" * 65, bytes(range(200))):
        p = Pseudonymiser(key)
        for value in ("alice@example.com", "", "\u00e9l\u00e8ve", "u" * 300):
            assert p(value) == p(value) == hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


@settings(max_examples=4000, deadline=None)
@given(st.binary(max_size=300))
def test_parse_message_never_raises_on_bytes(raw):
    for kind in ("clickstream", "order", "catalog"):
        p = parse_message(raw, kind, ID)
        assert len(p.events) + len(p.rejections) >= 1
        for r in p.rejections:
            assert r.code in CODES and r.error


@settings(max_examples=3000, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=20))
def test_parse_message_never_raises_on_json(doc):
    import json

    raw = json.dumps(doc).encode()  # json, not orjson: big integers are part of the hostile set
    for kind in ("clickstream", "order", "catalog"):
        p = parse_message(raw, kind, ID)
        n = len(doc) if isinstance(doc, list) and doc else 1
        assert len(p.events) + len(p.rejections) == n


def test_valid_examples_pass_both():
    good = {
        "clickstream": {"event_id": "e1", "ts": "2026-11-01T10:00:00Z", "user_id": "u1", "session_id": "s1",
                        "event_type": "view", "item_id": "i1", "price": 9.5, "whatever": {"nested": [1, 2]}},
        "order": {"order_id": "o1", "ts": 1793527200000, "user_id": "u1",
                  "items": [{"item_id": "i1", "quantity": 2, "price": 3}]},
        "catalog": {"item_id": "i1", "ts": "2026-11-01T10:00:00+01:00", "title": "Tea", "category_id": "c",
                    "price": 1.0, "status": "planned", "stock": 0},
    }
    for kind, obj in good.items():
        assert schema_ok(kind, obj) and ours_ok(kind, obj)
    search = {"event_id": "e2", "ts": 1793527200000, "user_id": "u", "session_id": "s", "event_type": "search", "query": "tea"}
    assert schema_ok("clickstream", search) and ours_ok("clickstream", search)


@pytest.mark.parametrize("item_id", ["user:u9", "category:c1", "session:s1", "#sessions:0", "#category:c1"])
def test_item_ids_in_the_pipelines_own_key_spaces_are_refused(item_id):
    """An item id is the item's key in the worker's tables, beside the pipeline's own keys (users' and
    categories' states, its bookkeeping): one beginning like those would be read as another kind of
    state (a worker failed on such a click, every time it read it back). It is refused, with a reason,
    by the schema files and the validator alike; the characters elsewhere in an id are fine."""
    docs = {
        "clickstream": {"event_id": "e1", "ts": 1793527200000, "user_id": "u", "session_id": "s",
                        "event_type": "view", "item_id": item_id},
        "order": {"order_id": "o1", "ts": 1793527200000, "user_id": "u",
                  "items": [{"item_id": "i1", "quantity": 1, "price": 1}, {"item_id": item_id, "quantity": 1, "price": 1}]},
        "catalog": {"item_id": item_id, "ts": 1793527200000, "title": "Tea", "category_id": "c", "price": 1.0,
                    "status": "live"},
    }
    for kind, obj in docs.items():
        assert not schema_ok(kind, obj)
        p = parse_message(orjson.dumps(obj), kind, ID)
        assert p.events == [] and [r.code for r in p.rejections] == ["invalid_value"], (kind, p)
        assert "item_id must not begin with" in p.rejections[0].error
        inner = {**obj, "items": [{"item_id": "tea" + item_id, "quantity": 1, "price": 1}]} if kind == "order" else \
            {**obj, "item_id": "tea" + item_id}
        assert schema_ok(kind, inner) and ours_ok(kind, inner)


@pytest.mark.parametrize("raw,code", [
    (b"\xff\xfe{", "invalid_utf8"), (b'{"a":', "invalid_json"), (b"[]", "empty_array"), (b"7", "not_object"),
    (b"[" * 5000 + b"]" * 5000, "invalid_json"), (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
    (b'{"event_id":"e","ts":NaN}', "invalid_json"), (b'{"event_id":"e","ts":1e400}', "invalid_json"),
])
def test_message_level_codes(raw, code):
    p = parse_message(raw, "clickstream", ID)
    assert [r.code for r in p.rejections] == [code]


def test_array_keeps_valid_neighbours():
    ok = {"event_id": "e1", "ts": 1793527200000, "user_id": "u", "session_id": "s", "event_type": "view", "item_id": "i"}
    raw = orjson.dumps([ok, {**ok, "ts": "soon"}, {**ok, "event_id": 5}, {**ok, "price": -1}])
    p = parse_message(raw, "clickstream", ID)
    assert [e.event_id for e in p.events] == ["e1"]
    assert [(r.index, r.code) for r in p.rejections] == [(1, "bad_timestamp"), (2, "wrong_type"), (3, "invalid_value")]


def test_pseudonymised_at_parse():
    from launchpulse.schemas.validate import Pseudonymiser

    ok = {"event_id": "e1", "ts": 1793527200000, "user_id": "alice@example.com", "session_id": "s", "event_type": "view",
          "item_id": "i"}
    ev = parse_message(orjson.dumps(ok), "clickstream", Pseudonymiser(b"k")).events[0]
    assert "alice" not in ev.user_key and len(ev.user_key) == 32
    assert ev.user_key == Pseudonymiser(b"k")("alice@example.com") != Pseudonymiser(b"other")("alice@example.com")


def test_dead_letter_records_are_schema_valid():
    v = jsonschema.Draft202012Validator(load_schema("dead_letter"))
    for raw in (b"\xff\xfe", b'{"a":1}', b"x" * 40000):
        p = parse_message(raw, "order", ID)
        rec = dead_letter_record("orders", 0, 7, p.rejections[0], raw, 1793527200000)
        v.validate(rec)
        assert len(rec.get("message", rec.get("message_b64", ""))) <= 16 * 1024 * 4 / 3 + 4


def test_ts_round_trip():
    for ms in (946684800000, 1793527200123, 4102444799999):
        assert parse_ts(format_ts(ms)) == ms
    assert math.isclose(parse_ts("2026-11-01T10:00:00.5Z") % 1000, 500)


def test_integral_numbers_are_integers():
    """JSON Schema's integer is any number without a fractional part; the validator agrees (found by
    test_validator_agrees_with_schema_files: a catalog record with "stock": 0.0)."""
    cat = {"item_id": "i1", "ts": 1793527200000.0, "title": "Tea", "category_id": "c", "price": 1.0,
           "status": "live", "stock": 0.0}
    assert schema_ok("catalog", cat) and ours_ok("catalog", cat)
    ev = validate_event("catalog", cat, ID)
    assert (ev.stock, ev.ts_ms) == (0, 1793527200000) and type(ev.stock) is int and type(ev.ts_ms) is int
    line = {"order_id": "o1", "ts": 1793527200000, "user_id": "u1", "items": [{"item_id": "i1", "quantity": 2.0, "price": 3}]}
    assert validate_event("order", line, ID).lines[0].quantity == 2
    for bad in (2.5, True, "2"):
        line["items"][0]["quantity"] = bad
        assert not schema_ok("order", line) and not ours_ok("order", line)

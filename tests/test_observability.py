"""Observability: docker-compose.yml, deploy/prometheus.yml, Grafana provisioning and dashboards.

Static tests check that the files agree with each other and with the metrics the worker
defines (stream/metrics.py). The live test starts a real worker on the test broker and a
real Prometheus scraping it, feeds events over several event-time windows, and evaluates
every PromQL expression of every dashboard panel through Prometheus' HTTP API.

The live test and the promtool checks need the ``prometheus`` and ``promtool`` binaries
(Debian/Ubuntu: ``apt-get install -y prometheus``); without them they are skipped, saying so.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import orjson
import pytest

from conftest import http_json, http_text
from hostile import BASE_TS, click, order

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROM_CONFIG = ROOT / "deploy" / "prometheus.yml"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVIDER = ROOT / "grafana" / "provisioning" / "dashboards" / "launchpulse.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
YAML_FILES = [COMPOSE, PROM_CONFIG, DATASOURCES, DASH_PROVIDER]
WORKER_SERVICES = ("worker-1", "worker-2")

# Grafana's interval variables, replaced by concrete values when a test evaluates an expression.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}
# Expressions over labelled counters that have no series until something goes wrong.
MAY_BE_EMPTY = {"launchpulse_broker_errors_total": "no broker error happens in a healthy run, and a labelled "
                                                   "counter has no series before its first increment"}

NEEDS_PROMETHEUS = "needs the prometheus and promtool binaries on PATH (Debian/Ubuntu: apt-get install -y prometheus)"


# -- a small YAML reader ------------------------------------------------------------------
# The test dependencies do not include PyYAML, so the deployment files are written in a plain
# subset of YAML (block mappings and sequences, plain or quoted scalars, JSON-style flow lists,
# no anchors) that this reader understands; where PyYAML is installed, test_yaml_files_parse
# checks that both readers agree.

_KEY = re.compile(r"^([A-Za-z0-9_.\-]+):(?:\s+(.*))?$")


def _strip_comment(line: str) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _scalar(s: str):
    s = s.strip()
    if s in ("", "~", "null"):
        return None
    if s[0] in '["{':
        return json.loads(s)
    if s[0] == "'":
        assert s.endswith("'"), s
        return s[1:-1].replace("''", "'")
    if s in ("true", "false"):
        return s == "true"
    if re.fullmatch(r"-?[0-9]+", s):
        return int(s)
    return s


def mini_yaml(text: str):
    lines = []
    for raw in text.splitlines():
        assert "\t" not in raw, "tabs are not YAML indentation"
        s = _strip_comment(raw).rstrip()
        if s.strip():
            lines.append([len(s) - len(s.lstrip(" ")), s.strip()])
    pos = 0

    def node(indent):
        if lines[pos][1].startswith("- ") or lines[pos][1] == "-":
            return sequence(indent)
        return mapping(indent)

    def sequence(indent):
        nonlocal pos
        out = []
        while pos < len(lines) and lines[pos][0] == indent and (lines[pos][1].startswith("- ") or lines[pos][1] == "-"):
            item = lines[pos][1][1:].strip()
            if not item:
                pos += 1
                out.append(node(lines[pos][0]))
            elif _KEY.match(item) and not item[0] in "\"'[{":
                lines[pos] = [indent + 2, item]  # "- key: value" opens a mapping two columns in
                out.append(mapping(indent + 2))
            else:
                out.append(_scalar(item))
                pos += 1
        return out

    def mapping(indent):
        nonlocal pos
        out = {}
        while pos < len(lines) and lines[pos][0] == indent:
            m = _KEY.match(lines[pos][1])
            assert m, f"not a mapping entry: {lines[pos][1]!r}"
            key, rest = m.group(1), m.group(2)
            assert key not in out, f"duplicate key {key}"
            pos += 1
            if rest:
                out[key] = _scalar(rest)
            elif pos < len(lines) and lines[pos][0] > indent:
                out[key] = node(lines[pos][0])
            else:
                out[key] = None
        assert pos == len(lines) or lines[pos][0] < indent, f"bad indentation at {lines[pos][1]!r}"
        return out

    doc = node(lines[0][0])
    assert pos == len(lines), f"unparsed from {lines[pos][1]!r}"
    return doc


def load_yaml(path: Path):
    return mini_yaml(path.read_text())


# -- what the worker exports ------------------------------------------------------------------

def exported_series() -> dict[str, set]:
    """Series names the worker can export -> their label names (from stream/metrics.py's registry)."""
    from prometheus_client.metrics import MetricWrapperBase

    from launchpulse.stream.metrics import Metrics

    m = Metrics()
    labels_of = {obj._name: set(obj._labelnames) for obj in vars(m).values() if isinstance(obj, MetricWrapperBase)}
    out: dict[str, set] = {}
    for fam in m.registry.collect():  # also the process_* families of the ProcessCollector
        labels = labels_of.get(fam.name, set())
        if fam.type == "counter":
            out[fam.name + "_total"] = labels
        elif fam.type == "histogram":
            out.update({fam.name + "_bucket": labels | {"le"}, fam.name + "_sum": labels, fam.name + "_count": labels})
        else:
            out[fam.name] = labels
    return out


PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset", "bool", "topk", "bottomk",
    "clamp_min", "clamp_max", "abs", "delta", "deriv", "vector", "scalar", "time", "label_replace",
}


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every panel."""
    out = []
    for path in DASHBOARDS:
        for p in json.loads(path.read_text())["panels"]:
            for t in p.get("targets", []):
                out.append((path.name, p["title"], t["expr"]))
    return out


def concrete(expr: str) -> str:
    for var, val in GRAFANA_VARS.items():
        expr = expr.replace(var, val)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def parse_expr(expr: str) -> tuple[set, set, list]:
    """(series names, grouping labels, label matchers as (label, value)) used by a PromQL expression."""
    e = concrete(expr)
    matchers = re.findall(r'([A-Za-z_][A-Za-z0-9_]*)\s*=~?\s*"([^"]*)"', e)
    grouping = set()
    for grp in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e):
        grouping |= {g.strip() for g in grp.split(",") if g.strip()}
    stripped = re.sub(r"\{[^}]*\}", "", e)
    stripped = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    idents = set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b", stripped))
    return idents - PROMQL_WORDS, grouping, matchers


# -- static consistency -----------------------------------------------------------------------

@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_files_parse(path):
    doc = load_yaml(path)
    assert isinstance(doc, dict) and doc
    try:
        import yaml
    except ImportError:
        return
    assert yaml.safe_load(path.read_text()) == doc, "the subset reader and PyYAML disagree"


def test_compose_services_consistent():
    c = load_yaml(COMPOSE)
    svc = c["services"]
    assert {"kafka", "prometheus", "grafana", "replay", *WORKER_SERVICES} <= set(svc)
    declared_volumes = set(c.get("volumes") or {})
    for name, s in svc.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
            else:
                assert src in declared_volumes, f"{name} uses undeclared volume {src}"
        for dep in s.get("depends_on", {}):
            assert dep in svc, f"{name} depends on unknown service {dep}"
    # Kafka: KRaft, single node, health-checked, advertised as kafka:9092 inside the network.
    k = svc["kafka"]
    assert k["image"].startswith("apache/kafka:")
    env = k["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(env)
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert k["healthcheck"]["test"]
    # The launchpulse services: one image built from deploy/Dockerfile, the broker above.
    for name in (*WORKER_SERVICES, "replay"):
        s = svc[name]
        assert s["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
        assert s["image"] == svc[WORKER_SERVICES[0]]["image"], name
        assert s["environment"]["LAUNCHPULSE_BROKER"] == "kafka://kafka:9092", name
        assert s["depends_on"]["kafka"]["condition"] == "service_healthy", name
    assert (ROOT / "deploy" / "Dockerfile").is_file()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M) and "pip install ." in dockerfile
    keys = set()
    for name in WORKER_SERVICES:
        s = svc[name]
        env = s["environment"]
        assert env["LAUNCHPULSE_WEB_HOST"] == "0.0.0.0"
        assert "ports" not in s, f"{name}'s web port must stay inside the compose network"
        assert s["command"][:2] == ["launchpulse", "worker"]
        hc = " ".join(s["healthcheck"]["test"])
        assert f"127.0.0.1:{env['LAUNCHPULSE_WEB_PORT']}/healthz" in hc
        keys.add(env["LAUNCHPULSE_PSEUDONYM_KEY"])
    assert len(keys) == 1, "the workers must share one pseudonym key"
    assert svc["replay"]["command"][:4] == ["launchpulse", "replay", "instacart", "--create-topics"]
    assert svc["replay"]["restart"] == "no"
    # Only Grafana and Prometheus are published, and only on the loopback interface.
    assert svc["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert svc["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert {n for n, s in svc.items() if "ports" in s} == {"grafana", "prometheus"}


def test_prometheus_scrapes_every_worker():
    c = load_yaml(COMPOSE)
    svc = c["services"]
    prom = svc["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    assert mounts[config_arg.split("=", 1)[1]] == "./deploy/prometheus.yml"
    cfg = load_yaml(PROM_CONFIG)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["launchpulse"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    want = {f"{name}:{svc[name]['environment']['LAUNCHPULSE_WEB_PORT']}" for name in svc
            if svc[name].get("command", [None, None])[:2] == ["launchpulse", "worker"]}
    assert want == {f"{n}:6066" for n in WORKER_SERVICES}
    assert targets == want


def test_grafana_provisioning_matches_compose():
    svc = load_yaml(COMPOSE)["services"]
    g = svc["grafana"]
    mounts = {}
    for v in g["volumes"]:
        src, dst = v.split(":")[:2]
        mounts[dst] = src
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    ds = load_yaml(DATASOURCES)["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus"
    url = urllib.parse.urlparse(ds[0]["url"])
    assert url.hostname == "prometheus" and url.port == 9090 and url.hostname in svc
    assert "127.0.0.1:9090:9090" in svc["prometheus"]["ports"]
    scrape = load_yaml(PROM_CONFIG)["global"]["scrape_interval"]
    assert ds[0]["jsonData"]["timeInterval"] == scrape
    providers = load_yaml(DASH_PROVIDER)["providers"]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    assert mounts[path] == "./grafana/dashboards"
    home = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (ROOT / "grafana" / "dashboards" / home[len(path) + 1:]).is_file()
    env = g["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_dashboards_well_formed():
    uid = load_yaml(DATASOURCES)["datasources"][0]["uid"]
    assert len(DASHBOARDS) >= 3
    uids, n_panels = set(), 0
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        assert d["uid"] not in uids
        uids.add(d["uid"])
        assert 36 <= d["schemaVersion"] <= 41 and d["title"].startswith("launchpulse")
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for p in d["panels"]:
            n_panels += 1
            assert p["datasource"] == {"type": "prometheus", "uid": uid}, (path.name, p["title"])
            assert p["targets"] and p["description"], (path.name, p["title"])
            for t in p["targets"]:
                assert t["datasource"]["uid"] == uid and t["expr"].strip(), (path.name, p["title"])
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
    assert n_panels >= 6


def test_dashboard_metrics_are_exported():
    series = exported_series()
    assert "launchpulse_events_total" in series and "process_resident_memory_bytes" in series
    jobs = {j["job_name"] for j in load_yaml(PROM_CONFIG)["scrape_configs"]}
    for name, title, expr in dashboard_exprs():
        names, grouping, matchers = parse_expr(expr)
        assert names, f"{name} / {title}: no metric in {expr}"
        for n in names:
            assert n in series, f"{name} / {title}: {n} is not exported by the worker (stream/metrics.py)"
        known = set().union(*(series[n] for n in names)) | {"instance", "job"}
        assert grouping <= known, f"{name} / {title}: grouping by unknown labels {grouping - known}"
        for label, value in matchers:
            assert label in known, f"{name} / {title}: unknown label {label}"
            if label == "job":
                assert value in jobs, f"{name} / {title}: no scrape job {value}"
        # several workers: aggregate with an explicit grouping, never over raw per-worker series
        if "histogram_quantile" in expr:
            assert re.search(r"sum by \([^)]*\ble\b", expr), f"{name} / {title}: quantile without sum by (le)"


@pytest.mark.skipif(not shutil.which("promtool"), reason=NEEDS_PROMETHEUS)
def test_promtool_check_config():
    r = subprocess.run(["promtool", "check", "config", str(PROM_CONFIG)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


# -- live: a worker, real Prometheus, every panel's query -------------------------------------

async def _produce(settings, messages):
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, enable_idempotence=False)
    await p.start()
    try:
        for topic, value in messages:
            await p.send_and_wait(topic, value, partition=0)  # one partition: event time stays ordered
    finally:
        await p.stop()


MIN = 60_000
GROUP_A = [f"obs-a{k}" for k in range(8)]  # interest surges in the window 11:00-12:00
GROUP_B = [f"obs-b{k}" for k in range(8)]  # interest surges in the window 12:00-13:00
ITEMS = GROUP_A + GROUP_B


def _clicks() -> list:
    """Event time from 8:00: three quiet windows (interest 2, 2, then 3), a surge for group A, a surge for
    group B, then background. A boost needs interest above its previous mean two windows in a row (the
    second with the surge), so every item's interest already rises a little from 9:00 to 10:00, and at
    least 4 windows to fit its growth on, so the surge comes in an item's 4th window at the earliest."""
    plan = []
    for item in ITEMS:
        plan += [(item, BASE_TS + m * MIN, "view") for m in (-115, -110, -55, -50, 5, 10, 20)]
        for hour, group in ((1, GROUP_A), (2, GROUP_B)):
            if item in group:
                plan += [(item, BASE_TS + hour * 60 * MIN + j * 150_000, ("view", "add_to_cart")[j % 2]) for j in range(20)]
            else:
                plan += [(item, BASE_TS + hour * 60 * MIN + m * MIN, "view") for m in (15, 35, 55)]
        plan += [(item, BASE_TS + m * MIN, "view") for m in (185, 200, 220, 240, 260)]
    plan.sort(key=lambda x: x[1])
    return [click(n, event_id=f"obs-c{n}", ts=ts, item_id=item, event_type=kind) for n, (item, ts, kind) in enumerate(plan)]


def _orders() -> list:
    bundles = [order(i, order_id=f"obs-o{i}", ts=BASE_TS + 65 * MIN + i * MIN,
                     items=[{"item_id": "obs-bundle-a", "quantity": 1, "price": 3.0},
                            {"item_id": "obs-bundle-b", "quantity": 1, "price": 2.0}]) for i in range(12)]
    singles = [order(100 + i, order_id=f"obs-o{100 + i}", ts=BASE_TS + 66 * MIN + i * MIN,
                     items=[{"item_id": GROUP_A[i % len(GROUP_A)], "quantity": 1, "price": 9.5}]) for i in range(40)]
    return sorted(bundles + singles, key=lambda o: o["ts"])


def _feed(s, lo_ms: int, hi_ms: int) -> list:
    """The clicks and orders with event time in [lo_ms, hi_ms), in event-time order, clicks 50 to a message."""
    clicks = [c for c in _clicks() if lo_ms <= c["ts"] < hi_ms]
    orders = [o for o in _orders() if lo_ms <= o["ts"] < hi_ms]
    msgs = []
    for start in range(0, len(clicks), 50):
        chunk = clicks[start:start + 50]
        while orders and orders[0]["ts"] <= chunk[0]["ts"]:
            msgs.append((s.topic_orders, orjson.dumps(orders.pop(0))))
        msgs.append((s.topic_clickstream, orjson.dumps(chunk)))
    return msgs + [(s.topic_orders, orjson.dumps(o)) for o in orders]


def _late(s, tag: str) -> list:
    """Three events far behind the watermark: refused and dead-lettered as late_event."""
    return [(s.topic_clickstream, orjson.dumps(click(9000 + i, event_id=f"obs-late-{tag}{i}", ts=BASE_TS + i * 1000,
                                                     item_id=ITEMS[i]))) for i in range(3)]


def _broken(s) -> list:
    """Two messages that are not JSON: dead-lettered as invalid_json."""
    return [(s.topic_clickstream, b'{"event_id": "obs-broken", "ts": '), (s.topic_orders, b"[")]


def _counts(w) -> str:
    names = ("signals", "windows_closed", "late_events", "dead_letter", "events")
    return ", ".join(f"{n} {w.metric(f'launchpulse_{n}_total'):g}" for n in names) + "\n" + w.tail(2000)


def _wait(what: str, cond, timeout: float, detail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{detail()}")


class Prometheus:
    def __init__(self, tmp: Path, target: str, job: str):
        from launchpulse.stream.broker import free_port

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                       f"scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n")
        self.log_path = tmp / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log_path.read_bytes()[-3000:].decode("utf-8", "replace")

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited {self.proc.returncode}:\n{self.tail()}"
        try:
            return http_text(self.base + "/-/ready", 1.0).strip() != ""
        except OSError:
            return False

    def query(self, expr: str) -> list:
        code, body = http_json(self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert code == 200 and body["status"] == "success", f"{expr}: {code} {body}"
        assert body["data"]["resultType"] == "vector", body
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.mark.integration
@pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")), reason=NEEDS_PROMETHEUS)
def test_every_panel_query_has_data_from_a_live_worker(deployment, tmp_path):
    from launchpulse.stream.admin import ensure_topics

    s = deployment.settings()
    asyncio.run(ensure_topics(s))
    w = deployment.worker()
    w.wait_healthy()
    prom = Prometheus(tmp_path, f"127.0.0.1:{w.web_port}", "launchpulse")
    try:
        _wait("prometheus ready", prom.ready, 20, prom.tail)
        _wait("the first scrape", lambda: prom.query('up{job="launchpulse"} == 1'), 20, prom.tail)

        # Phase 1: up to 13:05 closes the windows of 8:00 to 11:00 (group A's surge: boost signals).
        hour = 60 * MIN
        asyncio.run(_produce(s, _feed(s, 0, BASE_TS + 3 * hour + 5 * MIN) + _broken(s)))
        _wait("signals", lambda: w.metric("launchpulse_signals_total") > 0, 45, lambda: _counts(w))
        assert w.metric("launchpulse_windows_closed_total") >= 2 * len(ITEMS)
        assert w.metric("launchpulse_dead_letter_total", code="invalid_json") == 2
        first = w.metric("launchpulse_signals_total")
        _wait("prometheus to scrape the first signals",
              lambda: sum(float(x["value"][1]) for x in prom.query("launchpulse_signals_total")) >= first, 20)
        # Phase 2: up to 14:20 closes 12:00 (group B's surge) and 13:00; late and broken events.
        asyncio.run(_produce(s, _late(s, "y") + _broken(s) + _feed(s, BASE_TS + 3 * hour + 5 * MIN, BASE_TS + 5 * hour)))
        _wait("group B's signals and the late events", lambda: w.metric("launchpulse_signals_total") > first
              and w.metric("launchpulse_late_events_total") >= 3, 30, lambda: _counts(w))
        _wait("prometheus to scrape the late events",
              lambda: sum(float(x["value"][1]) for x in prom.query("launchpulse_late_events_total")) >= 3, 20)
        # Phase 3: more late and broken events, so their rates move after their series exist.
        asyncio.run(_produce(s, _late(s, "z") + _broken(s)))
        _wait("the last late events", lambda: w.metric("launchpulse_late_events_total") >= 6, 30, lambda: _counts(w))
        # Sessions of both kinds closed and were scored before learning: the propensity panel has real figures.
        _wait("sessions scored by the propensity model", lambda: math.isfinite(w.metric("launchpulse_propensity_auc"))
              and w.metric("launchpulse_sessions_closed_total", label="ordered") > 0
              and w.metric("launchpulse_sessions_closed_total", label="not_ordered") > 0, 30, lambda: _counts(w))

        # promtool's lint of the exposition: silence means clean.
        text = http_text(w.base + "/metrics")
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr

        # Prometheus has the last counts, then one more scrape.
        _wait("prometheus to scrape the last late events",
              lambda: sum(float(x["value"][1]) for x in prom.query("launchpulse_late_events_total")) >= 6, 20)
        time.sleep(2.5)

        failures = []
        for name, title, expr in dashboard_exprs():
            result = prom.query(concrete(expr))
            if parse_expr(expr)[0] & set(MAY_BE_EMPTY):
                continue  # the query is valid (prom.query checked the status); data is not expected
            if not result:
                failures.append(f"{name} / {title}: no data for {concrete(expr)}")
                continue
            values = [float(x["value"][1]) for x in result]
            print(f"{name} / {title}: {len(result)} series, {concrete(expr)} -> {values[:4]}")
            if "histogram_quantile" in expr and not any(math.isfinite(v) for v in values):
                failures.append(f"{name} / {title}: no finite quantile from {concrete(expr)}: {values}")
            elif re.search(r"\b(rate|increase)\(", expr) and not any(v > 0 for v in values):
                failures.append(f"{name} / {title}: no movement in {concrete(expr)}: {values}")
        assert not failures, "\n".join(failures) + "\n" + w.tail(1500)
    finally:
        prom.stop()

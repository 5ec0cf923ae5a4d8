"""Kafka security settings (issue #6): what the clients get, what is refused, and a SASL client on a plaintext broker.

The embedded broker (Tansu 0.6, memory storage) cannot host a successful SASL
login: with ``--authentication`` it offers SCRAM only and refuses every request,
user creation included, until a client has logged in, and a user created before
would be lost with the memory storage across the restart that turns
authentication on. So a real SASL handshake is tested here only in its failing
forms: a worker and ``launchpulse replay`` configured for SASL against the plaintext
test broker must fail or report unhealthy with a clear reason within a bounded time.
"""
import os
import ssl
import subprocess
import sys
import time

import pytest
from conftest import http_json
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from launchpulse.stream.pipeline import _faust_credentials
from launchpulse.stream.settings import Settings

CAFILE = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
SECURITY_VARS = ("LAUNCHPULSE_SECURITY_PROTOCOL", "LAUNCHPULSE_SASL_MECHANISM", "LAUNCHPULSE_SASL_USERNAME",
                 "LAUNCHPULSE_SASL_PASSWORD", "LAUNCHPULSE_SSL_CAFILE")


@pytest.fixture
def env(monkeypatch):
    for v in SECURITY_VARS:
        monkeypatch.delenv(v, raising=False)

    def setenv(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(f"LAUNCHPULSE_{k.upper()}", v)
        return Settings.from_env()

    return setenv


def _same_auth(faust_kw: dict, ours: dict) -> None:
    """Faust's clients (from the credentials object) and ingest's aiokafka clients get the same auth."""
    assert faust_kw["security_protocol"] == ours["security_protocol"]
    for k in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        assert faust_kw.get(k) == ours.get(k), k
    a, b = faust_kw.get("ssl_context"), ours.get("ssl_context")
    assert (a is None) == (b is None)
    if a is not None:
        assert a.verify_mode == b.verify_mode == ssl.CERT_REQUIRED and a.check_hostname and b.check_hostname


def test_plaintext_default(env):
    s = env()
    assert s.kafka_security() == {"security_protocol": "PLAINTEXT"}
    assert _faust_credentials(s) is None
    assert credentials_to_aiokafka_auth(_faust_credentials(s)) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", [None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext(env, mechanism):
    kw = {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "alice", "sasl_password": "s3cret"}
    if mechanism:
        kw["sasl_mechanism"] = mechanism
    s = env(**kw)
    ours = s.kafka_security()
    assert ours == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism or "PLAIN",
                    "sasl_plain_username": "alice", "sasl_plain_password": "s3cret"}
    cred = _faust_credentials(s)
    assert isinstance(cred, SASLCredentials)
    assert (cred.username, cred.password, cred.mechanism.value, cred.protocol.value) == (
        "alice", "s3cret", mechanism or "PLAIN", "SASL_PLAINTEXT")
    _same_auth(credentials_to_aiokafka_auth(cred), ours)
    assert "s3cret" not in repr(s)  # the password stays out of logs


def test_sasl_ssl_with_cafile(env):
    s = env(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="alice",
            sasl_password="s3cret", ssl_cafile=CAFILE)
    ours = s.kafka_security()
    assert ours["security_protocol"] == "SASL_SSL" and isinstance(ours["ssl_context"], ssl.SSLContext)
    assert ours["ssl_context"].get_ca_certs() or ours["ssl_context"].cert_store_stats()["x509_ca"] > 0
    cred = _faust_credentials(s)
    assert isinstance(cred, SASLCredentials) and cred.protocol.value == "SASL_SSL"
    _same_auth(credentials_to_aiokafka_auth(cred), ours)


def test_ssl_only(env):
    s = env(security_protocol="SSL", ssl_cafile=CAFILE)
    ours = s.kafka_security()
    assert set(ours) == {"security_protocol", "ssl_context"} and ours["security_protocol"] == "SSL"
    cred = _faust_credentials(s)
    assert isinstance(cred, SSLCredentials)
    _same_auth(credentials_to_aiokafka_auth(cred), ours)


@pytest.mark.parametrize("kw, message", [
    ({"security_protocol": "SASL"}, "LAUNCHPULSE_SECURITY_PROTOCOL='SASL' must be one of"),
    ({"security_protocol": "sasl_plaintext", "sasl_username": "a", "sasl_password": "b"}, "must be one of"),
    ({"security_protocol": "SASL_PLAINTEXT"}, "needs LAUNCHPULSE_SASL_USERNAME and LAUNCHPULSE_SASL_PASSWORD"),
    ({"security_protocol": "SASL_SSL", "sasl_username": "a"}, "needs LAUNCHPULSE_SASL_PASSWORD"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI", "sasl_username": "a",
      "sasl_password": "b"}, "LAUNCHPULSE_SASL_MECHANISM='GSSAPI' must be one of"),
    ({"sasl_username": "a", "sasl_password": "b"}, "set but LAUNCHPULSE_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"security_protocol": "SSL", "sasl_mechanism": "PLAIN"}, "LAUNCHPULSE_SASL_MECHANISM set but"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "a", "sasl_password": "b", "ssl_cafile": CAFILE},
     "LAUNCHPULSE_SSL_CAFILE set but LAUNCHPULSE_SECURITY_PROTOCOL=SASL_PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "is not a readable file"),
])
def test_inconsistent_settings_refused(env, kw, message):
    with pytest.raises(SystemExit) as e:
        env(**kw)
    assert message in str(e.value)


def test_cli_refuses_inconsistent_settings_with_one_line(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k not in SECURITY_VARS}
    environ.update(LAUNCHPULSE_SECURITY_PROTOCOL="SASL_PLAINTEXT", LAUNCHPULSE_SASL_USERNAME="alice")
    r = subprocess.run([sys.executable, "-m", "launchpulse.stream.cli", "worker", "--data-dir", str(tmp_path)],
                       env=environ, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    assert "needs LAUNCHPULSE_SASL_PASSWORD" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


SASL_ENV = {"LAUNCHPULSE_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LAUNCHPULSE_SASL_MECHANISM": "PLAIN",
            "LAUNCHPULSE_SASL_USERNAME": "alice", "LAUNCHPULSE_SASL_PASSWORD": "s3cret"}
BOUND_S = 60.0


@pytest.mark.integration
def test_sasl_worker_on_plaintext_broker_fails_clearly(deployment):
    """Bounded: within BOUND_S the worker either exits non-zero saying why, or answers 503 with the reason."""
    w = deployment.worker(data_dir="sasl", **SASL_ENV)
    t0 = time.monotonic()
    outcome = None
    while time.monotonic() - t0 < BOUND_S:
        if w.proc.poll() is not None:
            outcome = ("exited", w.proc.returncode, w.tail())
            break
        try:
            code, body = http_json(w.base + "/healthz", 1.0)
            if code == 503 and "sasl" in (body or {}).get("reason", "").lower():
                outcome = ("unhealthy", code, body["reason"])
                break
            assert code != 200, f"a SASL client on a plaintext broker reported healthy: {body}"
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    assert outcome is not None, f"no clear failure within {BOUND_S:.0f} s:\n{w.tail()}"
    print("sasl worker outcome:", outcome[0], outcome[1], f"after {time.monotonic() - t0:.1f} s")
    if outcome[0] == "exited":
        assert outcome[1] != 0
        # aiokafka names the cause on every attempt; the worker's last line says it gave up
        assert "UnsupportedSaslMechanismError" in outcome[2] and "cannot reach the broker" in outcome[2], outcome[2]


@pytest.mark.integration
def test_sasl_replay_on_plaintext_broker_fails_clearly(deployment, tmp_path):
    src = tmp_path / "one.jsonl"
    src.write_text('{"kind": "clickstream", "event_id": "e1", "ts": 1760022840000, "user_id": "u", '
                   '"session_id": "s", "event_type": "view", "item_id": "1"}\n')
    environ = dict(deployment.environ, **SASL_ENV)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "launchpulse.stream.cli", "replay", str(src)], env=environ,
                       capture_output=True, text=True, timeout=120, check=False)
    took = time.monotonic() - t0
    gave_up = [x for x in r.stderr.splitlines() if x.startswith("launchpulse replay: cannot reach the broker")]
    print(f"sasl replay: rc={r.returncode} after {took:.1f} s: {gave_up}")
    assert r.returncode == 1, r.stderr
    assert gave_up and "(SASL_PLAINTEXT)" in gave_up[0], r.stderr
    assert "UnsupportedSaslMechanismError" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert took < 90, took

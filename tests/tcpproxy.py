"""A loopback TCP proxy that can simulate a broker outage (test helper).

Every client connection to ``listen_port`` is relayed to ``upstream_port`` by two
pump threads. :meth:`outage_begin` closes every live connection and the listening
socket, so new connections are refused (ECONNREFUSED, as from a broker that is
down); :meth:`outage_end` listens again on the same port. Run the broker with this
proxy's address as its advertised listener, so every connection a client opens
after the bootstrap one (metadata, group coordinator, fetch, produce) also goes
through the proxy.
"""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    def __init__(self, upstream_port: int, listen_port: int = 0, host: str = "127.0.0.1"):
        self.host = host
        self.upstream = (host, upstream_port)
        self.port = listen_port
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self.accepted = 0  # connections relayed since start
        self.refused_while_down = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._listen()
        return self

    def stop(self) -> None:
        self._close_listener()
        self._close_conns()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def up(self) -> bool:
        return self._listener is not None

    def outage_begin(self) -> int:
        """Refuse new connections and cut every live one; returns how many were cut."""
        self._close_listener()
        return self._close_conns()

    def outage_end(self) -> None:
        self._listen()

    def live_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- internals -------------------------------------------------------------------------
    def _listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        t = threading.Thread(target=self._accept_loop, args=(s,), name=f"tcpproxy-accept-{self.port}", daemon=True)
        self._accept_thread = t
        t.start()

    def _close_listener(self) -> None:
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            s.close()
        t, self._accept_thread = self._accept_thread, None
        if t is not None:
            t.join(5)

    def _close_conns(self) -> int:
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        return len(conns) // 2

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # an outage began meanwhile
                    client.close()
                    server.close()
                    return
                self._conns.update((client, server))
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(256 * 1024)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            # closing is left to whoever still holds the socket: the other pump ends on shutdown
            src.close()

"""A TCP proxy in front of PostgreSQL's unix socket that can be partitioned and healed.

Why a proxy and not a network namespace: pgserver serves on a unix socket only, a proxy
needs no privileges, no `ip`/`iptables` and no server moved into a namespace, and the
experiment starts and ends the fault at an exact moment from its own process. What it models
is a partition that heals before TCP gives up: while `blackholed`, bytes are neither
forwarded nor refused (each side's writes pile up in socket buffers, reads wait, new
connections are accepted and then hear nothing), so the app sees hangs and its own deadlines,
never a reset; on `restore` everything held back is delivered, as TCP retransmissions would
be. It does not model a partition long enough for the kernel to reset the connections.

Threads: one accepting, two per connection (one per direction) doing blocking
`recv`/`sendall` behind one gate (a `threading.Event`). `close` shuts every socket and joins
every thread (bounded).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path


class PartitionProxy:
    """127.0.0.1:`port` (chosen when started) forwarded to the unix socket `target`."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # so the accept loop sees `close` within 0.2 s
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closing = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self._spawn(self._accept, "proxy accept")

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    def blackhole(self) -> None:
        """Stop forwarding, in both directions and for new connections; close nothing."""
        self._open.clear()

    def restore(self) -> None:
        """Forward again, starting with everything held back."""
        self._open.set()

    def _spawn(self, target, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            client.settimeout(None)
            self._track(client)
            self._open.wait()  # a partitioned connection is accepted, then hears nothing
            if self._closing:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._track(upstream)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()  # PostgreSQL down: the app sees the connection end at once
                continue
            self.connections += 1
            ends = [2]  # directions still open; the last one to end closes both sockets
            self._spawn(self._pipe, "proxy up", client, upstream, ends)
            self._spawn(self._pipe, "proxy down", upstream, client, ends)

    def _pipe(self, src: socket.socket, dst: socket.socket, ends: list[int]) -> None:
        """Copy `src` to `dst` through the gate until EOF or an error, then pass the EOF on
        (and close both sockets when the other direction has ended too)."""
        try:
            while True:
                self._open.wait()
                data = src.recv(65536)
                if not data or self._closing:
                    break
                self._open.wait()  # read before the partition began: held until it ends
                if self._closing:
                    break
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            ends[0] -= 1
            last = ends[0] == 0
        if last:
            src.close()
            dst.close()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, cut every connection, join every thread (each within `timeout_s`)."""
        self._closing = True
        self._open.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout_s)

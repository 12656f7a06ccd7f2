"""A TCP link to a real redis-server that can fail right after a submit's write, or garble the
reply to chosen commands (``GarblingLink``).

Clients connect to the link instead of to Redis. ``fail_at_next_write()`` makes the link
behave as if Redis died at the next submit write a client sends (an EXEC, or the call of
``app.atomic_write``'s script; or, given ``markers``, the next command holding one of them):
just after it (the write is applied and its reply gets through), or just before it
(``deliver=False``: the write is lost). From then on whatever any
client sends is lost and new connections are refused, until ``restore()``. Those are moments
no timing from outside can hit: between a write and the client's next command.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from fastapi.testclient import TestClient

from app.atomic_write import WRITE_ALL_SHA, WRITE_TASK_SHA
from app.main import create_app
from tests.conftest import settings_from
from tests.utils.processes import RedisServer, Service, celery_worker, courier_env

# EXEC as a client sends it (RESP): base64 message bodies and JSON cannot contain CRLF; the
# scripts' SHA1 as EVALSHA names them.
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
WRITES: tuple[bytes, ...] = (EXEC, WRITE_ALL_SHA.encode(), WRITE_TASK_SHA.encode())
TAIL = max(len(marker) for marker in WRITES)


class RedisLink:
    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._upstream: set[socket.socket] = set()  # the sockets towards Redis
        self._tails: dict[socket.socket, bytes] = {}
        self._armed = self._failed = False
        self._deliver = True
        self._fail_markers = WRITES
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def fail_at_next_write(self, deliver: bool = True, markers: tuple[bytes, ...] = WRITES) -> None:
        with self._lock:
            self._armed, self._deliver, self._fail_markers = True, deliver, markers

    @property
    def failed(self) -> bool:
        with self._lock:
            return self._failed

    def restore(self) -> None:
        with self._lock:
            self._failed = False

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in list(self._peers):
            self._close(sock)
        self._selector.close()
        self._listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._forward(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if self.failed:
            client.close()  # Redis is "down": refused
            return
        upstream = socket.create_connection(("127.0.0.1", self._redis_port))
        self._peers[client], self._peers[upstream] = upstream, client
        self._upstream.add(upstream)
        for sock in (client, upstream):
            self._selector.register(sock, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        peer = self._peers[sock]
        if peer in self._upstream and not self._passes(sock, data):
            return
        if sock in self._upstream:
            data = self._answers(sock, data)
        if data:
            peer.sendall(data)  # Redis -> client flows: the write's reply gets through

    def _answers(self, upstream: socket.socket, data: bytes) -> bytes:
        """What of ``data``, sent by Redis on ``upstream``, reaches the client: all of it."""
        return data

    def _passes(self, client: socket.socket, data: bytes) -> bool:
        """Whether ``data``, sent by ``client``, reaches Redis."""
        with self._lock:
            if self._failed:
                return False  # sent to a dead Redis: lost
            seen = self._tails.get(client, b"") + data
            self._tails[client] = seen[-max(TAIL, *map(len, self._fail_markers)) :]
            if self._armed and any(marker in seen for marker in self._fail_markers):
                self._armed, self._failed = False, True
                return self._deliver  # deliver=False: the transaction never reaches Redis
        return True

    def _close(self, sock: socket.socket) -> None:
        for one in (sock, self._peers.pop(sock, None)):
            if one is None:
                continue
            self._peers.pop(one, None)
            self._upstream.discard(one)
            self._tails.pop(one, None)
            with contextlib.suppress(KeyError, ValueError):  # not registered (any more)
                self._selector.unregister(one)
            one.close()


# What redis-py makes of a reply whose first byte is no RESP type: ``InvalidResponse``
# ("Protocol Error"), as from a reply cut or garbled on a dying link.
GARBLED_REPLY = b"?garbled\r\n"


class GarblingLink(RedisLink):
    """A link that answers the next ``times`` commands containing every one of ``markers``
    with a reply redis-py cannot parse, without passing them to Redis: a write that did not
    happen, and whose failure the client cannot read as a connection error. Everything else
    flows both ways. Each such command must arrive in one read (a command of a few KB on
    loopback does)."""

    def __init__(self, redis_port: int) -> None:
        super().__init__(redis_port)
        self._markers: tuple[bytes, ...] = ()
        self._times = 0
        self.garbled = 0

    def garble(self, markers: tuple[bytes, ...], times: int) -> None:
        with self._lock:
            self._markers, self._times = markers, times

    def stop_garbling(self) -> None:
        self.garble((), 0)

    def _passes(self, client: socket.socket, data: bytes) -> bool:
        with self._lock:
            hit = self._times > 0 and all(marker in data for marker in self._markers)
            if hit:
                self._times -= 1
                self.garbled += 1
        if not hit:
            return super()._passes(client, data)
        client.sendall(GARBLED_REPLY)
        return False


class CuttingLink(RedisLink):
    """A link that, once ``cut_next_reply(keep)`` is called, passes only the first ``keep``
    bytes of the next data Redis sends to a client, and nothing after it on that connection,
    which stays open: a link lost in the middle of replies, without the client being told."""

    def __init__(self, redis_port: int) -> None:
        super().__init__(redis_port)
        self._keep: int | None = None
        self._cut: set[socket.socket] = set()

    def cut_next_reply(self, keep: int) -> None:
        with self._lock:
            self._keep = keep

    def _answers(self, upstream: socket.socket, data: bytes) -> bytes:
        with self._lock:
            keep, self._keep = self._keep, None
            if keep is not None:
                self._cut.add(upstream)
                return data[:keep]
            return b"" if upstream in self._cut else data


Link = TypeVar("Link", bound=RedisLink)


@contextlib.contextmanager
def linked_stack(
    tmp_path: Path, link_type: type[Link], pool: str, extra_args: tuple[str, ...] = ()
) -> Iterator[tuple[TestClient, Link, Service]]:
    """A worker (``pool``, one task at a time) reaching a real redis-server through a link of
    ``link_type``; the API (in process) reaching it directly."""
    with contextlib.ExitStack() as exits:
        server = exits.enter_context(RedisServer(tmp_path / "redis"))
        link = link_type(server.port)
        exits.enter_context(link)
        env = {"COURIER_REDIS_URL": server.url}
        api = exits.enter_context(TestClient(create_app(settings_from(env))))
        worker_env = courier_env({**env, "COURIER_REDIS_URL": link.url})
        worker = exits.enter_context(
            celery_worker(worker_env, tmp_path / "worker.log", "linked", 1, extra_args, pool=pool)
        )
        yield api, link, worker

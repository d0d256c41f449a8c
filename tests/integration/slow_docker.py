"""A unix-socket proxy in front of the real dockerd that delays every answer: a loaded Docker daemon.

A fake transport, not a fake daemon: on a busy host dockerd's events and inspects can come seconds late, which
the shared real daemon cannot be made to do on demand. Requests go through at once; each chunk of an answer
is handed on `delay` seconds after it came, in order. What answers is still the real dockerd.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import tempfile
import threading
import time

DOCKER_SOCK = "/var/run/docker.sock"


class SlowDocker:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.dir = tempfile.mkdtemp(prefix="slowd-", dir="/tmp")  # unix socket paths: at most 108 bytes
        self.path = os.path.join(self.dir, "docker.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(64)
        self._socks: list[socket.socket] = [self._server]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(DOCKER_SOCK)
            except OSError:
                client.close()
                continue
            self._socks += [client, up]
            chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._pipe, args=(client, up), daemon=True).start()
            threading.Thread(target=self._read_late, args=(up, chunks), daemon=True).start()
            threading.Thread(target=self._write_late, args=(chunks, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @staticmethod
    def _read_late(src: socket.socket, chunks: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                chunks.put((time.monotonic(), data))
        chunks.put((time.monotonic(), b""))

    def _write_late(self, chunks: queue.Queue[tuple[float, bytes]], dst: socket.socket) -> None:
        while True:
            came, data = chunks.get()
            time.sleep(max(0.0, came + self.delay - time.monotonic()))
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)

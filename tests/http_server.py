"""A real HTTP server on 127.0.0.1 for download tests, with the failure modes they need:
Range requests (206/416), a connection dropped mid-body, a 500 once, a slow answer, a 404."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Server:
    """Serves `files` (path -> bytes); records every request as (path, Range header)."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()  # send half the body, then close the connection
        self.fail_once: set[str] = set()  # answer 500 once
        self.slow: set[str] = set()  # sleep before answering (client timeout)
        self.ignore_range = False  # answer 200 with the whole file to a Range request

    def url(self, path: str) -> str:
        return self.base + path


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv: Server = self.server.state
        srv.log.append((self.path, self.headers.get("Range")))
        if self.path in srv.slow:
            time.sleep(1.0)
        if self.path in srv.fail_once:
            srv.fail_once.discard(self.path)
            return self.send_error(500)
        body = srv.files.get(self.path)
        if body is None:
            return self.send_error(404)
        start = self._range_start(srv, body)
        if start is None:
            return
        data = body[start:]
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path in srv.drop_once:
            srv.drop_once.discard(self.path)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # mid-body: the client sees a short read
            return
        self.wfile.write(data)

    def _range_start(self, srv: Server, body: bytes) -> int | None:
        """Send the status line (200/206/416); the offset to serve from, None when done."""
        rng = self.headers.get("Range")
        if not rng or srv.ignore_range:
            self.send_response(200)
            return 0
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        if start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        return start


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = Server(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()

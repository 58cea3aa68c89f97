"""A real S3-compatible server for the tests and benchmarks: ``moto_server`` (from
``moto[server]``, installed by ``make install``) on localhost, behind a small HTTP proxy that
counts the bytes it sends, can hold them to a bandwidth, and can fail requests on purpose
(a 503, a reset connection, no answer).

    with S3Server() as s3:          # moto_server, started and ready (its "Running on" line)
        env = s3.env                # AWS_ENDPOINT_URL (the proxy) and test credentials
        s3.proxy.rate = 50e6        # bytes/s, all connections together (None: no limit)
        s3.proxy.fail(["503", "reset"])  # the next two requests
        s3.proxy.sent               # body bytes sent to clients by GET
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.rate: float | None = None  # bytes/s over all connections
        self.sent = 0  # body bytes of GET responses
        self.requests = 0
        self.faults: list[str] = []
        self.lock = threading.Lock()
        self._next_free = time.monotonic()
        self.hung = threading.Event()  # set when a request is left without an answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fail(self, faults: list[str]) -> None:
        """The next requests fail, one fault each: ``"503"``, ``"reset"`` or ``"hang"``; with
        `` range`` added (``"503 range"``), the next ranged GET (reads of frames)."""
        with self.lock:
            self.faults.extend(faults)

    def throttle(self, n: int) -> None:
        """Wait until ``n`` more bytes fit the bandwidth (a token bucket over all clients)."""
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self._next_free)
            self._next_free = start + n / self.rate
        delay = start + n / self.rate - now
        if delay > 0:
            time.sleep(delay)  # the link's speed: what the proxy is for, not a test's wait


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _any(self) -> None:
        body = self._body()
        ranged = "range" in {k.lower() for k in self.headers}
        with self.server.lock:
            self.server.requests += 1
            fault = None
            if self.server.faults and (ranged or not self.server.faults[0].endswith(" range")):
                fault = self.server.faults.pop(0).split()[0]
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "hang":
            self.server.hung.set()
            self.rfile.read(1)  # until the client gives up and closes
            self.close_connection = True
            return
        if fault == "503":
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Content-Length"] = str(len(body))
        conn = getattr(self, "_upstream", None)
        if conn is None:
            conn = self._upstream = http.client.HTTPConnection(*self.server.upstream)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))  # HEAD: the object's
        self.end_headers()
        if self.command == "HEAD":
            return
        view = memoryview(data)
        for at in range(0, len(data), 1 << 16):
            piece = view[at : at + (1 << 16)]
            self.server.throttle(len(piece))
            self.wfile.write(piece)
        if self.command == "GET":
            with self.server.lock:
                self.server.sent += len(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any


class S3Server:
    """moto_server and its proxy, for the length of a ``with``."""

    def __init__(self):
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.proxy: Proxy | None = None

    def __enter__(self) -> S3Server:
        exe = Path(sys.executable).with_name("moto_server")
        self.process = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = []
        for line in self.process.stderr:  # ready when it says where it runs
            seen.append(line)
            if "Running on" in line:
                break
        else:
            raise RuntimeError(f"moto_server did not start: {''.join(seen)}")
        threading.Thread(target=self._drain, daemon=True).start()
        self.proxy = Proxy(("127.0.0.1", self.port))
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        return self

    def _drain(self) -> None:
        for _ in self.process.stderr:
            pass

    def __exit__(self, *exc) -> None:
        if self.proxy is not None:
            self.proxy.shutdown()
            self.proxy.server_close()
        if self.process is not None:
            self.process.terminate()
            self.process.wait()

    @property
    def env(self) -> dict[str, str]:
        """What a client needs in its environment: the endpoint (through the proxy) and
        credentials, as boto3 and the AWS CLI read them."""
        return {
            "AWS_ENDPOINT_URL": self.proxy.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def apply(self) -> dict[str, str | None]:
        """Set :attr:`env` in this process; returns what it replaced."""
        before = {k: os.environ.get(k) for k in [*self.env, "AWS_PROFILE"]}
        os.environ.pop("AWS_PROFILE", None)
        os.environ.update(self.env)
        return before

    def make_bucket(self, name: str) -> None:
        import s3fs

        before = self.apply()
        try:
            s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
        finally:
            restore(before)


def restore(before: dict[str, str | None]) -> None:
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v

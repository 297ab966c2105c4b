"""An HTTP proxy in front of the local stack's GCS emulator that injects faults into uploads: 503 answers or reset
connections, or a slow link. The tests and the benchmarks put it between the real google-cloud-storage client and
the emulator: faults at the real boundary."""

import collections
import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    """Forwards requests to `upstream`; the first `fail_uploads` resumable uploads (backups) get `mode` instead.

    mode: "503" answers Service Unavailable; "reset" reads the body then resets the connection; "corrupt" flips
    one byte of the upload body and drops the client's X-Goog-Hash, so the server stores bytes that differ from
    what the client sent (the client must notice from the checksum the server reports back).
    fail_uploads=-1 fails every upload. Non-upload requests (bucket lookups, reads) always pass. pass_first lets
    that many upload requests (the session's start, then its chunks) through before the faults begin.
    upload_mb_per_s: each upload chunk that passes is held as long as a link of that speed would take to carry it.
    rate: instead of counting, each upload request fails with this probability (a seeded generator: runs repeat);
    with mode "mixed" a failure is a 503 or a reset, half and half.
    """

    def __init__(
        self,
        upstream_port: int,
        mode: str = "503",
        fail_uploads: int = 0,
        upload_mb_per_s: float = 0,
        pass_first: int = 0,
        rate: float = 0,
        seed: int = 7,
    ):
        self.upstream_port, self.mode = upstream_port, mode
        self.fail_uploads, self.pass_first, self.upload_mb_per_s = fail_uploads, pass_first, upload_mb_per_s
        self.uploads_seen = 0
        self.rate, self.random = rate, random.Random(seed)
        self.faults_injected = 0
        self.chunks_passed = 0  # upload chunks forwarded to the emulator unharmed
        self.upload_bytes_passed = 0  # their bytes
        self.upload_bytes_refused = 0  # bytes of upload requests answered with a fault: the client sends them again
        self.media_bytes_read = 0  # object contents downloaded (alt=media): what GCS bills as egress
        self.requests: collections.Counter = collections.Counter()  # "METHOD /path" (no query) of each request
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                proxy.requests[f"{self.command} {self.path.partition('?')[0]}"] += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers)
                data_chunk = self.command == "PUT" and "upload_id=" in self.path and body
                if proxy.mode == "corrupt" and data_chunk and proxy._should_fail():
                    body = body[:-1] + bytes([body[-1] ^ 0x01])
                    headers = {k: v for k, v in headers.items() if k.lower() != "x-goog-hash"}
                elif "uploadType=resumable" in self.path and proxy.mode != "corrupt" and proxy._should_fail():
                    proxy.upload_bytes_refused += len(body)
                    mode = proxy.random.choice(["503", "reset"]) if proxy.mode == "mixed" else proxy.mode
                    if mode == "reset":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        self.close_connection = True
                        return
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if data_chunk:
                    proxy.chunks_passed += 1
                    proxy.upload_bytes_passed += len(body)
                    if proxy.upload_mb_per_s:
                        time.sleep(len(body) / (proxy.upload_mb_per_s * 1e6))
                data = forward(self, body, proxy.upstream_port, headers)
                if self.command == "GET" and "alt=media" in self.path:
                    proxy.media_bytes_read += len(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _should_fail(self) -> bool:
        self.uploads_seen += 1
        if self.rate:
            failing = self.random.random() < self.rate
            self.faults_injected += failing
            return failing
        if self.uploads_seen <= self.pass_first:
            return False
        if self.fail_uploads == -1 or self.faults_injected < self.fail_uploads:
            self.faults_injected += 1
            return True
        return False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def forward(handler: BaseHTTPRequestHandler, body: bytes, port: int, headers: dict) -> bytes:
    """The request a handler received sent on to 127.0.0.1:port, and its answer relayed back; the answer's body.

    The Host header is kept: upload URLs the emulator hands out must route back through the forwarding server.
    """
    upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    upstream.request(handler.command, handler.path, body=body, headers=headers)
    response = upstream.getresponse()
    data = response.read()
    handler.send_response(response.status)
    for key, value in response.getheaders():
        if key.lower() not in ("content-length", "transfer-encoding", "connection"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
    upstream.close()
    return data

"""A GCS endpoint whose uploads cost what they weigh: the resumable uploads of backups land in local files.

Both emulators measured here rewrite the whole object on every resumable chunk (quadratic in its size), which real
GCS does not; a stream judged against them is judged on the emulator. This server speaks the part of the JSON API
a backup's upload uses (initiate a resumable upload; chunks with Content-Range, appended to a file; the final
object with its size and CRC32C; then the object's metadata read, patched and deleted) and forwards everything
else (listings, manifests, buckets) to the emulator. Run it with `start_sink(emulator_port)`; it serves from a
process of its own, so it takes no CPU from the process being measured beyond what the bytes cost.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import google_crc32c

from dbpromote.localstack.fault_proxy import forward


class _Object:
    """One uploaded object: its bytes in a file, their running CRC32C, its metadata."""

    def __init__(self, folder: Path, bucket: str, name: str, metadata: dict):
        self.bucket, self.name, self.metadata = bucket, name, metadata
        self.path = folder / uuid.uuid4().hex
        self.file = self.path.open("wb")
        self.crc, self.size, self.generation, self.finished = google_crc32c.Checksum(), 0, "0", False

    def append(self, data: bytes) -> None:
        self.file.write(data)
        self.crc.update(data)
        self.size += len(data)

    def finish(self) -> None:
        self.file.close()
        self.finished, self.generation = True, str(uuid.uuid4().int % 10**15)

    def resource(self) -> dict:
        return {
            "kind": "storage#object",
            "bucket": self.bucket,
            "name": self.name,
            "id": f"{self.bucket}/{self.name}/{self.generation}",
            "size": str(self.size),
            "crc32c": base64.b64encode(self.crc.digest()).decode(),
            "generation": self.generation,
            "metageneration": "1",
            "metadata": self.metadata,
        }


def _serve(emulator_port: int, ready) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dbpromote-sink-"))
    uploads: dict[str, _Object] = {}  # by upload id
    objects: dict[tuple[str, str], _Object] = {}  # finished ones, by (bucket, name)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _object(self, path: str) -> _Object | None:
            """The finished object a /storage/v1/b/BUCKET/o/NAME path names, if it is one of ours."""
            parts = path.split("/", 6)  # '', storage, v1, b, BUCKET, o, NAME
            if len(parts) == 7 and parts[1:4] == ["storage", "v1", "b"] and parts[5] == "o":
                return objects.get((parts[4], unquote(parts[6])))
            return None

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if query.get("uploadType") == ["resumable"] and "upload_id" not in query and self.command == "POST":
                return self._initiate(url.path, body)
            if "upload_id" in query and self.command == "PUT":
                return self._chunk(query["upload_id"][0], body)
            with lock:
                found = self._object(url.path)
            if found is not None:
                return self._metadata(found, body)
            forward(self, body, emulator_port, dict(self.headers))

        def _initiate(self, path: str, body: bytes) -> None:
            bucket = path.split("/")[5]  # /upload/storage/v1/b/BUCKET/o
            resource = json.loads(body or b"{}")
            upload_id = uuid.uuid4().hex
            with lock:
                uploads[upload_id] = _Object(folder, bucket, resource["name"], resource.get("metadata") or {})
            location = f"http://{self.headers['Host']}{path}?uploadType=resumable&upload_id={upload_id}"
            self._reply(200, {}, {"Location": location})

        def _chunk(self, upload_id: str, body: bytes) -> None:
            upload = uploads[upload_id]
            upload.append(body)
            total = self.headers.get("Content-Range", "").rsplit("/", 1)[-1]
            if total == "*":  # more to come
                self._reply(308, None, {"Range": f"bytes=0-{upload.size - 1}"} if upload.size else {})
                return
            upload.finish()
            with lock:
                objects[(upload.bucket, upload.name)] = uploads.pop(upload_id)
            self._reply(200, upload.resource())

        def _metadata(self, found: _Object, body: bytes) -> None:
            if self.command == "GET":
                return self._reply(200, found.resource())
            if self.command == "PATCH":
                found.metadata = json.loads(body or b"{}").get("metadata") or found.metadata
                return self._reply(200, found.resource())
            if self.command == "DELETE":
                with lock:
                    objects.pop((found.bucket, found.name), None)
                found.path.unlink(missing_ok=True)
                return self._reply(204)
            self._reply(405, {"error": {"message": f"{self.command} not served by the sink"}})

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.put(server.server_address[1])
    server.serve_forever()


def start_sink(emulator_port: int) -> str:
    """The sink's endpoint (for STORAGE_EMULATOR_HOST), serving from a daemon process until this one ends."""
    ready = multiprocessing.Queue()
    multiprocessing.Process(target=_serve, args=(emulator_port, ready), daemon=True).start()
    return f"http://127.0.0.1:{ready.get(timeout=30)}"

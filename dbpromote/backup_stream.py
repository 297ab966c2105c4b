"""pg_dump -> zstd -> a new GCS object, in a process of its own: the worker's memory never holds upload chunks.

Run by dbpromote/backups.py as `python -m dbpromote.backup_stream`, one StreamRequest as a JSON line on stdin per
backup (the libpq connection in it, as PG* variables for pg_dump and pg_restore: never argv), backup after backup
until stdin closes: a fleet's lane backs its members up through one process, not one each (~0.4 s of CPU starting
one). Answers one JSON line per progress step (Progress) and one final line (Streamed or StreamFailed) a request;
both sides use the models below. Imports only the GCS client, zstandard and pydantic (no Prefect): about 50 MB
before the upload chunks. Waiting for a request, it ends after IDLE_S.

The dump is compressed in this thread while the previous chunk uploads in another one, so pg_dump never waits for
a request to finish (on GCS a chunk is a network round trip; on the emulator, a rewrite of the object so far). At
most two chunks are in memory: the one uploading and the next, complete, waiting for it. The same bytes go to a
pg_restore that reads them whole as they go up: the last chunk, which makes the object, is sent only once it has.
If the process that started it dies (an out-of-memory kill, say), the kernel ends this one with it.
"""

import contextlib
import io
import os
import queue
import select
import subprocess
import sys
import threading
import time
from typing import Annotated, Literal

import zstandard
from google.api_core import exceptions as gcs_errors
from google.cloud.storage.exceptions import DataCorruption
from pydantic import BaseModel, Field, TypeAdapter

from dbpromote.dumps import RestoreFeed
from dbpromote.gcs import gcs_client, gcs_retry
from dbpromote.lifeline import end_with_parent, tied

READ_SIZE = 1024 * 1024
PROGRESS_EVERY_S = 2.0
# How long it waits for its next request before it ends: a lane's next member comes within seconds; one left idle
# by a process that backs up once (a one-target step) does not hold ~50 MB for long. The worker sends a request
# only to one idle for less than half of it (backups.Streamers), so none ends under a request.
IDLE_S = 60.0


class StreamRequest(BaseModel):
    """What to dump where: the object (created only if absent), its metadata, pg_dump's snapshot, the chunking."""

    bucket: str
    object_name: str
    metadata: dict[str, str]
    snapshot: str
    chunk_size: int
    zstd_level: int
    credentials_block: str = ""  # the target's GcpCredentials block, if it names one
    libpq: dict[str, str] = Field(default_factory=dict, repr=False)  # the target's PG* variables (a password too)


class Progress(BaseModel):
    kind: Literal["progress"] = "progress"
    dumped: int


class Streamed(BaseModel):
    """The whole dump is in the object, and pg_restore read it whole on its way up: the CRC32C (base64, as GCS
    reports it) and size of the bytes sent, which are the bytes pg_restore read."""

    kind: Literal["streamed"] = "streamed"
    crc32c: str
    size: int


class StreamFailed(BaseModel):
    """No object was made. pg_dump: the dump failed (its stderr); unreadable: pg_restore could not read what was
    dumped (its stderr); corruption: GCS stored another checksum; gcs: the upload failed after its retries."""

    kind: Literal["failed"] = "failed"
    reason: Literal["pg_dump", "unreadable", "corruption", "gcs"]
    message: str = ""


ANSWER = TypeAdapter(Annotated[Progress | Streamed | StreamFailed, Field(discriminator="kind")])


class PgDumpFailed(Exception):
    pass


class Cancelled(Exception):
    """Raised into the upload when the dump side gave up: the object is never finalised."""


class DumpUnreadable(Exception):
    """pg_restore could not read the dump whole (its stderr): it never becomes an object."""


class Tee:
    """Every write goes to each of the sinks in turn."""

    def __init__(self, *sinks):
        self.sinks = sinks

    def write(self, data: bytes) -> int:
        for sink in self.sinks:
            sink.write(data)
        return len(data)


def say(message: BaseModel) -> None:
    sys.stdout.write(message.model_dump_json() + "\n")
    sys.stdout.flush()


class Chunks:
    """Compressed bytes cut into chunks of exactly `size`, handed one at a time from the writer to the upload.

    The writing side is a file-like `write`; the reading side is the stream a resumable upload reads (`tell`,
    `read(size)`), in another thread. A chunk is handed over whole and never copied (a BytesIO gives up its own
    buffer), and the writer waits until the upload has taken it before filling the next: two chunks in memory at
    most, the one uploading and the next.
    """

    def __init__(self, size: int):
        self.size, self.sent = size, 0
        self.filling = io.BytesIO()
        self.ready: queue.Queue = queue.Queue(maxsize=1)
        self.taken = threading.Semaphore(0)
        self.failed: BaseException | None = None  # the upload's error: the writer raises it at its next chunk

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            room = self.size - self.filling.tell()
            self.filling.write(view[:room])
            view = view[room:]
            if self.filling.tell() == self.size:
                self._hand_over()
        return len(data)

    def finish(self) -> None:
        """What remains, possibly nothing, is the last chunk: shorter than `size`, it ends the upload."""
        self._hand_over()

    def cancel(self) -> None:
        with contextlib.suppress(queue.Empty):
            self.ready.get_nowait()
        self.ready.put(Cancelled())

    def _hand_over(self) -> None:
        chunk, self.filling = self.filling.getvalue(), io.BytesIO()
        self.ready.put(chunk)  # the slot is free: the previous chunk was taken before this one was filled
        del chunk
        while not self.taken.acquire(timeout=0.2):
            if self.failed:
                raise self.failed

    def tell(self) -> int:
        return self.sent

    def read(self, size: int) -> bytes:
        assert size == self.size, "the upload reads whole chunks"
        chunk = self.ready.get()
        if isinstance(chunk, Cancelled):
            raise chunk
        self.taken.release()
        self.sent += len(chunk)
        return chunk


def upload_chunks(upload, transport, chunks: Chunks) -> None:
    """The resumable upload's loop (each chunk retried on transient errors by the client); runs in its own thread."""
    try:
        while not upload.finished:
            upload.transmit_next_chunk(transport)
    except BaseException as error:  # handed to the writer, which raises it
        chunks.failed = error


def stream(request: StreamRequest) -> Streamed | StreamFailed:
    """pg_dump in the request's snapshot, compressed, into a new object, read whole by pg_restore on its way up;
    the object exists only if all went up and pg_restore read all of it."""
    client = gcs_client(request.credentials_block)
    blob = client.bucket(request.bucket).blob(request.object_name)
    blob.metadata = request.metadata
    chunks = Chunks(request.chunk_size)
    # The verification a second download used to make, made on the bytes as they go: no egress, no second pass.
    env = os.environ | request.libpq
    verifier = RestoreFeed(["--file=/dev/null"], env)
    dump = subprocess.Popen(
        tied(["pg_dump", "--format=custom", "--compress=0", "--no-sync", f"--snapshot={request.snapshot}"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    upload = uploader = transport = None
    try:
        # The client's own resumable upload (what `blob.open("wb")` runs), fed by `chunks` from another thread.
        upload, transport = blob._initiate_resumable_upload(
            client,
            chunks,
            None,
            None,
            chunk_size=request.chunk_size,
            if_generation_match=0,
            checksum="crc32c",
            retry=gcs_retry(),
        )
        uploader = threading.Thread(target=upload_chunks, args=(upload, transport, chunks), daemon=True)
        uploader.start()
        compress_dump(dump, Tee(chunks, verifier), request.zstd_level)
        read = verifier.finish()
        if not read.ok:  # before the last chunk: a dump pg_restore cannot read never becomes an object
            raise DumpUnreadable(read.stderr or "the compressed stream is corrupt")
        chunks.finish()
        uploader.join()
        if chunks.failed:
            raise chunks.failed
    except BaseException as error:
        if upload is not None and not upload.finished:
            chunks.cancel()
            uploader.join()
            with contextlib.suppress(Exception):
                transport.delete(upload.upload_url)  # as `blob.open("wb")` does: the session is dropped
        return failure(error)
    finally:
        for process in (dump, verifier.restore):
            if process.poll() is None:
                process.kill()
                process.wait()
    return Streamed(crc32c=read.crc32c, size=read.size_bytes)


def compress_dump(dump: subprocess.Popen, writer: Tee, level: int) -> None:
    """pg_dump's output through zstd into `writer`, telling progress; raises if the dump failed.

    Level 1 in this thread: pg_dump and its server keep the other core busy (see dbpromote/backups.py).
    """
    with zstandard.ZstdCompressor(level=level).stream_writer(writer, closefd=False) as compressed:
        dumped, said = 0, time.monotonic()
        while chunk := dump.stdout.read(READ_SIZE):
            compressed.write(chunk)
            dumped += len(chunk)
            if time.monotonic() - said > PROGRESS_EVERY_S:
                said = time.monotonic()
                say(Progress(dumped=dumped))
    if dump.wait() != 0:  # before the last chunk: a failed dump never becomes an object
        raise PgDumpFailed(dump.stderr.read().decode(errors="replace").strip())


def failure(error: BaseException) -> StreamFailed:
    """The answer for an error that stopped the stream; anything unforeseen is raised (a traceback on stderr)."""
    if isinstance(error, DumpUnreadable):
        return StreamFailed(reason="unreadable", message=str(error))
    if isinstance(error, PgDumpFailed):
        return StreamFailed(reason="pg_dump", message=str(error))
    if isinstance(error, DataCorruption):
        return StreamFailed(reason="corruption")
    if isinstance(error, gcs_errors.GoogleAPIError):
        return StreamFailed(reason="gcs", message=str(error))
    if isinstance(error, OSError):  # requests' connection errors are OSErrors; GCS gave up retrying
        return StreamFailed(reason="gcs", message=type(error).__name__)
    raise error


def serve() -> None:
    """A stream for each request line, until stdin closes or none comes for IDLE_S."""
    while select.select([sys.stdin], [], [], IDLE_S)[0]:
        line = sys.stdin.readline()
        if not line:
            return
        say(stream(StreamRequest.model_validate_json(line)))


if __name__ == "__main__":
    end_with_parent()
    serve()

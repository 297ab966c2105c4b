"""A zstd-compressed dump read by pg_restore as it is written: the read-back of a stored backup as it downloads,
and the verification of a new one as it uploads. Standard library, zstandard and pydantic only: the backup stream's
process imports it and stays small."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading

import zstandard
from pydantic import BaseModel

from dbpromote.gcs import ChecksummingWriter
from dbpromote.lifeline import tied

# Decompressed output is handed on by the MiB.
READ_SIZE = 1024 * 1024


class Readback(BaseModel):
    """A stored backup streamed, decompressed, into a pg_restore: what pg_restore said and what was read."""

    returncode: int
    stderr: str
    complete: bool
    crc32c: str
    size_bytes: int

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.complete


class _Decompressing:
    """Decompresses what it is given into pg_restore's stdin, in a thread of its own so that the download goes on
    meanwhile, until the stream is corrupt or pg_restore stops; `close` waits for the last byte."""

    def __init__(self, stdin):
        self.corrupt, self.stopped = False, False
        # The writer passes output on in pieces of READ_SIZE: a highly compressible dump never inflates in memory.
        self.decompress = zstandard.ZstdDecompressor().stream_writer(stdin, write_size=READ_SIZE, closefd=False)
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.queue: queue.Queue = queue.Queue(maxsize=4)  # pieces of READ_SIZE: at most 4 MiB ahead
        self.thread = threading.Thread(target=self._decompress, daemon=True)
        self.thread.start()

    def write(self, data: bytes) -> None:
        # The download hands over 8 KiB at a time: passed on by the MiB, a queue operation costs nothing.
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= READ_SIZE:
            self._pass_on()

    def close(self) -> None:
        self._pass_on()
        self.queue.put(None)
        self.thread.join()

    def _pass_on(self) -> None:
        if self.pending:
            self.queue.put(b"".join(self.pending))
            self.pending, self.pending_size = [], 0

    def _decompress(self) -> None:
        while (data := self.queue.get()) is not None:
            if self.corrupt or self.stopped:
                continue  # the download goes on: the checksum still covers every stored byte
            try:
                self.decompress.write(data)
            except zstandard.ZstdError:
                self.corrupt = True
            except BrokenPipeError:
                self.stopped = True  # pg_restore stopped reading; its exit status says why


class RestoreFeed:
    """pg_restore RESTORE_ARGS reading a zstd-compressed dump as it is written here, every byte checksummed:
    a stored backup as it downloads, or a new one as it uploads. `finish` waits for the last byte."""

    def __init__(self, restore_args: list[str], env: dict[str, str]):
        self.restore = subprocess.Popen(
            tied(["pg_restore", *restore_args]), stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.decompressing = _Decompressing(self.restore.stdin)
        self.feed = ChecksummingWriter(self.decompressing)

    def write(self, data: bytes) -> int:
        return self.feed.write(data)

    def finish(self) -> Readback:
        """What pg_restore said once it read all it was given, and the CRC32C and size of what it was given."""
        self.decompressing.close()
        with contextlib.suppress(BrokenPipeError):
            self.restore.stdin.close()
        stderr = self.restore.stderr.read().decode(errors="replace").strip()
        return Readback(
            returncode=self.restore.wait(),
            stderr=stderr,
            complete=not self.decompressing.corrupt,
            crc32c=self.feed.crc32c,
            size_bytes=self.feed.size,
        )

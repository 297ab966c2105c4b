"""pg_dump -> zstd -> a new GCS object, in a process of its own: the worker's memory never holds upload chunks.

Run by tasks/backup.py as `python backup_stream.py` with the libpq connection in PG* variables (never argv) and
a JSON request on stdin: bucket, object_name, metadata, snapshot, chunk_size, zstd_level. Prints one JSON line per
progress step ({"dumped": bytes}) and one final line: {"ok": true, "crc32c", "size"} or {"ok": false, "kind",
"message"}. Imports only the GCS client and zstandard (no Prefect): about 50 MB before the upload chunk.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zstandard  # noqa: E402
from google.api_core import exceptions as gcs_errors  # noqa: E402
from google.resumable_media import DataCorruption  # noqa: E402

from tasks.gcs import ChecksummingWriter, gcs_client, gcs_retry  # noqa: E402

READ_SIZE = 1024 * 1024
PROGRESS_EVERY_S = 2.0


class PgDumpFailed(Exception):
    pass


def say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def stream(request: dict) -> dict:
    blob = gcs_client().bucket(request["bucket"]).blob(request["object_name"])
    blob.metadata = request["metadata"]
    dump = subprocess.Popen(
        ["pg_dump", "--format=custom", "--compress=0", "--no-sync", f"--snapshot={request['snapshot']}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with blob.open(
            "wb", chunk_size=request["chunk_size"], checksum="crc32c", if_generation_match=0, retry=gcs_retry()
        ) as upload:
            writer = ChecksummingWriter(upload)
            # Level 1 in this thread: pg_dump and its server keep the other cores busy (see tasks/backup.py).
            compressor = zstandard.ZstdCompressor(level=request["zstd_level"])
            with compressor.stream_writer(writer, closefd=False) as compressed:
                dumped, said = 0, time.monotonic()
                while chunk := dump.stdout.read(READ_SIZE):
                    compressed.write(chunk)
                    dumped += len(chunk)
                    if time.monotonic() - said > PROGRESS_EVERY_S:
                        said = time.monotonic()
                        say({"dumped": dumped})
            if dump.wait() != 0:
                # Raising inside the writer cancels the resumable upload: no partial object appears.
                raise PgDumpFailed(dump.stderr.read().decode(errors="replace").strip())
    except PgDumpFailed as error:
        return {"ok": False, "kind": "pg_dump", "message": str(error)}
    except DataCorruption:
        return {"ok": False, "kind": "corruption", "message": ""}
    except gcs_errors.GoogleAPIError as error:
        return {"ok": False, "kind": "gcs", "message": str(error)}
    except OSError as error:  # requests' connection errors are OSErrors; GCS gave up retrying
        return {"ok": False, "kind": "gcs", "message": type(error).__name__}
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait()
    return {"ok": True, "crc32c": writer.crc32c, "size": writer.size}


if __name__ == "__main__":
    say(stream(json.loads(sys.stdin.read())))

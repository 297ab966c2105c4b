"""Benchmark: our streamed, verified backup into the emulator against bare pg_dump, on the local stack.

Usage: .venv/bin/python benchmarks/backup.py [--keep] [--rounds N] [--tenants N --rows R --text-bytes B]
(stack up first). Defaults seed ~0.5 GB; the issue's goal is measured at >= 1 GB (--tenants 40 --rows 2000
--text-bytes 600). Goals: ours <= 0.5x bare `pg_dump -Fc`, <= 1.5x bare `pg_dump -Fc -Z0`, peak RSS of our
backup's streaming process <= 150 MB. The three alternate in each round; medians are compared. Every backup but
the last is deleted (benchmarks/restore.py --keep restores the last).

--upload-mb-per-s R puts a link of R MB/s between our backup and the emulator (tests/fault_proxy.py, in a process
of its own), as a remote bucket would: then the uploads are the floor, and the dump should hide behind them.
"""

import argparse
import multiprocessing
import os
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path

from common import add_seed_arguments, emulator_cpu_seconds, local_stack, seeded_database, stack

DB = "bench_backup"


def timed(command: list[str], env: dict) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


class StreamerPeak(threading.Thread):
    """The peak RSS of tasks/backup_stream.py's processes, sampled from /proc (VmHWM, never lower than any sample).

    Not getrusage: a child's ru_maxrss starts at its parent's peak (Linux carries the pre-exec high-water mark
    across a vfork + exec), so it would report this Prefect-laden process rather than the streamer.
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kb, self.stopping = 0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    if "backup_stream.py" not in (status.parent / "cmdline").read_text():
                        continue
                    hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM"))
                except (OSError, StopIteration):
                    continue  # gone meanwhile
                self.peak_kb = max(self.peak_kb, int(hwm.split()[1]))

    def stop(self) -> float:
        self.stopping.set()
        self.join()
        return self.peak_kb / 1024 if self.peak_kb else float("nan")


def serve_link(mb_per_s: float, endpoints) -> None:
    from tests.fault_proxy import FaultProxy

    endpoints.put(FaultProxy(stack.ports["gcs"], fail_uploads=0, upload_mb_per_s=mb_per_s).endpoint)
    threading.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser, 20, 2000, 600, "reuse the seeded database if it exists")
    parser.add_argument("--rounds", type=int, default=3, help="the three alternate; medians are compared")
    parser.add_argument("--upload-mb-per-s", type=float, default=0, help="our uploads cross a link this fast")
    args = parser.parse_args()
    url, size = seeded_database(DB, args.tenants, args.rows, args.text_bytes, args.keep)

    from dbpromote.tasks.backup import backup_to_gcs

    import tasks.backup
    from dbpromote.backups import delete_backup
    from dbpromote.config import DatabaseTarget
    from dbpromote.gcs import gcs_client
    from dbpromote.postgres import libpq_env

    # Our time splits into the stream (dump, compress, upload) and the read-back verification.
    verify_s = []
    verify = tasks.backup._verify

    def timed_verify(*args):
        started = time.monotonic()
        verify(*args)
        verify_s.append(time.monotonic() - started)

    tasks.backup._verify = timed_verify

    target = DatabaseTarget(url=url, bucket=local_stack.BUCKET, prefix="benchmarks")
    env = libpq_env(target)
    if args.upload_mb_per_s:  # in a process of its own: the link costs this process neither CPU nor memory
        endpoints = multiprocessing.Queue()
        multiprocessing.Process(target=serve_link, args=(args.upload_mb_per_s, endpoints), daemon=True).start()
        os.environ["STORAGE_EMULATOR_HOST"] = endpoints.get(timeout=30)
    gzip, z0, ours, emulator_cpu = [], [], [], []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    streamer_peak = StreamerPeak()
    previous = None
    for _ in range(args.rounds):
        gzip.append(timed(["pg_dump", "-Fc", "--no-sync"], env))
        z0.append(timed(["pg_dump", "-Fc", "-Z0", "--no-sync"], env))
        cpu_before = emulator_cpu_seconds()
        started = time.monotonic()
        backup = backup_to_gcs.fn(target, "bench")
        ours.append(time.monotonic() - started)
        emulator_cpu.append(emulator_cpu_seconds() - cpu_before)
        if previous:
            delete_backup(gcs_client().bucket(local_stack.BUCKET), previous.object_name)
        previous = backup
        print(f"round: -Fc {gzip[-1]:.1f} s, -Z0 {z0[-1]:.1f} s, ours {ours[-1]:.1f} s", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    streamer_mb = streamer_peak.stop()

    gzip_s, z0_s, ours_s, verify_med = (statistics.median(v) for v in (gzip, z0, ours, verify_s))
    stream_s = statistics.median(o - v for o, v in zip(ours, verify_s, strict=True))
    print(
        f"database {size / 1e9:.2f} GB; backup object {backup.size_bytes / 1e6:.0f} MB; medians of {args.rounds} rounds"
    )
    print(f"bare pg_dump -Fc      {gzip_s:7.1f} s  (baseline)")
    print(f"bare pg_dump -Fc -Z0  {z0_s:7.1f} s  {z0_s / gzip_s:5.2f}x baseline")
    print(
        f"dbpromote backup      {ours_s:7.1f} s  {ours_s / gzip_s:5.2f}x baseline (goal <= 0.50), "
        f"{ours_s / z0_s:5.2f}x the -Z0 limit (goal <= 1.50), all included"
    )
    print(
        f"  of which stream     {stream_s:7.1f} s  {stream_s / gzip_s:5.2f}x baseline, {stream_s / z0_s:5.2f}x the "
        "-Z0 limit (dump, zstd, upload into the emulator)"
    )
    print(f"  and verification    {verify_med:7.1f} s  (download, decompress, full pg_restore read)")
    if args.upload_mb_per_s:
        # Each chunk crosses the link, then the emulator stores it (its CPU time, one request at a time): that
        # chain is the floor. A dump waiting for every chunk's upload would take the chain plus the dump.
        chain_s = backup.size_bytes / (args.upload_mb_per_s * 1e6) + statistics.median(emulator_cpu)
        print(
            f"  over a {args.upload_mb_per_s:g} MB/s link the uploads alone (transfer, then the emulator) take "
            f"{chain_s:.1f} s: the stream is {stream_s / chain_s:.2f}x that, {stream_s / (chain_s + z0_s):.2f}x "
            "a dump that waits for each upload"
        )
    print(
        f"  the emulator's own server used {statistics.median(emulator_cpu):.1f} s of CPU of this machine's 2 cores "
        "during ours (real GCS stores elsewhere)"
    )
    print(
        f"peak RSS: streaming process {streamer_mb:.0f} MB (goal <= 150); the worker process {peak_mb:.0f} MB "
        f"({rss_before / 1024:.0f} MB before the backups: Prefect and the flows, not the data)"
    )


if __name__ == "__main__":
    main()

"""Benchmark: our streamed, verified backup into the emulator against bare pg_dump, on the local stack.

Usage: .venv/bin/python benchmarks/backup.py [--tenants N --rows R --text-bytes B]   (stack up first)
Defaults seed ~0.5 GB; the issue's goal is measured at >= 1 GB (--tenants 40 --rows 2000 --text-bytes 600).
Goals: ours <= 0.5x bare `pg_dump -Fc`, <= 1.5x bare `pg_dump -Fc -Z0`, peak RSS of our backup <= 150 MB.
"""

import argparse
import resource
import subprocess
import time

from common import add_seed_arguments, local_stack, seeded_database

DB = "bench_backup"


def timed(command: list[str], env: dict) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser, 20, 2000, 600, "reuse the seeded database if it exists")
    args = parser.parse_args()
    url, size = seeded_database(DB, args.tenants, args.rows, args.text_bytes, args.keep)

    import tasks.backup
    from dbpromote.config import DatabaseTarget
    from tasks.backup import backup_to_gcs, libpq_env

    # Split our time into the stream (dump, compress, upload) and the read-back verification.
    verify_s = []
    verify = tasks.backup._verify

    def timed_verify(*args):
        started = time.monotonic()
        verify(*args)
        verify_s.append(time.monotonic() - started)

    tasks.backup._verify = timed_verify

    target = DatabaseTarget(url=url, bucket=local_stack.BUCKET, prefix="benchmarks")
    env = libpq_env(target)
    gzip_s = timed(["pg_dump", "-Fc", "--no-sync"], env)
    z0_s = timed(["pg_dump", "-Fc", "-Z0", "--no-sync"], env)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    backup = backup_to_gcs.fn(target, "bench")
    ours_s = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The largest process the backup ran: the streaming process (dump, compression, upload), pg_dump, pg_restore.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    streamer_mb = children / 1024 if children > children_before else float("nan")
    print(f"database {size / 1e9:.2f} GB; backup object {backup.size_bytes / 1e6:.0f} MB")
    print(f"bare pg_dump -Fc      {gzip_s:7.1f} s  (baseline)")
    print(f"bare pg_dump -Fc -Z0  {z0_s:7.1f} s  {z0_s / gzip_s:5.2f}x baseline")
    stream_s = ours_s - verify_s[0]
    print(
        f"dbpromote backup      {ours_s:7.1f} s  {ours_s / gzip_s:5.2f}x baseline (goal <= 0.50), "
        f"{ours_s / z0_s:5.2f}x the -Z0 limit (goal <= 1.50), all included"
    )
    print(
        f"  of which stream     {stream_s:7.1f} s  {stream_s / gzip_s:5.2f}x baseline, {stream_s / z0_s:5.2f}x the "
        "-Z0 limit (dump, zstd, upload into the emulator)"
    )
    print(f"  and verification    {verify_s[0]:7.1f} s  (download, decompress, full pg_restore read)")
    print(
        f"peak RSS: streaming process {streamer_mb:.0f} MB (goal <= 150); the worker process {peak_mb:.0f} MB "
        f"({rss_before / 1024:.0f} MB before the backup: Prefect and the flows, not the data)"
    )


if __name__ == "__main__":
    main()

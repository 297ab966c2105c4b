"""Benchmark: our restore of a backup from the emulator against bare pg_restore of the same dump from a local file.

Usage: .venv/bin/python benchmarks/restore.py [--keep] [--tenants N --rows R --text-bytes B]   (stack up first)
The goal is measured on the >= 1 GB sample (--tenants 40 --rows 2000 --text-bytes 600; --keep reuses the
database benchmarks/backup.py seeded). Goal: ours <= 1.2x bare `pg_restore -d DB dump` (single job, like ours).
Ours includes everything a user waits for: download, decompression, pg_restore, ANALYZE and the check of every
table's row count and the migration state against the backup's manifest.
"""

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import zstandard
from common import add_seed_arguments, emulator_cpu_seconds, local_stack, seeded_database

DB = "bench_backup"
BASELINE_DB = "bench_restore_baseline"


def main() -> None:
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser, 40, 2000, 600, "reuse the seeded database and its newest backup")
    parser.add_argument("--rounds", type=int, default=3, help="baseline and ours alternate; medians are compared")
    args = parser.parse_args()
    url, size = seeded_database(DB, args.tenants, args.rows, args.text_bytes, args.keep)

    from dbpromote.backups import list_backups, take_backup
    from dbpromote.config import DatabaseTarget
    from dbpromote.gcs import gcs_client
    from dbpromote.postgres import libpq_env, server_connection
    from dbpromote.restores import drop_restored, restore_into_new_database

    target = DatabaseTarget(url=url, bucket=local_stack.BUCKET, prefix="benchmarks").named("bench")
    bucket = gcs_client().bucket(local_stack.BUCKET)
    existing = [b for b in list_backups(target) if bucket.blob(b.manifest_name).exists()] if args.keep else []
    backup = existing[0] if existing else take_backup(target, run_id="")
    print(f"database {size / 1e9:.2f} GB; backup {backup.uri} ({backup.size_bytes / 1e6:.0f} MB)", flush=True)

    env = libpq_env(target)
    bare, ours, emulator_cpu = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        dump = Path(folder) / "bench.dump"
        with dump.open("wb") as out:  # the same dump as a local file: the baseline reads it straight from disk
            blob = bucket.blob(backup.object_name)
            with blob.open("rb") as stored, zstandard.ZstdDecompressor().stream_reader(stored) as plain:
                while chunk := plain.read(1 << 20):
                    out.write(chunk)
        for _ in range(args.rounds):
            with server_connection(target) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {BASELINE_DB}")
                conn.execute(f"CREATE DATABASE {BASELINE_DB}")
            started = time.monotonic()
            restore = ["pg_restore", "--exit-on-error", f"--dbname={BASELINE_DB}", str(dump)]
            subprocess.run(restore, env=env, check=True)
            bare.append(time.monotonic() - started)
            with server_connection(target) as conn:
                conn.execute(f"DROP DATABASE {BASELINE_DB}")

            cpu_before = emulator_cpu_seconds()
            started = time.monotonic()
            restored = restore_into_new_database(target, backup, "bench_restore_ours")
            ours.append(time.monotonic() - started)
            emulator_cpu.append(emulator_cpu_seconds() - cpu_before)
            drop_restored(target, restored.database)
            print(f"round: bare {bare[-1]:.1f} s, ours {ours[-1]:.1f} s", flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    print(f"medians of {args.rounds} rounds")
    print(f"bare pg_restore from a local file   {bare_s:7.1f} s  (baseline)")
    print(
        f"dbpromote restore from the bucket   {ours_s:7.1f} s  {ours_s / bare_s:5.2f}x baseline (goal <= 1.20); "
        f"checked {restored.tables} tables, {restored.rows} rows"
    )
    print(
        f"  the emulator's own server used {statistics.median(emulator_cpu):.1f} s of CPU of this machine's 2 cores "
        "during ours (real GCS serves from elsewhere)"
    )
    print(f"peak RSS of this process {peak_mb:.0f} MB (includes the backup taken when none was kept)")


if __name__ == "__main__":
    main()

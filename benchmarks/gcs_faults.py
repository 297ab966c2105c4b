"""Benchmark: backups through GCS faults. 20 backups of the staging database while a proxy in front of the GCS
emulator answers 10 % of upload requests with a 503 or a reset connection (the real google-cloud-storage client
retries them); the same 20 backups without faults are the baseline, measured in the same run.

Usage: .venv/bin/python benchmarks/gcs_faults.py [--rounds 20] [--rate 0.10] [--keep]   (local stack up first)
Data: the sample project seeded with 4 tenants x 5,000 rows of text (compresses like users' data, not like random
bytes), in bench_faults on the staging server, backed up as a target of its own.
Figures: backups completed after retries, backups that failed cleanly (a BackupError naming the fix, nothing
listed), partial objects left in the bucket or listed (goal 0), bytes re-sent on the wire over what was stored,
time against the fault-free run.
"""

import argparse
import os
import time

from common import add_seed_arguments, seeded_database, stack  # points this process at the local stack

from dbpromote import backups as backup_library
from dbpromote.backups import list_backups
from dbpromote.config import load_target
from dbpromote.errors import BackupError
from dbpromote.gcs import gcs_client
from dbpromote.localstack.fault_proxy import FaultProxy

CHUNK = 256 * 1024  # a dozen upload requests a backup: enough requests for a 10 % rate to land


def backups(target, rounds: int) -> tuple[list, list, float]:
    """`rounds` backups of staging; the completed ones, the failures' sentences, the seconds taken."""
    completed, failed = [], []
    started = time.monotonic()
    for _ in range(rounds):
        try:
            completed.append(backup_library.take_backup(target, run_id=""))
        except BackupError as error:
            failed.append(str(error))
    return completed, failed, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rate", type=float, default=0.10)
    add_seed_arguments(parser, tenants=4, rows=5000, text_bytes=400, keep_help="reuse bench_faults as seeded")
    args = parser.parse_args()
    backup_library.CHUNK_SIZE = CHUNK
    _, size = seeded_database("bench_faults", args.tenants, args.rows, args.text_bytes, args.keep)
    print(f"bench_faults: {size / 1e6:.1f} MB on disk, uploaded in chunks of {CHUNK // 1024} KiB")
    target = load_target("staging").on_database("bench_faults")
    before = {b.object_name for b in list_backups(target)}

    clean, _, baseline_s = backups(target, args.rounds)
    proxy = FaultProxy(stack.ports["gcs"], mode="mixed", rate=args.rate, seed=11)
    os.environ["STORAGE_EMULATOR_HOST"] = proxy.endpoint
    try:
        completed, failed, faulted_s = backups(target, args.rounds)
    finally:
        proxy.close()
        os.environ["STORAGE_EMULATOR_HOST"] = stack.gcs_endpoint

    names = {b.object_name for b in completed}
    dumps = [
        b
        for b in gcs_client().list_blobs(target.bucket, prefix=f"{target.prefix}/staging/")
        if b.name.endswith(".dump.zst")
    ]
    partial = [b.name for b in dumps if (b.metadata or {}).get("verified") != "true"]
    listed = {b.object_name for b in list_backups(target)} - before - {b.object_name for b in clean}
    unreported = listed - names
    stored = sum(b.size_bytes for b in completed)
    resent = proxy.upload_bytes_refused  # every byte of a faulted request goes on the wire again
    print(
        f"{args.rounds} backups at {args.rate:.0%} injected faults (503s and resets), {proxy.uploads_seen} upload "
        f"requests, {proxy.faults_injected} faults"
    )
    print(
        f"  completed after retries: {len(completed)}; failed cleanly: {len(failed)}; partial objects: "
        f"{len(partial)}; listed but not reported: {len(unreported)}"
    )
    print(
        f"  bytes stored {stored:,}; re-sent after a fault {resent:,} ({resent / max(stored, 1):.1%} of what was "
        "stored)"
    )
    print(f"  time: {faulted_s:.1f} s with faults, {baseline_s:.1f} s without ({faulted_s / baseline_s:.2f}x)")
    accounted = len(completed) + sum("run again" in message for message in failed)
    goals = [
        ("partial-objects", f"{len(partial) + len(unreported)}", "0", not partial and not unreported),
        ("backups-accounted", f"{accounted} of {args.rounds}", f"{args.rounds}", accounted == args.rounds),
        ("faults-injected", f"{proxy.faults_injected}", "> 0", proxy.faults_injected > 0),
    ]
    for name, figure, bound, met in goals:
        print(f"goal {name}: {figure} (goal {bound}): {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()

"""Benchmark: a backup as the user gets it against the pg_dump they used to type, on data like theirs.

Usage: .venv/bin/python benchmarks/backup.py [--keep] [--rounds N] [--scale S --text-mb M | --tenants N ...]
(stack up first). The default data set is pgbench's tables (scale S) plus a table of M MB of random hex text, so
that compression is CPU-bound as on real data (defaults: about 1.1 GB); `--tenants N` seeds the sample project
instead, whose text compresses far better than real data. Each round, in turn:

- bare `pg_dump -Fc` (the baseline) and bare `pg_dump -Fc -Z0` (the limit: the dump alone);
- our task alone (its work, dbpromote.backups.take_backup: dump, zstd, pg_restore reading the bytes as they go
  up, the upload, the stored checksum compared), into the GCS emulator and into a linear-cost sink
  (benchmarks/gcs_sink.py);
- `dbpromote backup TARGET --wait` as a user types it (trigger, worker, flow process, the task, the CLI noticing
  the end), into the emulator and, with the backup deployment's job variables pointing its runs at the sink, into
  the sink.

The emulator rewrites the object on every chunk (cost quadratic in its size), real GCS does not: the goals are
judged on the sink and the emulator's figures are printed beside them. Goals: the user's command <= 0.5x bare
`-Fc`; the task alone <= 0.4x; peak RSS of the streaming process <= 150 MB. Medians of the rounds.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import add_seed_arguments, database, emulator_cpu_seconds, local_stack, seeded_database, stack
from gcs_sink import start_sink

DB = "bench_backup"
TARGET = "bench-backup"


def seed_random_text(scale: int, text_mb: int, keep: bool) -> tuple[str, int]:
    """pgbench's tables at `scale` plus `text_mb` MB of random hex text, in database DB on the staging server."""
    import psycopg
    from psycopg import sql

    def seed(url: str) -> None:
        print(f"seeding pgbench scale {scale} and {text_mb} MB of random text ...", flush=True)
        subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), url], check=True)
        with psycopg.connect(url, autocommit=True) as bench:
            rows = text_mb * 1_000_000 // 320  # ten md5 digests a row: 320 random hex characters
            digests = sql.SQL(" || ".join(["md5(random()::text)"] * 10))
            query = sql.SQL("CREATE TABLE random_text AS SELECT g AS id, {} AS body FROM generate_series(1, %s) g")
            bench.execute(query.format(digests), [rows])

    return database(DB, keep, seed)


def timed(command: list[str], env: dict | None = None) -> float:
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


class StreamerPeak(threading.Thread):
    """The peak RSS of the backup streaming processes, sampled from /proc (VmHWM, never lower than any sample).

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
                    if b"dbpromote.backup_stream" not in (status.parent / "cmdline").read_bytes():
                        continue
                    hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM"))
                except (OSError, StopIteration):
                    continue  # gone meanwhile
                self.peak_kb = max(self.peak_kb, int(hwm.split()[1]))

    def stop(self) -> float:
        self.stopping.set()
        self.join()
        return self.peak_kb / 1024 if self.peak_kb else float("nan")


class Deployment:
    """The backup deployment's runs pointed at another GCS endpoint for a while (its job variables: Prefect's own
    lever, the run stays a deployment run), then given back their defaults."""

    def __init__(self, endpoint: str):
        from prefect import get_client
        from prefect.client.schemas.actions import DeploymentUpdate

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("backup/backup")
            pool = client.read_work_pool(deployment.work_pool_name)
            env = pool.base_job_template["variables"]["properties"]["env"]["default"]
            self.id, self.before = deployment.id, deployment.job_variables or {}
            variables = self.before | {"env": env | {"STORAGE_EMULATOR_HOST": endpoint}}
            client.update_deployment(self.id, DeploymentUpdate(job_variables=variables))

    def restore(self) -> None:
        from prefect import get_client
        from prefect.client.schemas.actions import DeploymentUpdate

        with get_client(sync_client=True) as client:
            client.update_deployment(self.id, DeploymentUpdate(job_variables=self.before))


def cli_backup() -> float:
    """`dbpromote backup TARGET --wait` as typed: its wall time."""
    command = [str(Path(sys.executable).parent / "dbpromote"), "backup", TARGET, "--wait"]
    return timed(command)


def main() -> None:
    parser = argparse.ArgumentParser()
    add_seed_arguments(parser, 0, 2000, 600, "reuse the seeded database if it exists")
    parser.add_argument("--scale", type=int, default=40, help="pgbench scale (40: about 600 MB)")
    parser.add_argument("--text-mb", type=int, default=500, help="MB of random hex text")
    parser.add_argument("--rounds", type=int, default=3, help="the measures alternate; medians are compared")
    args = parser.parse_args()
    if args.tenants:
        url, size = seeded_database(DB, args.tenants, args.rows, args.text_bytes, args.keep)
    else:
        url, size = seed_random_text(args.scale, args.text_mb, args.keep)

    from dbpromote.backups import delete_backup, list_backups, take_backup
    from dbpromote.config import DatabaseTarget
    from dbpromote.gcs import gcs_client
    from dbpromote.postgres import libpq_env

    target = DatabaseTarget(url=url, bucket=local_stack.BUCKET, prefix="benchmarks")
    target.save(TARGET, overwrite=True)
    env = libpq_env(target)
    emulator, sink = os.environ["STORAGE_EMULATOR_HOST"], start_sink(stack.ports["gcs"])

    def task_into(endpoint: str) -> float:
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        try:
            started = time.monotonic()
            backup = take_backup(target, run_id="")
            seconds = time.monotonic() - started
            delete_backup(gcs_client().bucket(local_stack.BUCKET), backup.object_name)
            return seconds
        finally:
            os.environ["STORAGE_EMULATOR_HOST"] = emulator

    def in_emulator() -> set[str]:
        return {backup.object_name for backup in list_backups(target)}

    def cli_into(endpoint: str) -> float:
        """The command as typed; its backup must have landed where the run was pointed (then it is deleted)."""
        before = in_emulator()
        deployment = Deployment(endpoint) if endpoint == sink else None
        try:
            seconds = cli_backup()
        finally:
            if deployment:
                deployment.restore()
        new = in_emulator() - before
        assert len(new) == (1 if endpoint == emulator else 0), f"the backup did not land in {endpoint}: {new}"
        for name in new:
            delete_backup(gcs_client().bucket(local_stack.BUCKET), name)
        return seconds

    measures = {
        "bare pg_dump -Fc": lambda: timed(["pg_dump", "-Fc", "--no-sync", "-f", "/dev/null"], env),
        "bare pg_dump -Fc -Z0": lambda: timed(["pg_dump", "-Fc", "-Z0", "--no-sync", "-f", "/dev/null"], env),
        "task alone, sink": lambda: task_into(sink),
        "task alone, emulator": lambda: task_into(emulator),
        "dbpromote backup --wait, sink": lambda: cli_into(sink),
        "dbpromote backup --wait, emulator": lambda: cli_into(emulator),
    }
    times: dict[str, list[float]] = {name: [] for name in measures}
    emulator_cpu = []
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    streamer_peak = StreamerPeak()
    for _ in range(args.rounds):
        for name, measure in measures.items():
            cpu_before = emulator_cpu_seconds()
            times[name].append(measure())
            if name == "task alone, emulator":
                emulator_cpu.append(emulator_cpu_seconds() - cpu_before)
        print("round: " + ", ".join(f"{name} {values[-1]:.1f} s" for name, values in times.items()), flush=True)
    streamer_mb = streamer_peak.stop()
    worker_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    median = {name: statistics.median(values) for name, values in times.items()}
    baseline, limit = median["bare pg_dump -Fc"], median["bare pg_dump -Fc -Z0"]
    goals = {"task alone, sink": 0.4, "dbpromote backup --wait, sink": 0.5}
    data = f"pgbench scale {args.scale} + {args.text_mb} MB random text" if not args.tenants else "the sample seed"
    print(f"database {size / 1e9:.2f} GB ({data}); medians of {args.rounds} rounds")
    for name, seconds in median.items():
        goal = f" (goal <= {goals[name]:.2f})" if name in goals else ""
        print(f"{name:<34} {seconds:7.1f} s  {seconds / baseline:5.2f}x bare -Fc{goal}, {seconds / limit:5.2f}x -Z0")
    fixed = median["dbpromote backup --wait, sink"] - median["task alone, sink"]
    print(f"the command's fixed cost (trigger, worker, flow process, noticing the end): {fixed:.1f} s")
    print(
        f"the emulator's own server used {statistics.median(emulator_cpu):.1f} s of CPU of this machine's 2 cores "
        "during the task into it (real GCS stores elsewhere)"
    )
    print(
        f"peak RSS: streaming process {streamer_mb:.0f} MB (goal <= 150); this process {worker_mb:.0f} MB "
        f"({rss_before / 1024:.0f} MB before the backups: Prefect and the flows, not the data)"
    )


if __name__ == "__main__":
    main()

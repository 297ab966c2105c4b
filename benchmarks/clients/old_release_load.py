"""One client of the previous release: its models (the migration state at --applied) run their SELECT and INSERT
per model in a loop, each round rolled back, against DATABASE_URL until --stop names a file that exists; prints
{"rounds", "statements", "errors", "first"} as JSON. Run in the project's folder with its interpreter
(benchmarks/rolling_deploy.py starts four; a client, not a benchmark), like the probe it borrows the statements from."""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

PROBE = Path(__file__).resolve().parents[2] / "dbpromote" / "probe"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True)
    parser.add_argument("--applied", required=True, help="JSON [[app, name], ...]: the previous release's state")
    parser.add_argument("--stop", required=True, help="a file whose existence ends the load")
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    import django

    django.setup()
    from django.db import connection

    spec = importlib.util.spec_from_file_location("compatibility", PROBE / "compatibility.py")
    compatibility = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compatibility)
    applied = json.loads(args.applied)
    rounds = statements = errors = 0
    first = ""
    while not Path(args.stop).exists():
        answer = compatibility.prove(connection, applied, lambda error: "")
        rounds += 1
        statements += 2 * answer["models"]
        errors += len(answer["failures"])
        first = first or (answer["failures"][0]["error"] if answer["failures"] else "")
        connection.close()  # a request's connection, as Django closes it
        time.sleep(0.01)
    print(json.dumps({"rounds": rounds, "statements": statements, "errors": errors, "first": first}))


if __name__ == "__main__":
    main()

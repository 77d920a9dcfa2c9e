"""APScheduler 3.x as a peer: N signed webhooks as N one-off ('date') jobs in a SQLAlchemyJobStore
on SQLite, run by a BackgroundScheduler's thread pool, each attempt committed to a SQLite table.

    python apscheduler_peer.py --url http://127.0.0.1:PORT/hooks/aftercare --count N --body-bytes B --dir D

The jobs are added while the scheduler is paused (not timed), all due at once; it then resumes,
and the rate runs from the first attempt's start to the moment the last attempt row is committed.
"""

import argparse
import datetime
import os
import sys
from importlib.metadata import version

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import create_engine, event

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_common  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--body-bytes", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    os.environ.update({
        "PEER_URL": args.url,
        "PEER_BODY_BYTES": str(args.body_bytes),
        "PEER_ATTEMPTS_DB": os.path.join(args.dir, "attempts.sqlite"),
    })
    peer_common.open_attempt_log(os.environ["PEER_ATTEMPTS_DB"]).close()

    # The job store's database set up as aftercare's is: WAL, synchronous = FULL.
    engine = create_engine("sqlite:///" + os.path.join(args.dir, "jobs.sqlite"))

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record):
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")

    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine)},
        executors={"default": ThreadPoolExecutor(args.workers)},
        job_defaults={"misfire_grace_time": None, "coalesce": False},
    )
    scheduler.start(paused=True)
    due = datetime.datetime.now(datetime.timezone.utc)
    for index in range(args.count):
        scheduler.add_job(
            "peer_common:deliver", "date", run_date=due, args=[f"A-{index}.ice"], id=f"A-{index}")
    scheduler.resume()
    try:
        finished = peer_common.wait_for_attempts(os.environ["PEER_ATTEMPTS_DB"], args.count)
    finally:
        scheduler.shutdown(wait=True)
    db = peer_common.open_attempt_log(os.environ["PEER_ATTEMPTS_DB"])
    started = db.execute("SELECT min(started_at) FROM attempt").fetchone()[0]
    peer_common.report(
        "apscheduler", args.count, started, finished,
        f"APScheduler {version('apscheduler')}, SQLAlchemyJobStore (SQLAlchemy {version('sqlalchemy')}) on SQLite, "
        f"ThreadPoolExecutor({args.workers})",
    )


if __name__ == "__main__":
    main()

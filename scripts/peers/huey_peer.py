"""huey as a peer: N signed webhooks as N tasks on a SqliteHuey queue (immediate=False), run by a
real `huey_consumer` process with thread workers, each attempt committed to a SQLite table.

    python huey_peer.py --url http://127.0.0.1:PORT/hooks/aftercare --count N --body-bytes B --dir D

The tasks are enqueued first (not timed); the consumer then starts, and the rate runs from the
first attempt's start to the moment the last attempt row is committed.
"""

import argparse
import os
import signal
import subprocess
import sys

from huey import SqliteHuey

import peer_common

# The script itself only enqueues through the module imported by name below; its own copy stays in memory.
huey = SqliteHuey(filename=os.environ.get("PEER_QUEUE_DB", ":memory:"), immediate=False)


@huey.task()
def send_webhook(reminder_id: str) -> None:
    peer_common.deliver(reminder_id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--body-bytes", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    env = {
        "PEER_URL": args.url,
        "PEER_BODY_BYTES": str(args.body_bytes),
        "PEER_ATTEMPTS_DB": os.path.join(args.dir, "attempts.sqlite"),
        "PEER_QUEUE_DB": os.path.join(args.dir, "huey-queue.sqlite"),
    }
    os.environ.update(env)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    # Enqueue under the module's real name, the one the consumer imports.
    import huey_peer

    peer_common.open_attempt_log(env["PEER_ATTEMPTS_DB"]).close()
    for index in range(args.count):
        huey_peer.send_webhook(f"H-{index}.ice")
    with open(os.path.join(args.dir, "consumer.log"), "wb") as consumer_log:
        consumer = subprocess.Popen(
            [sys.executable, "-m", "huey.bin.huey_consumer", "huey_peer.huey", "-w", str(args.workers), "-k", "thread",
             "-q"],
            cwd=here, env={**os.environ, "PYTHONPATH": here}, stdout=consumer_log, stderr=subprocess.STDOUT,
            # A parent may have left signals blocked; the consumer must see SIGTERM.
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, set()),
        )
    try:
        finished = peer_common.wait_for_attempts(env["PEER_ATTEMPTS_DB"], args.count)
    finally:
        consumer.terminate()
        try:
            consumer.wait(timeout=15)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait()
    db = peer_common.open_attempt_log(env["PEER_ATTEMPTS_DB"])
    started = db.execute("SELECT min(started_at) FROM attempt").fetchone()[0]
    peer_common.report(
        "huey", args.count, started, finished,
        f"huey {huey_version()}, SqliteHuey, consumer -w {args.workers} -k thread",
    )


def huey_version() -> str:
    from importlib.metadata import version

    return version("huey")


if __name__ == "__main__":
    main()

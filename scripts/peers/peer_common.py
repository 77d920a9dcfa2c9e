"""What both peers share: the signed webhook, its delivery over a kept-alive connection, and the
attempt log (one SQLite row committed per attempt, as aftercare commits each attempt to its log).

Settings come from the environment, so a huey consumer process and an APScheduler worker thread
read the same ones: PEER_URL, PEER_BODY_BYTES, PEER_ATTEMPTS_DB.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import sqlite3
import threading
import time
import urllib.parse

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))

_local = threading.local()


def body_for(reminder_id: str, size: int) -> bytes:
    """A body shaped like aftercare's, its text padded so the whole is exactly `size` bytes."""
    fields = {
        "type": "aftercare.reminder",
        "reminder_id": reminder_id,
        "procedure_id": reminder_id.split(".")[0],
        "patient_id": "MRN-1",
        "step": "ice",
        "channel": "sms",
        "to": "+15550000001",
        "subject": "Your aftercare from Benchmark Clinic",
        "text": "",
        "due_at": "2026-11-26T19:30:00Z",
        "attempt": 1,
    }
    bare = len(json.dumps(fields, separators=(",", ":")).encode())
    fields["text"] = "x" * max(0, size - bare)
    return json.dumps(fields, separators=(",", ":")).encode()


def _connection() -> http.client.HTTPConnection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        url = urllib.parse.urlsplit(os.environ["PEER_URL"])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        _local.conn = conn
        _local.path = url.path or "/"
    return conn


def _attempt_log() -> sqlite3.Connection:
    db = getattr(_local, "db", None)
    if db is None:
        db = open_attempt_log(os.environ["PEER_ATTEMPTS_DB"])
        _local.db = db
    return db


def open_attempt_log(path: str) -> sqlite3.Connection:
    """The attempt table, in WAL mode with synchronous = FULL (as aftercare's store is)."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS attempt (id INTEGER PRIMARY KEY, reminder_id TEXT NOT NULL, "
        "started_at REAL NOT NULL, ended_at REAL NOT NULL, status INTEGER)"
    )
    return db


def deliver(reminder_id: str) -> None:
    """Signs and POSTs one webhook, then commits its attempt row."""
    body = body_for(reminder_id, int(os.environ["PEER_BODY_BYTES"]))
    started = time.time()
    timestamp = str(int(started))
    signed = f"{reminder_id}.{timestamp}.".encode() + body
    signature = "v1," + base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "aftercare-peer/1",
        "webhook-id": reminder_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signature,
    }
    conn = _connection()
    status = None
    try:
        conn.request("POST", _local.path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        _local.conn = None
    ended = time.time()
    db = _attempt_log()
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "INSERT INTO attempt (reminder_id, started_at, ended_at, status) VALUES (?, ?, ?, ?)",
        (reminder_id, started, ended, status),
    )
    db.execute("COMMIT")
    if status is None or not 200 <= status < 300:
        raise RuntimeError(f"{reminder_id}: receiver answered {status}")


def wait_for_attempts(path: str, count: int, limit: float = 600) -> float:
    """Polls the attempt table until `count` rows are committed; returns the wall time then."""
    db = open_attempt_log(path)
    deadline = time.time() + limit
    while True:
        done = db.execute("SELECT count(*) FROM attempt").fetchone()[0]
        if done >= count:
            return time.time()
        if time.time() > deadline:
            raise SystemExit(f"only {done} of {count} attempts after {limit:.0f} s")
        time.sleep(0.02)


def report(name: str, count: int, started: float, finished: float, detail: str) -> None:
    """One line for people, one for aftercare-bench to read."""
    db = open_attempt_log(os.environ["PEER_ATTEMPTS_DB"])
    ok = db.execute("SELECT count(*) FROM attempt WHERE status BETWEEN 200 AND 299").fetchone()[0]
    seconds = finished - started
    print(f"{name}: {count} signed webhooks ({ok} answered 2xx) in {seconds:.2f} s = {count / seconds:.0f}/s; {detail}")
    print(f"RESULT {name} count={count} ok={ok} seconds={seconds:.3f} rate={count / seconds:.1f}", flush=True)

"""Shared pieces of the campaigns: the workspace, the daemon under test, a loopback webhook receiver,
configuration and protocol files, spool drops, the database as an observer sees it, and the tally
of checks that ends every campaign with its closing line.

Standard library only. Every process and mount a campaign starts is registered for clean-up, which
runs on normal exit, on failure and on SIGTERM/SIGINT.
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "whsec_" + base64.b64encode(b"aftercare-campaign-signing-key-32").decode()
PHONE = "+15551234567"


def parse_args(name):
    parser = argparse.ArgumentParser(prog=f"campaign {name}")
    parser.add_argument("--bin", required=True, help="the aftercare binary")
    parser.add_argument("--size", choices=["small", "full"], default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the workspace for inspection")
    return parser.parse_args()


def printable(value, limit=160):
    """A string or bytes shown safely on one line: control characters escaped, bounded."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def now_iso(offset_seconds=0.0):
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return moment.replace(microsecond=0).isoformat()


class Campaign:
    """The tally of one campaign: named checks, figures, clean-up actions and the closing line."""

    def __init__(self, name, args):
        self.name = name
        self.args = args
        self.started = time.monotonic()
        self.passed = 0
        self.failed = []
        self.figures = []
        self.cleanups = []
        self.workspace = tempfile.mkdtemp(prefix=f"aftercare-campaign-{name}-")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        print(f"campaign {name}: size {args.size}, seed {args.seed}, workspace {self.workspace}", flush=True)

    def _on_signal(self, number, _frame):
        raise SystemExit(f"campaign {self.name}: stopped by signal {number}")

    def on_cleanup(self, action):
        self.cleanups.append(action)

    def log(self, text):
        elapsed = time.monotonic() - self.started
        print(f"  [{elapsed:6.1f}s] {text}", flush=True)

    def check(self, name, ok, detail="", items=()):
        """Records one check; a failure says what broke, with up to 40 of the cases that broke it."""
        if ok:
            self.passed += 1
            print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)
        else:
            self.failed.append(name)
            print(f"FAIL {name}" + (f": {detail}" if detail else ""), flush=True)
            for item in list(items)[:40]:
                print(f"       - {item}", flush=True)
            if len(items) > 40:
                print(f"       ... and {len(items) - 40} more", flush=True)
        return ok

    def figure(self, name, value):
        self.figures.append((name, value))

    def cleanup(self):
        while self.cleanups:
            action = self.cleanups.pop()
            try:
                action()
            except Exception as error:  # clean-up goes on whatever one step did
                print(f"  clean-up step failed: {error}", flush=True)
        if self.args.keep:
            print(f"  workspace kept: {self.workspace}", flush=True)
        else:
            shutil.rmtree(self.workspace, ignore_errors=True)

    def finish(self):
        self.figure("time", f"{time.monotonic() - self.started:.1f} s")
        print(f"figures ({self.name}):")
        for name, value in self.figures:
            print(f"  {name}: {value}")
        if self.failed:
            print(f"failed checks: {', '.join(self.failed)}")
        print(f"campaign {self.name}: {self.passed} passed, {len(self.failed)} failed", flush=True)
        return 1 if self.failed else 0


def main(name, body):
    """Runs a campaign body(campaign) with clean-up guaranteed; returns the exit status."""
    args = parse_args(name)
    campaign = Campaign(name, args)
    try:
        body(campaign)
    except SystemExit as stop:
        campaign.check("campaign ran to its end", False, str(stop))
    except Exception as error:
        import traceback

        traceback.print_exc()
        campaign.check("campaign ran to its end", False, f"{type(error).__name__}: {printable(str(error), 400)}")
    finally:
        campaign.cleanup()
    return campaign.finish()


# --- the loopback receiver --------------------------------------------------------------------


class Receiver:
    """A Standard Webhooks receiver on loopback. Records every webhook-id (with how often it came)
    before answering, checks each signature, and answers `status` (204) after an optional delay.
    Set `answer` to a callable(webhook_id) -> status to vary answers."""

    def __init__(self, campaign, delay=(0.0, 0.0), seed=0):
        import random

        self.counts = {}
        self.bad_signatures = 0
        self.aborted = 0
        self.in_flight = 0
        self.total = 0
        self.lock = threading.Lock()
        self.delay = delay
        self.random = random.Random(seed)
        self.key = base64.b64decode(SECRET.split("_", 1)[1])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:
                    # The sender died mid-request (kill -9): nothing a real receiver would act on.
                    with receiver.lock:
                        receiver.aborted += 1
                    self.close_connection = True
                    return
                status = receiver.receive(self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            request_queue_size = 512

            def handle_error(self, request, client_address):
                pass  # a killed daemon resets its connections: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        campaign.on_cleanup(self.stop)

    def receive(self, headers, body):
        webhook_id = headers.get("webhook-id", "")
        timestamp = headers.get("webhook-timestamp", "")
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        valid = any(
            part.partition(",")[0] == "v1" and hmac.compare_digest(part.partition(",")[2], expected)
            for part in headers.get("webhook-signature", "").split(" ")
        )
        with self.lock:
            self.counts[webhook_id] = self.counts.get(webhook_id, 0) + 1
            self.total += 1
            if not valid:
                self.bad_signatures += 1
            self.in_flight += 1
            pause = self.random.uniform(*self.delay) if self.delay[1] > 0 else 0
        if pause:
            time.sleep(pause)
        with self.lock:
            self.in_flight -= 1
        return 204

    def snapshot(self):
        with self.lock:
            return dict(self.counts)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class NotifySocket:
    """Plays systemd's side of sd_notify: a datagram socket that records every message with its
    arrival time."""

    def __init__(self, campaign, path):
        import socket

        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        campaign.on_cleanup(self.stop)

    def _loop(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except OSError:
                continue
            self.messages.append((time.monotonic(), data.decode("utf-8", "replace")))

    def pings(self):
        return [at for at, text in list(self.messages) if "WATCHDOG=1" in text.split("\n")]

    def stop(self):
        self.running = False
        self.sock.close()


# --- files: configuration, protocols, spool ---------------------------------------------------


def write_protocol(path, protocol_id, steps):
    """steps: (id, at, valid_for) tuples."""
    lines = [f'id = "{protocol_id}"', f'title = "Campaign protocol {protocol_id}"', ""]
    for step_id, at, valid_for in steps:
        lines += [
            "[[steps]]",
            f'id = "{step_id}"',
            f'at = "{at}"',
            f'valid_for = "{valid_for}"',
            'channels = ["sms"]',
            'subject = "Step ' + step_id + ' from {clinic_name}"',
            'body = "Hi {first_name}, step ' + step_id + ' of your aftercare. Call {clinic_phone}."',
            "",
        ]
    with open(path, "w") as out:
        out.write("\n".join(lines))


def write_config(folder, port, state_directory, protocol_files, spool=None, extra=""):
    """A configuration with no quiet hours, one webhook sender on loopback for sms, fast retries,
    a short lease and a short shutdown grace. Returns its path."""
    secret_path = os.path.join(folder, "whsec")
    with open(secret_path, "w") as out:
        out.write(SECRET + "\n")
    files = ", ".join(f'"{name}"' for name in protocol_files)
    spool_line = f'spool = "{spool}"' if spool else ""
    text = f"""
[clinic]
name = "Campaign Clinic"
phone = "+1 555-010-2030"
time_zone = "UTC"

[paths]
state_directory = "{state_directory}"
{spool_line}

[protocols]
files = [{files}]

[channels]
sms = "hook"

[senders.hook]
kind = "webhook"
url = "http://127.0.0.1:{port}/ok"
allow_insecure_http = true
secret_file = "{secret_path}"
connect_timeout = "2s"
total_timeout = "5s"

[retry]
initial_delay = "1s"
multiplier = 1.5
max_delay = "3s"
max_attempts = 100
jitter = 0.1

[dispatch]
batch_size = 128
lease = "10s"
max_concurrent = 32
max_per_host = 32
shutdown_grace = "2s"
{extra}
"""
    path = os.path.join(folder, "aftercare.toml")
    with open(path, "w") as out:
        out.write(text)
    return path


def procedure(procedure_id, protocol_id, performed_at, first_name="Ana"):
    return {
        "procedure_id": procedure_id,
        "protocol": protocol_id,
        "performed_at": performed_at,
        "patient": {
            "id": "MRN-" + procedure_id,
            "first_name": first_name,
            "time_zone": "UTC",
            "routes": [{"channel": "sms", "to": PHONE}],
        },
    }


def jsonl(objects):
    return "".join(json.dumps(item, separators=(",", ":")) + "\n" for item in objects).encode()


class Spool:
    def __init__(self, root):
        self.root = root
        self.incoming = os.path.join(root, "incoming")
        self.tmp = os.path.join(root, "tmp")
        self.rejected = os.path.join(root, "rejected")
        self.counter = 0

    def drop(self, data, name=None):
        """Writes a file in tmp/ and renames it into incoming/, as the README says producers do."""
        self.counter += 1
        name = name or f"campaign-{os.getpid()}-{self.counter:06d}.json"
        os.makedirs(self.tmp, exist_ok=True)
        os.makedirs(self.incoming, exist_ok=True)
        staged = os.path.join(self.tmp, name)
        with open(staged, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.rename(staged, os.path.join(self.incoming, name))
        return name

    def waiting(self):
        """Entries in incoming/ that are not a writer's work in progress (hidden or *.tmp)."""
        try:
            names = os.listdir(os.fsencode(self.incoming))
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(b".") and not n.endswith(b".tmp")]


# --- the daemon under test --------------------------------------------------------------------


class Daemon:
    """One `aftercare daemon` process at a time; stderr and stdout appended to one log file."""

    def __init__(self, campaign, binary, config, log_path, env=None, prefix=()):
        self.binary = binary
        self.config = config
        self.log_path = log_path
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("JOURNAL_STREAM", None)
        self.prefix = list(prefix)
        self.process = None
        self.starts = 0
        campaign.on_cleanup(self.stop_hard)

    def start(self):
        self.starts += 1
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.prefix + [self.binary, "daemon", "--config", self.config],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True,
        )
        log.close()
        return self.process.pid

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def exit_code(self):
        return None if self.process is None else self.process.poll()

    def kill9(self):
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def terminate(self, timeout):
        """SIGTERM; returns seconds until exit, or None if it did not exit within timeout."""
        if not self.alive():
            return 0.0
        started = time.monotonic()
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - started

    def stop_hard(self):
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def rss_kib(self):
        if not self.alive():
            return 0
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return 0
        return 0

    def log_bytes(self):
        try:
            with open(self.log_path, "rb") as log:
                return log.read()
        except FileNotFoundError:
            return b""

    def wait_for_log(self, pattern, timeout, since=0):
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        while time.monotonic() < deadline:
            if regex.search(self.log_bytes()[since:]):
                return True
            if not self.alive():
                return bool(regex.search(self.log_bytes()[since:]))
            time.sleep(0.1)
        return False


def cli(binary, args, config=None, timeout=30, env=None, stdin=None):
    """Runs the CLI; returns (returncode, stdout bytes, stderr bytes, seconds). returncode is None
    on a timeout (the process group is killed) and negative when a signal ended it."""
    command = [binary] + list(args)
    if config:
        command += ["--config", config]
    started = time.monotonic()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        env=dict(os.environ, **(env or {})), start_new_session=True,
    )
    try:
        out, err = process.communicate(stdin, timeout=timeout)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        code = None
    return code, out, err, time.monotonic() - started


# --- the database, as an observer sees it -----------------------------------------------------


def query(database, sql, params=()):
    """A read-only look at the database (never checkpoints, never removes the WAL)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def integrity(database):
    """`sqlite3 DB 'PRAGMA integrity_check'`: the output, 'ok' when sound."""
    result = subprocess.run(
        ["sqlite3", database, "PRAGMA integrity_check"], capture_output=True, timeout=120)
    return (result.stdout + result.stderr).decode("utf-8", "replace").strip()


def audit_verify(binary, config):
    code, out, err, _ = cli(binary, ["audit", "verify"], config=config, timeout=300)
    text = (out + err).decode("utf-8", "replace").strip()
    return code == 0, text


def status(binary, config):
    """`aftercare status` as a dict of its first number per line: Delivered, Scheduled, ..."""
    code, out, err, _ = cli(binary, ["status"], config=config, timeout=60)
    figures = {}
    for line in out.decode("utf-8", "replace").splitlines():
        match = re.match(r"^(\S.*?)\s{2,}(\d+)", line)
        if match:
            figures[match.group(1).strip()] = int(match.group(2))
    return code, figures, (out + err).decode("utf-8", "replace")


def wait_until(predicate, timeout, interval=0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# --- clean output ------------------------------------------------------------------------------

# Lines of the daemon's log are "<ISO time> <level> <message>".
LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (trace|debug|info|notice|warning|error|critical) ")
RAW_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]")
NEWLINE = b"\n"


def clean_text(data, limit):
    """Why `data` is not one clean, bounded line of valid UTF-8 (None when it is)."""
    text = data[:-1] if data.endswith(b"\n") else data
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid UTF-8"
    if b"\n" in text:
        return f"{text.count(NEWLINE) + 1} lines"
    match = RAW_CONTROL.search(text)
    if match:
        return f"raw control character {match.group(0)!r}"
    if len(text) > limit:
        return f"{len(text)} bytes long"
    return None


def journal_problems(data, limit=4096):
    """Lines of a daemon log that are not one clean event each."""
    problems = []
    for number, line in enumerate(data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"), 1):
        if not LOG_LINE.match(line):
            problems.append(f"line {number} is not an event: {printable(line, 100)}")
            continue
        problem = clean_text(line, limit)
        if problem:
            problems.append(f"line {number}: {problem}: {printable(line, 100)}")
    return problems

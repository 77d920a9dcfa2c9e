#!/usr/bin/env python3
"""Campaign hostile: a generated corpus of broken and hostile spool entries (truncated JSON, wrong
types, huge fields, invalid UTF-8, control characters, NUL, CR/LF, ESC and bidi overrides in ids,
impossible dates, a 1 GiB sparse file, a 50 MB file, symlinks to the database and elsewhere, FIFOs,
folders, sockets, long and undecodable names, unreadable files), plus bad configurations, bad
protocols, a bad reload and bad CLI calls, against a running daemon holding earlier data.

Checks: 0 crashes, 0 hangs, every spool entry leaves incoming/ with a reason (an .error file that
is one clean line), every bad CLI call or configuration gives a clear error and a non-zero exit,
nothing already stored changes (a hash of the stored rows before and after), none of the hostile
requests is stored, the daemon's log is one clean event per line, `audit verify` is intact, the
daemon's memory stays bounded, and work dropped afterwards is still ingested and survives a restart.

The daemon runs without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (setpriv), so mode-000 files are
really unreadable to it although the campaign runs as root.
"""
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BASELINE = 20
RSS_LIMIT_KIB = 200 * 1024
ERROR_LINE_LIMIT = 2000
LOG_LINE_LIMIT = 4096
BAD_CHARACTERS = {
    "NUL": "\u0000", "CR": "\r", "LF": "\n", "CRLF": "\r\n", "ESC": "\u001b[31m", "BEL": "\u0007",
    "DEL": "\u007f", "NEL": "\u0085", "LS": "\u2028", "RLO": "\u202e", "LRI": "\u2066", "TAB": "\t",
}
IMPOSSIBLE_DATES = [
    "2026-02-30T10:00:00Z", "2026-13-01T10:00:00Z", "2026-00-10T10:00:00Z", "2026-01-00T10:00:00Z",
    "2026-01-01T24:00:00Z", "2026-01-01T23:60:00Z", "2026-06-30T23:59:60Z", "2026-01-01T10:00:00+25:00",
    "2026-01-01T10:00:00", "1999-12-31T23:59:59Z", "2101-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z", "-001-01-01T00:00:00Z", "2026-1-1T1:1:1Z", "", "now", "1700000000",
    "2026-01-01T10:00:00.Z", "\uff12\uff10\uff12\uff16-01-01T10:00:00Z", "2026-01-01T10:00:00Z ",
    "2027-02-29T10:00:00Z", "2026-01-01T10:00:00\u0000Z",
]
class Entry:
    """One spool entry: a name (bytes) and what to put there."""

    def __init__(self, label, name, kind="file", data=b"", target=None, mode=None):
        self.label, self.name, self.kind, self.data, self.target, self.mode = label, name, kind, data, target, mode


def good_procedure(procedure_id):
    return common.procedure(procedure_id, "hostile", common.now_iso())


def corpus(state, database, outside):
    """The spool entries, each meant to be refused. `outside` is a folder out of the spool."""
    entries = []
    serial = [0]

    def add(label, data=b"", kind="file", name=None, **extra):
        serial[0] += 1
        name = name or f"h{serial[0]:04d}.json".encode()
        if isinstance(data, str):
            data = data.encode()
        entries.append(Entry(label, name, kind, data, **extra))

    # Truncated JSON, and JSON Lines whose last line is truncated (all or nothing).
    valid = json.dumps(good_procedure("H-TRUNC")).encode()
    for cut in range(0, len(valid), max(1, len(valid) // 30)):
        add(f"truncated at {cut}", valid[:cut])
    for lines in range(1, 6):
        body = common.jsonl(good_procedure(f"H-TRUNCL{lines}-{n}") for n in range(lines))
        add(f"JSON Lines, last of {lines + 1} truncated", body + valid[: len(valid) // 2])

    # Wrong types, field by field.
    wrong = [42, 1.5, True, [], {}]
    paths = [("procedure_id",), ("protocol",), ("performed_at",), ("patient",), ("patient", "id"),
             ("patient", "first_name"), ("patient", "time_zone"), ("patient", "routes"),
             ("patient", "routes", 0), ("patient", "routes", 0, "channel"), ("patient", "routes", 0, "to"),
             ("patient", "routes", 0, "opted_out")]
    for path in paths:
        for number, value in enumerate(wrong):
            if path[-1] == "opted_out" and value is True:
                value = "yes"
            record = good_procedure(f"H-TYPE-{len(entries)}")
            holder = record
            for key in path[:-1]:
                holder = holder[key]
            holder[path[-1]] = value
            add(f"wrong type {'.'.join(map(str, path))} = {json.dumps(value)}", json.dumps(record))
    for top in ["[]", '"procedure"', "42", "null", "true", json.dumps([good_procedure("H-ARRAY")])]:
        add(f"top level {top[:20]}", top)
    for record in [{"kind": "cancel", "procedure_id": 42}, {"kind": "cancel", "procedure_id": "BASE-00", "reason": 42},
                   {"kind": 42, "procedure_id": "BASE-00"}, {"kind": "replay", "reminder_id": 42},
                   {"kind": "replay", "dead_since": 42}, {"kind": "reschedule", "procedure_id": "BASE-01",
                                                          "performed_at": 42},
                   {"kind": "reschedule", "procedure_id": "BASE-01", "time_zone": 42},
                   {"kind": "cancel", "procedure_id": "BASE-00", "requested_by": 42}]:
        add(f"wrong type in {record}", json.dumps(record))

    # Huge fields.
    huge = [("procedure_id", "P" * 100_000), ("first_name", "A" * 1_000_000), ("patient id", "M" * 65)]
    for label, value in huge:
        record = good_procedure("H-HUGE")
        if label == "procedure_id":
            record["procedure_id"] = value
        elif label == "first_name":
            record["patient"]["first_name"] = value
        else:
            record["patient"]["id"] = value
        add(f"huge {label}", json.dumps(record))
    record = good_procedure("H-ROUTES9")
    record["patient"]["routes"] = [{"channel": "sms", "to": common.PHONE}] * 9
    add("9 routes", json.dumps(record))
    record["patient"]["routes"] = [{"channel": "sms", "to": common.PHONE}] * 100_000
    add("100,000 routes", json.dumps(record))
    add("nesting 100,000 deep", "[" * 100_000 + "]" * 100_000)
    add("nesting 2,000 deep in a field", json.dumps(good_procedure("H-NEST"))[:-1] + ',"x":' + "[" * 2000
        + "]" * 2000 + "}")
    add("a 1 MB key", '{"' + "k" * 1_000_000 + '":1}')
    add("100,000 unknown keys", json.dumps({f"k{n}": n for n in range(100_000)}))
    add("cancel with a 5 MB reason",
        json.dumps({"kind": "cancel", "procedure_id": "BASE-00", "reason": "r" * 5_000_000}))
    add("replay of a 10,000-character id", json.dumps({"kind": "replay", "reminder_id": "X" * 5000 + "." + "y" * 5000}))
    add("a number 1e400", json.dumps(good_procedure("H-NUM"))[:-1] + ',"n":1e400}')

    # Invalid UTF-8 and encodings.
    base = json.dumps(good_procedure("H-UTF")).encode()
    for label, bad in [("0xff", b"\xff"), ("0xfe 0xff", b"\xfe\xff"), ("overlong /", b"\xc0\xaf"),
                       ("cut sequence", b"\xe2\x82"), ("surrogate bytes", b"\xed\xa0\x80"),
                       ("Latin-1", b"Jos\xe9")]:
        add(f"invalid UTF-8 ({label}) in an id", base.replace(b"H-UTF", b"H-" + bad))
        add(f"invalid UTF-8 ({label}) in a name", base.replace(b'"Ana"', b'"A' + bad + b'"'))
    add("invalid UTF-8 in a key", base.replace(b'"protocol"', b'"pro\xfftocol"'))
    add("lone surrogate escape in an id", base.replace(b"H-UTF", b"H-\\ud800"))
    add("only NUL bytes", b"\x00" * 1024)
    add("random bytes", random.Random(8).randbytes(4096))
    add("empty file", b"")
    add("blank lines", b"\n\n  \r\n\t\n")

    # Control characters, NUL, CR/LF, ESC and bidi overrides in every id a request carries.
    for char_name, char in BAD_CHARACTERS.items():
        bad = f"H{char}b"
        record = good_procedure(bad)
        add(f"{char_name} in procedure_id", json.dumps(record))
        record = good_procedure(f"H-PAT-{char_name}")
        record["patient"]["id"] = bad
        add(f"{char_name} in patient.id", json.dumps(record))
        for kind, field in [("cancel", "procedure_id"), ("reschedule", "procedure_id"), ("replay", "procedure_id"),
                            ("replay", "reminder_id")]:
            request = {"kind": kind, field: bad if field == "procedure_id" else f"BASE-00.now{char}x"}
            if kind == "reschedule":
                request["time_zone"] = "UTC"
            add(f"{char_name} in {kind}.{field}", json.dumps(request))
        # Format characters (bidi) are not control characters: whether a reason may hold them is
        # policy, so those go to an unknown procedure; control characters must never cancel BASE-02.
        target = "H-NONE" if char_name in ("RLO", "LRI") else "BASE-02"
        add(f"{char_name} in cancel.reason", json.dumps({"kind": "cancel", "procedure_id": target,
                                                         "reason": f"declined{char}"}))
        add(f"{char_name} in kind", json.dumps({"kind": f"cancel{char}", "procedure_id": "BASE-02"}))
        add(f"{char_name} in a key", json.dumps(dict(good_procedure("H-KEY"), **{f"x{char}y": 1})))
        add(f"{char_name} in requested_by", json.dumps({"kind": "cancel", "procedure_id": "H-NONE",
                                                        "requested_by": f"eve{char}"}))
        add(f"raw {char_name} byte in procedure_id",
            json.dumps(good_procedure("H-RAW")).encode().replace(b"H-RAW", b"H" + char.encode() + b"b"))
    add("the issue's NUL cancel", '{"kind":"cancel","procedure_id":"A\\u0000b"}')

    # Impossible dates, in a new procedure, in a reschedule of a stored one, and in a replay.
    for date in IMPOSSIBLE_DATES:
        record = good_procedure("H-DATE")
        record["performed_at"] = date
        add(f"performed_at {date!r}", json.dumps(record))
        add(f"reschedule to {date!r}", json.dumps({"kind": "reschedule", "procedure_id": "BASE-03",
                                                   "performed_at": date}))
        if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", date):
            add(f"dead_since {date!r}", json.dumps({"kind": "replay", "dead_since": date}))

    # Requests about stored procedures that must change nothing.
    changed = good_procedure("BASE-01")
    changed["patient"]["first_name"] = "Mallory"
    add("same procedure id, other content", json.dumps(changed))
    add("a good cancel, then a broken line", common.jsonl([{"kind": "cancel", "procedure_id": "BASE-04"}]) + b"{")
    add("a good cancel, then a bad reason", common.jsonl([{"kind": "cancel", "procedure_id": "BASE-05"},
                                                          {"kind": "cancel", "procedure_id": "BASE-05",
                                                           "reason": "x\u001b[2J"}]))
    add("a good reschedule, then an unknown kind", common.jsonl([
        {"kind": "reschedule", "procedure_id": "BASE-06", "time_zone": "Asia/Tokyo"}, {"kind": "delete"}]))
    add("unknown kind", json.dumps({"kind": "delete", "procedure_id": "BASE-07"}))
    add("two objects on one line", json.dumps(good_procedure("H-TWO1")) + json.dumps(good_procedure("H-TWO2")))
    add("unknown protocol", json.dumps(dict(good_procedure("H-PROTO"), protocol="no-such-protocol")))
    add("no route on a configured channel", json.dumps(dict(good_procedure("H-FAX"), patient={
        "id": "M1", "time_zone": "UTC", "routes": [{"channel": "fax", "to": "12345"}]})))
    add("unknown time zone", json.dumps(dict(good_procedure("H-TZ"), patient={
        "id": "M1", "time_zone": "Mars/Phobos", "routes": [{"channel": "sms", "to": common.PHONE}]})))
    add("pretty-printed with an unknown field", json.dumps(dict(good_procedure("H-PRETTY"), extra=1), indent=2))

    # Special files.
    wal = database + "-wal"
    for label, target in [("symlink to the database", database), ("symlink to the WAL", wal),
                          ("symlink to /etc/passwd", "/etc/passwd"), ("symlink to /etc/shadow", "/etc/shadow"),
                          ("symlink to /dev/zero", "/dev/zero"), ("symlink to /dev/urandom", "/dev/urandom"),
                          ("symlink to /proc/self/environ", "/proc/self/environ"),
                          ("dangling symlink", "/nonexistent/x.json"), ("symlink to /etc", "/etc"),
                          ("relative symlink to the database", "../../aftercare.sqlite"),
                          ("symlink to a valid request outside the spool", os.path.join(outside, "valid.json"))]:
        add(label, kind="symlink", target=target)
    add("symlink loop", kind="symlink", target="loop.json", name=b"loop.json")
    add("FIFO", kind="fifo")
    add("FIFO named like a request", kind="fifo", name=b"request.jsonl")
    add("folder", kind="dir")
    add("folder with a valid request inside", kind="dir", data=json.dumps(good_procedure("H-INDIR")))
    add("unix socket", kind="socket")
    add("unreadable valid request", json.dumps(good_procedure("H-UNREAD")), mode=0o000)
    add("unreadable garbage", "{", mode=0o000)
    add("write-only file", json.dumps(good_procedure("H-WONLY")), mode=0o200)
    add("name of 255 bytes", "{", name=b"n" * 250 + b".json")
    add("name of 255 bytes, unknown kind", '{"kind":"x"}', name=b"v" * 250 + b".json")
    add("name of 249 bytes", "{", name=b"m" * 244 + b".json")
    add("name with LF", "{", name=b"bad\nname.json")
    add("name with CR and ESC", "{", name=b"\x1b[31mred\r.json")
    add("name with a bidi override", "{", name="\u202egnp.json".encode())
    add("name of invalid UTF-8", "{", name=b"\xff\xfe.json")
    add("name of invalid UTF-8, valid request", json.dumps(good_procedure("H-BADNAME")), name=b"\xc0\xaf.jsonl")
    add("name starting with -", "{", name=b"-rf.json")
    add("name of spaces", "{", name=b"   ")
    add("1 GiB sparse file", kind="sparse", data=b"", target=1 << 30)
    add("50 MB request", '{"procedure_id":"' + "P" * 50_000_000 + '"}')
    return entries


def place(spool, entry):
    """Creates an entry in tmp/ and renames it into incoming/ (folders, FIFOs and links alike)."""
    staged = os.path.join(os.fsencode(spool.tmp), b"staged-" + entry.name[:200])
    final = os.path.join(os.fsencode(spool.incoming), entry.name)
    if entry.kind == "file":
        with open(staged, "wb") as out:
            out.write(entry.data)
        if entry.mode is not None:
            os.chmod(staged, entry.mode)
    elif entry.kind == "sparse":
        with open(staged, "wb") as out:
            out.truncate(entry.target)
    elif entry.kind == "symlink":
        os.symlink(entry.target, staged)
    elif entry.kind == "fifo":
        os.mkfifo(staged)
    elif entry.kind == "dir":
        os.mkdir(staged)
        if entry.data:
            with open(os.path.join(staged, b"inside.json"), "wb") as out:
                out.write(entry.data)
    elif entry.kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(staged)
        sock.close()
    os.rename(staged, final)


def stored_rows(database, baseline_ids, last_seq):
    """The stored content that existed before: procedure and reminder rows of the baseline, and the
    log up to `last_seq`, as {row key: hash of the row}."""
    rows = {}
    marks = ",".join("?" * len(baseline_ids))
    for table, sql, params, key in [
        ("procedure", f"SELECT * FROM procedure WHERE id IN ({marks}) ORDER BY id", baseline_ids, 1),
        ("reminder", f"SELECT * FROM reminder WHERE procedure_id IN ({marks}) ORDER BY procedure_id, step_id",
         baseline_ids, 2),
        ("delivery_log", "SELECT * FROM delivery_log WHERE seq <= ? ORDER BY seq", [last_seq], 1),
    ]:
        for row in common.query(database, sql, params):
            rows[(table,) + tuple(row[:key])] = hashlib.sha256(repr(row).encode()).hexdigest()
    return rows


def digest(rows):
    return hashlib.sha256(repr(sorted(rows.items())).encode()).hexdigest()


def error_files(spool_root):
    """Every *.error file in the spool outside incoming/ and tmp/ (rejected/ or a quarantine)."""
    found = []
    for folder, dirs, files in os.walk(os.fsencode(spool_root)):
        relative = os.path.relpath(folder, os.fsencode(spool_root))
        if relative.split(b"/")[0] in (b"incoming", b"tmp"):
            dirs[:] = []
            continue
        found += [os.path.join(folder, name) for name in files if name.endswith(b".error")]
    return found


class RSSWatch:
    """Samples the daemon's resident memory every 20 ms; remembers the peak."""

    def __init__(self, campaign, daemon):
        self.daemon, self.peak, self.running = daemon, 0, True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        campaign.on_cleanup(self.stop)

    def _loop(self):
        while self.running:
            self.peak = max(self.peak, self.daemon.rss_kib())
            time.sleep(0.02)

    def stop(self):
        self.running = False


def cpu_seconds(daemon):
    try:
        with open(f"/proc/{daemon.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def settle(spool, daemon, limit, quiet=10):
    """Waits until incoming/ is empty, or neither it nor the daemon's CPU time has moved for `quiet`
    seconds (longer than the daemon's 5 s wait for files that may still be being written: the daemon
    has given up on what is left), or `limit` passed. Returns what is left."""
    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        waiting = sorted(spool.waiting())
        if not waiting:
            return []
        state = (waiting, round(cpu_seconds(daemon), 1))
        if last is None or state[0] != last[0] or state[1] - last[1] > 0.2:
            last, since = state, time.monotonic()
        elif time.monotonic() - since > quiet:
            break
        time.sleep(0.25)
    return sorted(spool.waiting())


def describe(spool, name):
    path = os.path.join(os.fsencode(spool.incoming), name)
    kind = "symlink" if os.path.islink(path) else "folder" if os.path.isdir(path) else "file"
    return f"{common.printable(name, 60)} ({kind})"


def run_spool(campaign, env):
    spool, database, daemon = env["spool"], env["database"], env["daemon"]
    outside = os.path.join(campaign.workspace, "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "valid.json"), "w") as out:
        json.dump(good_procedure("H-OUTSIDE"), out)
    entries = corpus(env["state"], database, outside)
    campaign.log(f"spool: dropping {len(entries)} hostile entries")
    errors_before = set(error_files(spool.root))
    started = time.monotonic()
    for entry in entries:
        place(spool, entry)
    left = settle(spool, daemon, 120)
    labels = {entry.name: entry.label for entry in entries}
    campaign.log(f"spool: incoming/ settled after {time.monotonic() - started:.0f} s, {len(left)} left")
    campaign.check("spool: every hostile entry left incoming/", not left,
                   f"{len(left)} still there" if left else f"{len(entries)} entries",
                   items=[f"{labels.get(name, '?')}: {describe(spool, name)}" for name in left])
    new_errors = [path for path in error_files(spool.root) if path not in errors_before]
    names = {os.path.basename(path)[:-len(b".error")] for path in new_errors}
    missing = []
    for entry in entries:
        if entry.name in left:
            continue
        # Names that are not plain printable ASCII may fairly be renamed on the way out, and long
        # ones shortened (room kept for ".error" and a ".N" counter); the count below still holds
        # every entry to a reason.
        plain = all(0x20 <= byte < 0x7F for byte in entry.name)
        if not plain:
            continue
        if len(entry.name) <= 255 - len(b".error") - len(b".9999"):
            found = entry.name in names or any(name.startswith(entry.name + b".") for name in names)
        else:
            found = any(name.startswith(entry.name[:64]) for name in names)
        if not found:
            missing.append(entry)
    campaign.check("spool: each refused entry has its .error reason", not missing and len(new_errors) >= len(entries),
                   f"{len(new_errors)} .error files for {len(entries)} entries; {len(missing)} without one",
                   items=[f"{e.label} ({common.printable(e.name, 40)})" for e in missing])
    unclean = []
    for path in new_errors:
        with open(path, "rb") as reason:
            problem = common.clean_text(reason.read(), ERROR_LINE_LIMIT)
        if problem:
            name = os.path.basename(path)[:-len(b".error")]
            unclean.append(f"{labels.get(name, '?')} ({common.printable(name, 40)}.error): {problem}")
    campaign.check("spool: every .error file is one clean line", not unclean,
                   f"{len(unclean)} of {len(new_errors)}", items=unclean)
    code, figures, text = common.status(campaign.args.bin, env["config"])
    shown = sum(value for label, value in figures.items() if label.startswith("Spool") and label != "Spool waiting")
    campaign.check("spool: status counts what it could not take",
                   code == 0 and shown >= len(entries) + len(errors_before),
                   f"status counts {shown} refused or quarantined files for {len(entries)} refused entries")
    return entries


def unreadable(campaign):
    """Whether this daemon really cannot read a mode-000 file (it runs without DAC capabilities)."""
    probe = os.path.join(campaign.workspace, "probe")
    with open(probe, "w") as out:
        out.write("x")
    os.chmod(probe, 0)
    result = os.system(f"setpriv --bounding-set=-dac_override,-dac_read_search -- cat {probe} >/dev/null 2>&1")
    return result != 0


def bad_cli_calls():
    """(label, argv, extra check) for calls that must fail cleanly."""
    x = "X" * 100_000
    add = ["add", "--patient", "M1", "--route", "sms:+15551234567", "--time-zone", "UTC", "--wait", "3"]
    calls = []
    for char_name, char in BAD_CHARACTERS.items():
        if char_name == "NUL":
            continue
        calls.append((f"add with {char_name} in the procedure id", add + ["--procedure", f"A{char}B",
                                                                          "--performed-at", "now"]))
        calls.append((f"show with {char_name} in the id", ["show", f"A{char}B"]))
        calls.append((f"replay with {char_name} in the reminder id", ["replay", "--reminder", f"BASE-00.n{char}w",
                                                                       "--wait", "3"]))
    calls += [
        ("add with a 100,000-character id", add + ["--procedure", x, "--performed-at", "now"]),
        ("add on 2026-02-30", add + ["--procedure", "H-CLI1", "--performed-at", "2026-02-30 10:00"]),
        ("add at 'tomorrow-ish'", add + ["--procedure", "H-CLI2", "--performed-at", "tomorrow-ish"]),
        ("add in Mars/Phobos", ["add", "--patient", "M1", "--route", "sms:+15551234567", "--time-zone", "Mars/Phobos",
                                "--procedure", "H-CLI3", "--performed-at", "now", "--wait", "3"]),
        ("add with a short phone", ["add", "--patient", "M1", "--route", "sms:12", "--procedure", "H-CLI4",
                                    "--time-zone", "UTC", "--performed-at", "now", "--wait", "3"]),
        ("add with an unknown channel", ["add", "--patient", "M1", "--route", "pigeon:coo", "--procedure", "H-CLI5",
                                         "--time-zone", "UTC", "--performed-at", "now", "--wait", "3"]),
        ("add with an empty route", ["add", "--patient", "M1", "--route", "", "--procedure", "H-CLI6",
                                     "--time-zone", "UTC", "--performed-at", "now", "--wait", "3"]),
        ("add with a terminal escape in the first name", add + ["--procedure", "H-CLI7", "--performed-at", "now",
                                                                "--first-name", "Ana\u001b]0;pwned\u0007"]),
        ("add without --procedure", add),
        ("add with an unknown protocol", add + ["--procedure", "H-CLI8", "--performed-at", "now",
                                                "--protocol", "nope"]),
        ("show a 100,000-character id", ["show", x]),
        ("show an empty id", ["show", ""]),
        ("show an unknown id", ["show", "NOPE-1"]),
        ("cancel an unknown procedure", ["cancel", "NOPE-1", "--reason", "x", "--wait", "3"]),
        ("cancel with an escape in the reason", ["cancel", "BASE-00", "--reason", "x\u001b[2J", "--wait", "3"]),
        ("cancel with a newline in the reason", ["cancel", "BASE-00", "--reason", "x\nForged: line", "--wait", "3"]),
        ("reschedule to 2026-13-01", ["reschedule", "BASE-01", "--performed-at", "2026-13-01 10:00", "--wait", "3"]),
        ("reschedule to 1999", ["reschedule", "BASE-01", "--performed-at", "1999-12-31T10:00:00Z", "--wait", "3"]),
        ("reschedule to Mars/Phobos", ["reschedule", "BASE-01", "--time-zone", "Mars/Phobos", "--wait", "3"]),
        ("replay a 100,000-character id", ["replay", "--reminder", "X" * 50_000 + "." + "y" * 50_000, "--wait", "3"]),
        ("replay without a dot", ["replay", "--reminder", "nodot", "--wait", "3"]),
        ("replay since garbage", ["replay", "--since", "garbage", "--wait", "3"]),
        ("audit since garbage", ["audit", "--since", "garbage"]),
        ("audit format xml", ["audit", "--format", "xml"]),
        ("audit last -1", ["audit", "--last", "-1"]),
        ("audit verify --expect-head zzz", ["audit", "verify", "--expect-head", "zzz"], "malformed"),
        ("audit verify --expect-head of 64 g", ["audit", "verify", "--expect-head", "g" * 64], "malformed"),
        ("audit verify --expect-head ''", ["audit", "verify", "--expect-head", ""], "malformed"),
        ("audit prune --before 2099-01-01", ["audit", "prune", "--before", "2099-01-01"]),
        ("audit prune --before garbage", ["audit", "prune", "--before", "garbage"]),
        ("list --bogus-flag", ["list", "--bogus-flag"]),
        ("list --limit -5", ["list", "--limit", "-5"]),
        ("protocol preview with an escape in the name", ["protocol", "preview", "--first-name", "A\u001b[31m"]),
        ("protocol preview of an unknown protocol", ["protocol", "preview", "--protocol", "nope"]),
        ("an unknown command", ["frobnicate"]),
    ]
    return calls


def run_cli(campaign, env):
    binary, config = campaign.args.bin, env["config"]
    calls = bad_cli_calls()
    problems, crashes, hangs = [], 0, 0
    for call in calls:
        label, argv = call[0], call[1]
        code, out, err, seconds = common.cli(binary, argv, config=config, timeout=30)
        first = next((line for line in err.splitlines() if line.strip()), b"")
        if code is None:
            hangs += 1
            problems.append(f"{label}: no answer in 30 s")
        elif code < 0:
            crashes += 1
            problems.append(f"{label}: killed by signal {-code}")
        elif code == 0:
            problems.append(f"{label}: exit 0 ({common.printable(out or err, 80)})")
        elif not first:
            problems.append(f"{label}: exit {code} with nothing on stderr")
        else:
            lines = [line for line in err.splitlines() if line.strip()]
            problem = common.clean_text(first, 500) \
                or (common.RAW_CONTROL.search(out.replace(b"\n", b"")) and "raw control character in stdout") \
                or (common.RAW_CONTROL.search(err.replace(b"\n", b"")) and "raw control character in stderr") \
                or (len(lines) > 1 and b"Usage:" not in err and f"{len(lines)} lines on stderr")
            if problem:
                problems.append(f"{label}: {problem}: {common.printable(first, 100)}")
            elif len(call) > 2 and call[2] == "malformed" and b"BROKEN" in err:
                problems.append(
                    f"{label}: a malformed hash is reported as a broken log: {common.printable(first, 120)}")
    campaign.check("cli: every bad call fails with one clean line and a non-zero exit", not problems,
                   f"{len(problems)} of {len(calls)}" if problems else f"{len(calls)} calls", items=problems)
    return len(calls), crashes, hangs


GOOD_PROTOCOL = """id = "other"
title = "Other"

[[steps]]
id = "now"
at = "+0h"
valid_for = "1h"
subject = "Hello from {clinic_name}"
body = "Hi {first_name}."
"""


def bad_protocols():
    """(label, bytes) for protocol files that must be refused."""
    step = GOOD_PROTOCOL.split("[[steps]]")[1]
    head = 'id = "other"\ntitle = "Other"\n\n[[steps]]'
    cases = [("empty", ""), ("no steps", 'id = "other"\ntitle = "Other"\n'),
             ("steps as a string", 'id = "other"\ntitle = "Other"\nsteps = "many"\n'),
             ("two steps with one id", GOOD_PROTOCOL + "\n[[steps]]" + step),
             ("id with a space", GOOD_PROTOCOL.replace('id = "other"', 'id = "Bad ID"')),
             ("unknown key", GOOD_PROTOCOL + 'colour = "red"\n'),
             ("step id upper case", GOOD_PROTOCOL.replace('id = "now"', 'id = "NOW"')),
             ("channel name", GOOD_PROTOCOL.replace('valid_for = "1h"', 'valid_for = "1h"\nchannels = ["SMS!"]')),
             ("urgent as a string", GOOD_PROTOCOL.replace('valid_for = "1h"', 'valid_for = "1h"\nurgent = "yes"')),
             ("unknown template field", GOOD_PROTOCOL.replace("{first_name}", "{password}")),
             ("unterminated field", GOOD_PROTOCOL.replace("{first_name}", "{first_name")),
             ("bad time field", GOOD_PROTOCOL.replace("{first_name}", "{time:+abc}")),
             ("ESC in the subject", GOOD_PROTOCOL.replace("Hello", "Hello\\u001b[31m")),
             ("newline in the subject", GOOD_PROTOCOL.replace("Hello", "Hello\\nBcc: x@example.org")),
             ("invalid UTF-8", GOOD_PROTOCOL.encode().replace(b"Hello", b"Hel\xfflo")),
             ("NUL byte", GOOD_PROTOCOL.encode().replace(b"Hello", b"Hel\x00lo")),
             ("unterminated string", GOOD_PROTOCOL.replace('"Other"', '"Other')),
             ("valid_for 0s", GOOD_PROTOCOL.replace('"1h"', '"0s"')),
             ("valid_for 31d", GOOD_PROTOCOL.replace('"1h"', '"31d"'))]
    for at in ["+", "-5h", "+99999999999h", "day -1 09:00", "same day 25:00", "+1x", "next day", ""]:
        cases.append((f"at = {at!r}", GOOD_PROTOCOL.replace('"+0h"', json.dumps(at))))
    return [(label, data.encode() if isinstance(data, str) else data) for label, data in cases]


def config_text(folder, port, secret_path, protocol_files, state):
    files = ", ".join(json.dumps(f) for f in protocol_files)
    return f"""[clinic]
name = "Campaign Clinic"
phone = "+1 555-010-2030"
time_zone = "UTC"

[paths]
state_directory = "{state}"

[protocols]
files = [{files}]

[channels]
sms = "hook"

[senders.hook]
kind = "webhook"
url = "http://127.0.0.1:{port}/ok"
allow_insecure_http = true
secret_file = "{secret_path}"
"""


def bad_configs(folder, port):
    """(label, config path) for configurations that must be refused by both config check and the daemon."""
    os.makedirs(folder)
    protocol = os.path.join(folder, "other.toml")
    with open(protocol, "w") as out:
        out.write(GOOD_PROTOCOL)
    cases = []

    def make(label, text=None, secret=common.SECRET + "\n", raw=None, secret_kind="file", protocols=None,
             state=None):
        case = os.path.join(folder, f"c{len(cases):02d}")
        os.makedirs(case)
        secret_path = os.path.join(case, "whsec")
        if secret_kind == "file":
            with open(secret_path, "w") as out:
                out.write(secret)
        elif secret_kind == "dir":
            os.mkdir(secret_path)
        path = os.path.join(case, "aftercare.toml")
        body = config_text(case, port, secret_path, [protocol] if protocols is None else protocols,
                           state if state is not None
                           else os.path.join(case, "state"))
        if text is not None:
            body = text(body)
        with open(path, "wb") as out:
            out.write(raw if raw is not None else body.encode())
        cases.append((label, path))

    make("no [clinic]", lambda t: t.replace("[clinic]", "[klinik]"))
    make("unknown key in [clinic]", lambda t: t.replace('time_zone = "UTC"', 'time_zone = "UTC"\ncolour = 1', 1))
    make("clinic zone Mars/Phobos", lambda t: t.replace('time_zone = "UTC"', 'time_zone = "Mars/Phobos"', 1))
    make("clinic name with ESC", lambda t: t.replace("Campaign Clinic", "Campaign\\u001b[31m Clinic"))
    make("blank clinic phone", lambda t: t.replace('"+1 555-010-2030"', '"  "'))
    make("quiet hours 25:00", lambda t: t + '\n[quiet_hours]\nstart = "25:00"\nend = "08:00"\n')
    make("quiet hours start only", lambda t: t + '\n[quiet_hours]\nstart = "21:00"\n')
    make("webhook secret without whsec_", secret="not-a-whsec-secret-but-long-enough\n")
    make("webhook secret too short", secret="whsec_c2hvcnQ=\n")
    make("webhook secret not base64", secret="whsec_!!!!not*base64!!!!\n")
    make("webhook secret empty", secret="")
    make("secret_file naming a folder", secret_kind="dir")
    make("secret_file missing", secret_kind="none")
    make("secret inline", lambda t: t.replace("secret_file", "secret = \"" + common.SECRET + "\"\n#"))
    make("secret_file and secret_credential", lambda t: t.replace('allow_insecure_http = true',
                                                                 'allow_insecure_http = true\nsecret_credential = "x"'))
    make("state_directory empty", state="")
    make("url ftp://", lambda t: t.replace(f"http://127.0.0.1:{port}/ok", "ftp://127.0.0.1/ok"))
    make("http:// without allow_insecure_http", lambda t: t.replace("allow_insecure_http = true\n", ""))
    make("url not a URL", lambda t: t.replace(f"http://127.0.0.1:{port}/ok", "http://exa mple/\\u0000"))
    make("channel on an unknown sender", lambda t: t.replace('sms = "hook"', 'sms = "nobody"'))
    make("no senders", lambda t: t.split("[senders.hook]")[0])
    make("sender kind carrier-pigeon", lambda t: t.replace('kind = "webhook"', 'kind = "carrier-pigeon"'))
    make("batch_size 0", lambda t: t + "\n[dispatch]\nbatch_size = 0\n")
    make("lease 1s", lambda t: t + '\n[dispatch]\nlease = "1s"\n')
    make("multiplier 'two'", lambda t: t + '\n[retry]\nmultiplier = "two"\n')
    make("duplicate key", lambda t: t.replace('phone = "+1 555-010-2030"', 'phone = "+1 555-010-2030"\nphone = "x"'))
    make("unterminated string", lambda t: t.replace('"Campaign Clinic"', '"Campaign Clinic'))
    make("NUL byte", raw=config_text("", port, "/x", [protocol], "/tmp/x").encode().replace(b"Campaign", b"Cam\x00"))
    make("invalid UTF-8", raw=config_text("", port, "/x", [protocol], "/tmp/x").encode().replace(b"Campaign",
                                                                                                 b"Cam\xff"))
    make("empty file", raw=b"")
    make("random bytes", raw=random.Random(3).randbytes(2048))
    make("protocols = []", protocols=[])
    make("protocol file missing", protocols=[os.path.join(folder, "missing.toml")])
    make("protocol file is a folder", protocols=[folder])
    make("one protocol id twice", protocols=[protocol, protocol])
    for label, data in bad_protocols():
        path = os.path.join(folder, f"bad-protocol-{len(cases):02d}.toml")
        with open(path, "wb") as out:
            out.write(data)
        make(f"protocol: {label}", protocols=[path])
    directory = os.path.join(folder, "config-is-a-folder.toml")
    os.mkdir(directory)
    cases.append(("config is a folder", directory))
    cases.append(("config missing", os.path.join(folder, "missing.toml")))
    return cases


REPEATED_PREFIX = re.compile(r"(\b[^:]{4,}: )\1")


def try_config(campaign, number, label, path):
    """Runs config check and the daemon on one bad configuration; returns (problems, crashes, hangs)."""
    binary = campaign.args.bin
    problems, crashes, hangs = [], 0, 0
    code, out, err, _ = common.cli(binary, ["config", "check"], config=path, timeout=20)
    first = next((line for line in err.splitlines() if line.strip()), b"")
    if code is None or code < 0:
        return [f"{label}: config check {'hung' if code is None else f'killed by signal {-code}'}"], \
            int(code is not None), int(code is None)
    if code == 0:
        problems.append(f"{label}: config check passes it")
    elif common.clean_text(first, 500):
        problems.append(f"{label}: config check says {common.printable(first, 80)} ({common.clean_text(first, 500)})")
    elif REPEATED_PREFIX.search(first.decode("utf-8", "replace")):
        problems.append(f"{label}: config check repeats itself: {common.printable(first, 120)}")
    log = os.path.join(campaign.workspace, "configs", f"daemon-try-{number:02d}.log")
    daemon = common.Daemon(campaign, binary, path, log)
    daemon.start()
    try:
        daemon.process.wait(5)
    except Exception:
        pass
    if daemon.alive():
        daemon.terminate(5)
        daemon.stop_hard()
        problems.append(f"{label}: the daemon starts with it" + (" (config check refused it)" if code else ""))
        return problems, crashes, hangs
    text = daemon.log_bytes()
    if daemon.exit_code() < 0:
        crashes += 1
        problems.append(f"{label}: the daemon died of signal {-daemon.exit_code()}")
    elif daemon.exit_code() == 0:
        problems.append(f"{label}: the daemon exits 0 without running")
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else b""
    if not last or common.clean_text(last, 600):
        problems.append(f"{label}: the daemon's error is {common.printable(last, 80) or 'empty'}")
    elif REPEATED_PREFIX.search(last.decode("utf-8", "replace")):
        problems.append(f"{label}: the daemon's error repeats itself: {common.printable(last, 140)}")
    return problems, crashes, hangs


def run_configs(campaign, env):
    from concurrent.futures import ThreadPoolExecutor

    cases = bad_configs(os.path.join(campaign.workspace, "configs"), env["receiver"].port)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda item: try_config(campaign, item[0], *item[1]), enumerate(cases)))
    problems = [problem for result in results for problem in result[0]]
    crashes = sum(result[1] for result in results)
    hangs = sum(result[2] for result in results)
    campaign.check("configs: every bad configuration or protocol is refused by config check and the daemon alike",
                   not problems,
                   f"{len(problems)} problems in {len(cases)} cases" if problems else f"{len(cases)} cases",
                   items=problems)
    return len(cases), crashes, hangs


def run_reload(campaign, env):
    """A bad protocol file and a bad config while running: SIGHUP keeps the daemon on the old ones."""
    daemon, protocol = env["daemon"], env["protocol"]
    with open(protocol, "rb") as original:
        saved = original.read()
    problems = []
    for label, data in [("protocol with an unknown field", saved.replace(b"{first_name}", b"{password}")),
                        ("protocol of invalid UTF-8", saved + b"\xff\xfe"), ("empty protocol", b"")]:
        mark = len(daemon.log_bytes())
        with open(protocol, "wb") as out:
            out.write(data)
        os.kill(daemon.process.pid, signal.SIGHUP)
        time.sleep(1.5)
        if not daemon.alive():
            problems.append(f"{label}: the daemon exited ({daemon.exit_code()})")
            daemon.start()
        elif not re.search(rb"(?i)(reload|refus|keep)", daemon.log_bytes()[mark:]):
            problems.append(f"{label}: nothing in the log about the refused reload")
    with open(protocol, "wb") as out:
        out.write(saved)
    os.kill(daemon.process.pid, signal.SIGHUP)
    time.sleep(1)
    campaign.check("reload: bad files on SIGHUP are refused and the daemon runs on", not problems, "; ".join(problems))
    return 3


def body(campaign):
    folder = campaign.workspace
    state = os.path.join(folder, "state")
    receiver = common.Receiver(campaign)
    protocol = os.path.join(folder, "hostile.toml")
    common.write_protocol(protocol, "hostile", [("now", "+0s", "1h"), ("month", "+30d", "1h")])
    config = common.write_config(folder, receiver.port, state, ["hostile.toml"])
    database = os.path.join(state, "aftercare.sqlite")
    spool = common.Spool(os.path.join(state, "spool"))
    drop_caps = shutil.which("setpriv") is not None and unreadable(campaign)
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if drop_caps else []
    daemon = common.Daemon(campaign, campaign.args.bin, config, os.path.join(folder, "daemon.log"), prefix=prefix)
    env = {"state": state, "config": config, "database": database, "spool": spool, "daemon": daemon,
           "receiver": receiver, "protocol": protocol}
    if not drop_caps:
        campaign.log("setpriv cannot drop DAC capabilities here: mode-000 files are readable to the daemon")

    # The baseline: stored procedures, some cancelled, their first reminders delivered.
    daemon.start()
    baseline_ids = [f"BASE-{n:02d}" for n in range(BASELINE)]
    spool.drop(common.jsonl(good_procedure(pid) for pid in baseline_ids))
    spool.drop(common.jsonl([{"kind": "cancel", "procedure_id": "BASE-19", "reason": "patient declined"}]))

    def baseline_done():
        try:
            rows = common.query(database, "SELECT count(*) FROM reminder WHERE procedure_id LIKE 'BASE-%' AND "
                                "(state = 'claimed' OR (state = 'scheduled' AND step_id = 'now'))")
            stored = common.query(database, "SELECT count(*) FROM procedure WHERE status = 'cancelled'")
        except Exception:
            return False
        return not spool.waiting() and rows[0][0] == 0 and stored[0][0] == 1

    if not campaign.check("baseline stored and delivered", common.wait_until(baseline_done, 60)):
        return
    last_seq = common.query(database, "SELECT max(seq) FROM delivery_log")[0][0]
    before = stored_rows(database, baseline_ids, last_seq)
    campaign.log(f"baseline: {BASELINE} procedures, {len(before)} stored rows, log up to row {last_seq}, "
                 f"hash {digest(before)[:16]}")
    rss = RSSWatch(campaign, daemon)
    crashes = hangs = 0
    alive_problems = []

    entries = run_spool(campaign, env)
    ok, text = common.audit_verify(campaign.args.bin, config)
    campaign.check("audit verify after the spool corpus", ok, common.printable(text, 300))
    if not daemon.alive():
        alive_problems.append(f"after the spool corpus (exit {daemon.exit_code()})")
        crashes += 1
        daemon.start()
    calls, cli_crashes, cli_hangs = run_cli(campaign, env)
    # A staff command that opens the database while the daemon runs: the lost-WAL trigger.
    common.cli(campaign.args.bin, ["audit", "prune", "--before", "2000-01-01"], config=config, timeout=30)
    common.cli(campaign.args.bin, ["status"], config=config, timeout=30)
    if not daemon.alive():
        alive_problems.append(f"after the CLI calls (exit {daemon.exit_code()})")
        crashes += 1
        daemon.start()
    configs, config_crashes, config_hangs = run_configs(campaign, env)
    reloads = run_reload(campaign, env)
    crashes += cli_crashes + config_crashes
    hangs += cli_hangs + config_hangs

    # Work after the storm: ingested, delivered, and still there after a restart.
    sentinels = [f"S-{n:02d}" for n in range(5)]
    spool.drop(common.jsonl(good_procedure(pid) for pid in sentinels))
    ok = common.wait_until(lambda: all(f"{pid}.now" in receiver.snapshot() for pid in sentinels), 30)
    campaign.check("after the storm: new work is ingested and delivered", ok,
                   f"{sum(1 for pid in sentinels if pid + '.now' in receiver.snapshot())} of {len(sentinels)} "
                   "delivered")
    campaign.check("0 crashes: the daemon stayed up", not alive_problems and daemon.alive(),
                   "; ".join(alive_problems) or (f"exit {daemon.exit_code()}" if not daemon.alive() else ""))
    rss.stop()
    campaign.check("memory: the daemon's RSS stayed under 200 MB", rss.peak < RSS_LIMIT_KIB,
                   f"peak {rss.peak / 1024:.0f} MB (1 GiB and 50 MB files among the entries)")
    # A crash now: whatever the daemon committed must be in the database files, not only in a
    # WAL that a staff command unlinked after a symlink made the daemon drop its locks.
    daemon.kill9()
    daemon.start()
    daemon.wait_for_log("aftercare ready", 30, since=0)
    time.sleep(1)
    present = {row[0] for row in common.query(database, "SELECT id FROM procedure")}
    campaign.check("after kill -9 and a restart: the new work is still stored", set(sentinels) <= present,
                   f"missing: {sorted(set(sentinels) - present)}" if not set(sentinels) <= present else "")
    strangers = sorted(present - set(sentinels) - set(baseline_ids))
    campaign.check("no hostile request was stored", not strangers,
                   f"{len(strangers)} stored", items=[common.printable(s, 60) for s in strangers])
    after = stored_rows(database, baseline_ids, last_seq)
    changed = [" ".join(map(str, key)) + (" changed" if key in after else " gone")
               for key in sorted(before, key=repr) if before[key] != after.get(key) and key[0] != "delivery_log"]
    log_gone = [key[1] for key in before if key[0] == "delivery_log" and key not in after]
    log_changed = [key[1] for key in before if key[0] == "delivery_log" and key in after and before[key] != after[key]]
    if log_gone:
        changed.append(f"delivery_log: {len(log_gone)} rows gone (seq {min(log_gone)}..{max(log_gone)})")
    if log_changed:
        changed.append(f"delivery_log: {len(log_changed)} rows changed (seq {min(log_changed)}..{max(log_changed)})")
    # What the log says happened to the changed procedures since the baseline.
    touched = sorted({key[1] for key in before if before[key] != after.get(key) and key[0] != "delivery_log"})
    if touched:
        marks = ",".join("?" * len(touched))
        changed += [f"log row {seq}: {event} {pid} {common.printable(detail or '', 120)}"
                    for seq, event, pid, detail in common.query(
                        database, f"SELECT seq, event, procedure_id, detail FROM delivery_log WHERE seq > ? AND "
                        f"procedure_id IN ({marks}) AND event != 'rejected' ORDER BY seq", [last_seq] + touched)]
    campaign.check("nothing already stored changed", not changed,
                   f"hash {digest(before)[:16]} -> {digest(after)[:16]}: {len(changed)} of {len(before)} rows",
                   items=changed)
    ok, text = common.audit_verify(campaign.args.bin, config)
    campaign.check("audit verify", ok, common.printable(text, 300))
    stop_time = daemon.terminate(15)
    campaign.check("SIGTERM stops the daemon", stop_time is not None,
                   f"in {stop_time:.1f} s" if stop_time is not None else "still running 15 s after SIGTERM")
    daemon.stop_hard()
    result = common.integrity(database)
    campaign.check("PRAGMA integrity_check", result == "ok", common.printable(result, 300))
    problems = common.journal_problems(daemon.log_bytes())
    campaign.check("the daemon's log: one clean event per line", not problems,
                   f"{len(problems)} bad lines", items=problems)
    campaign.check("0 hangs", hangs == 0, f"{hangs} calls with no answer")
    campaign.figure("spool entries", len(entries))
    campaign.figure("configurations and protocols", configs)
    campaign.figure("reloads", reloads)
    campaign.figure("CLI calls", calls)
    campaign.figure("inputs", len(entries) + configs + reloads + calls)
    campaign.figure("crashes", crashes + len(alive_problems))
    campaign.figure("hangs", hangs)
    campaign.figure("daemon RSS peak", f"{rss.peak / 1024:.0f} MB")


if __name__ == "__main__":
    sys.exit(common.main("hostile", body))

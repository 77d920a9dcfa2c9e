#!/usr/bin/env python3
"""Campaign storage: the daemon's state directory on a small tmpfs that the campaign fills while
reminders are ingested and delivered, then frees; the database held under an exclusive lock by
another process; the spool folder removed and recreated; SIGTERM while the disk is full.

Checks: the daemon says clearly what is wrong, never hangs (SIGTERM works within seconds), recovers
by itself once the fault is gone (no restart), loses nothing (every reminder reaches the receiver),
the database stays sound and the log verifies. The daemon runs with NOTIFY_SOCKET and WATCHDOG_USEC
pointing at a socket the campaign reads: the watchdog pings must stop while the disk is full and
come back after.

Needs root (mount -t tmpfs).
"""
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SIZES = {
    "small": {"batch": 25, "busy": 300, "full_hold": 25, "lock_hold": 12, "grow": [100, 300, 900, 2000]},
    "full": {"batch": 100, "busy": 1500, "full_hold": 40, "lock_hold": 30, "grow": [200, 600, 1800, 5000]},
}
STEPS = [("now", "+0s", "2h"), ("soon", "+5s", "2h"), ("later", "+12s", "2h")]
# Longer than the daemon's own retry pauses, as in the unit (WatchdogSec=30s): a daemon that only
# pauses between failed retries still feeds it, one that cannot progress must not.
WATCHDOG_USEC = 12_000_000
FULL_MESSAGE = re.compile(rb"(?i)(disk is full|no space|disk full|database or disk is full|SQLITE_FULL)")


class Filler:
    """Fills a filesystem with one file until the kernel says it is full; frees it again."""

    def __init__(self, folder):
        self.path = os.path.join(folder, "filler")

    def fill(self):
        written = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):
                chunk = b"\0" * size
                while True:
                    try:
                        count = os.write(fd, chunk)
                    except OSError:
                        break
                    if count <= 0:
                        break
                    written += count
        finally:
            os.close(fd)
        return written

    def free(self):
        if os.path.exists(self.path):
            os.unlink(self.path)


def body(campaign):
    size = SIZES[campaign.args.size]
    folder = campaign.workspace
    state = os.path.join(folder, "state")
    os.makedirs(state)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", state],
                             capture_output=True, text=True)
    if not campaign.check("tmpfs mounted for the state directory", mounted.returncode == 0,
                          (mounted.stderr.strip() + " (the storage campaign needs root)") if mounted.returncode else
                          "16 MiB"):
        return

    def unmount():
        if subprocess.run(["umount", state], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", state], capture_output=True)

    campaign.on_cleanup(unmount)
    receiver = common.Receiver(campaign)
    common.write_protocol(os.path.join(folder, "storage.toml"), "storage", STEPS)
    spool_root = os.path.join(folder, "spool")
    config = common.write_config(folder, receiver.port, state, ["storage.toml"], spool=spool_root)
    database = os.path.join(state, "aftercare.sqlite")
    spool = common.Spool(spool_root)
    notify = common.NotifySocket(campaign, os.path.join(folder, "notify.sock"))
    daemon = common.Daemon(campaign, campaign.args.bin, config, os.path.join(folder, "daemon.log"),
                           env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    filler = Filler(state)
    campaign.on_cleanup(filler.free)
    planned = set()
    batches = [0]

    def drop(count, label):
        batches[0] += 1
        ids = [f"{label}{batches[0]}-{n:05d}" for n in range(count)]
        spool.drop(common.jsonl(common.procedure(pid, "storage", common.now_iso()) for pid in ids))
        planned.update(f"{pid}.{step}" for pid in ids for step, _, _ in STEPS)
        return ids

    def stored(ids):
        try:
            marks = ",".join("?" * len(ids))
            return common.query(database, f"SELECT count(*) FROM procedure WHERE id IN ({marks})", ids)[0][0]
        except sqlite3.Error:
            return -1

    def delivered():
        return planned <= set(receiver.snapshot())

    def undelivered():
        return len(planned - set(receiver.snapshot()))

    daemon_started = time.monotonic()
    daemon.start()
    if not campaign.check("daemon ready", daemon.wait_for_log("aftercare ready", 60),
                          f"see {daemon.log_path}"):
        return
    pid = daemon.process.pid
    drop(size["batch"], "A")
    common.wait_until(lambda: not spool.waiting(), 30)

    time.sleep(WATCHDOG_USEC / 1e6)
    normal = notify.pings()
    normal_gap = max(b - a for a, b in zip(normal, normal[1:] + [time.monotonic()])) if normal else 0
    # sd_watchdog_enabled(3): ping at half the interval. Three quarters leaves room for scheduling.
    campaign.check("watchdog fed in normal operation", normal and normal_gap <= 0.75 * WATCHDOG_USEC / 1e6,
                   f"longest gap {normal_gap:.1f} s (at most {0.75 * WATCHDOG_USEC / 1e6:.0f} s); pings at "
                   + ", ".join(f"{at - daemon_started:.1f}" for at in normal) + " s after the start")

    # 1. The disk fills while the daemon ingests and delivers a busy queue.
    ahead = drop(size["busy"], "F")
    common.wait_until(lambda: stored(ahead) == len(ahead), 60)
    mark = len(daemon.log_bytes())
    filled_at = time.monotonic()
    filled = filler.fill()
    campaign.log(f"full disk: filler holds {filled / 1e6:.1f} MB; dropping more work until the daemon hits it")
    seen = False
    for count in size["grow"]:
        drop(count, "G")
        if common.wait_until(lambda: FULL_MESSAGE.search(daemon.log_bytes()[mark:]), 8):
            seen = True
            break
        filler.fill()
    error_at = time.monotonic()
    lines = [line for line in daemon.log_bytes()[mark:].splitlines() if FULL_MESSAGE.search(line)]
    campaign.check("full disk: the daemon says so", bool(lines),
                   common.printable(lines[0], 200) if lines else "no log line mentions a full disk")
    time.sleep(size["full_hold"])
    lines = [line for line in daemon.log_bytes()[mark:].splitlines() if FULL_MESSAGE.search(line)]
    dispatch_lines = [line for line in lines if not re.search(rb"(?i)intake", line)]
    campaign.log(f"full disk: {len(lines)} log lines about it, {len(dispatch_lines)} outside intake")
    campaign.check("full disk: the daemon stays up", daemon.alive(), f"exit {daemon.exit_code()}")
    freed_at = time.monotonic()
    filler.free()
    campaign.log(f"full disk: space freed after {freed_at - filled_at:.0f} s; {undelivered()} reminders still to go")
    ok = common.wait_until(lambda: delivered() and not spool.waiting(), 60 + len(planned) / 50)
    recovered_at = time.monotonic()
    campaign.check("full disk: recovers by itself, everything delivered", ok and daemon.alive() and
                   daemon.process.pid == pid,
                   f"in {recovered_at - freed_at:.0f} s" if ok else
                   f"{undelivered()} of {len(planned)} reminders never sent, {len(spool.waiting())} spool files "
                   f"waiting, {time.monotonic() - freed_at:.0f} s after the space came back")
    pings = notify.pings()
    window = [error_at] + [at for at in pings if error_at < at < freed_at] + [freed_at]
    gap = max(b - a for a, b in zip(window, window[1:]))
    campaign.check("full disk: watchdog pings stop while nothing can progress", gap >= WATCHDOG_USEC / 1e6,
                   f"longest gap {gap:.1f} s in {freed_at - error_at:.0f} s of full disk "
                   f"(WATCHDOG_USEC {WATCHDOG_USEC / 1e6:.0f} s; pings at "
                   + ", ".join(f"{at - error_at:.1f}" for at in window[1:-1]) + " s after the first error)")
    common.wait_until(lambda: [at for at in notify.pings() if at > recovered_at + 1], 2 * WATCHDOG_USEC / 1e6)
    after = [at for at in notify.pings() if at > recovered_at]
    campaign.check("full disk: watchdog pings resume after", len(after) >= 1,
                   f"{len(after)} pings in the {time.monotonic() - recovered_at:.0f} s after recovery")
    log = daemon.log_bytes()[mark:]
    misuse = [line for line in log.splitlines() if b"MISUSE" in line or b"leaked" in line]
    campaign.check("full disk: no leaked continuation", not misuse,
                   common.printable(misuse[0], 200) if misuse else "")

    # 2. Another process holds the database under an exclusive lock.
    ids = drop(size["batch"], "L")
    common.wait_until(lambda: stored(ids) == len(ids), 30)
    locked = threading.Event()
    release = threading.Event()

    def hold():
        connection = sqlite3.connect(database, timeout=30, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(size["lock_hold"])
        connection.execute("ROLLBACK")
        connection.close()

    holder = threading.Thread(target=hold, daemon=True)
    mark = len(daemon.log_bytes())
    holder.start()
    locked.wait(30)
    drop(size["batch"], "M")
    time.sleep(size["lock_hold"])
    release.set()
    holder.join(30)
    released_at = time.monotonic()
    campaign.check("locked database: the daemon stays up", daemon.alive(), f"exit {daemon.exit_code()}")
    ok = common.wait_until(lambda: delivered() and not spool.waiting(), 60 + len(planned) / 50)
    said = [line for line in daemon.log_bytes()[mark:].splitlines() if re.search(rb"(?i)lock|busy", line)]
    campaign.check("locked database: recovers by itself, everything delivered", ok and daemon.process.pid == pid,
                   f"in {time.monotonic() - released_at:.0f} s after a {size['lock_hold']} s lock; the daemon said: "
                   + (common.printable(said[0], 160) if said else "nothing") if ok else
                   f"{undelivered()} reminders never sent, {len(spool.waiting())} spool files waiting")

    # 3. The spool folder is removed while the daemon runs, then recreated.
    subprocess.run(["rm", "-rf", spool_root])
    time.sleep(3)
    recreated_by_daemon = os.path.isdir(spool.incoming)
    os.makedirs(spool.incoming, exist_ok=True)
    ids = drop(size["batch"], "S")
    ok = common.wait_until(lambda: stored(ids) == len(ids) and delivered(), 30)
    campaign.check("spool removed and recreated: new files are ingested without a restart", ok and daemon.alive()
                   and daemon.process.pid == pid,
                   ("the daemon recreated the spool itself" if recreated_by_daemon else
                    "the campaign recreated incoming/") + (f"; {stored(ids)} of {len(ids)} ingested" if not ok else ""))

    # 4. SIGTERM while the disk is full.
    ids = drop(size["batch"], "T")
    common.wait_until(lambda: stored(ids) == len(ids), 30)
    filler.fill()
    drop(size["batch"], "U")
    time.sleep(6)
    stop_time = daemon.terminate(12)
    campaign.check("full disk: SIGTERM stops the daemon within seconds", stop_time is not None,
                   f"in {stop_time:.1f} s" if stop_time is not None else "still running 12 s after SIGTERM")
    daemon.stop_hard()
    filler.free()
    daemon.start()
    ok = common.wait_until(lambda: delivered() and not spool.waiting(), 60 + len(planned) / 50)
    received = receiver.snapshot()
    lost = sorted(planned - set(received))
    unexpected = sorted(set(received) - planned)
    duplicates = sum(1 for count in received.values() if count > 1)
    campaign.check("lost = 0", ok and not lost,
                   f"{len(planned)} reminders planned" if not lost else f"{len(lost)} of {len(planned)} never sent",
                   items=lost[:20])
    campaign.check("unexpected = 0", not unexpected, f"{len(unexpected)} unknown webhook-ids", items=unexpected[:20])
    campaign.check("signatures valid", receiver.bad_signatures == 0, f"{receiver.bad_signatures} bad")
    code, figures, _ = common.status(campaign.args.bin, config)
    campaign.check("status Delivered equals the receiver's distinct ids",
                   figures.get("Delivered") == len(set(received) & planned),
                   f"status {figures.get('Delivered')}, receiver {len(set(received) & planned)}")
    ok, text = common.audit_verify(campaign.args.bin, config)
    campaign.check("audit verify", ok, common.printable(text, 300))
    daemon.terminate(15)
    daemon.stop_hard()
    result = common.integrity(database)
    campaign.check("PRAGMA integrity_check", result == "ok", common.printable(result, 300))
    problems = common.journal_problems(daemon.log_bytes())
    campaign.check("the daemon's log: one clean event per line", not problems, f"{len(problems)} bad lines",
                   items=problems)
    campaign.figure("reminders", len(planned))
    campaign.figure("faults", "disk full twice, database locked "
                    f"{size['lock_hold']} s, spool removed, SIGTERM on a full disk")
    campaign.figure("daemon starts", daemon.starts)
    campaign.figure("lost", len(lost))
    campaign.figure("unexpected", len(unexpected))
    campaign.figure("duplicates (same id)", duplicates)


if __name__ == "__main__":
    sys.exit(common.main("storage", body))

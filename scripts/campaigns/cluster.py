#!/usr/bin/env python3
"""Campaign cluster: several daemons on one PostgreSQL database share one queue of reminders, all due
within the run, sent to one loopback receiver that records every webhook-id. Meanwhile one daemon at
a time is kill -9ed at random moments (restarted at once), and once the database server's postmaster
is kill -9ed and restarted (crash recovery). Procedures arrive in files spread over the daemons'
spools; one file is dropped into two spools at the same moment (intake is idempotent by procedure id).

Checks: the queue drains; lost = 0 (every planned reminder reached the receiver, or is expired or
cancelled in both the store and the log); unexpected = 0 (no webhook-id the store did not plan, so a
re-send never comes under a new id); signatures valid; duplicates (same id) counted; every received
reminder `delivered` in the store with a delivered attempt in the log; every daemon claimed work;
the twin file's procedures stored once and both copies taken in; `status` and `show` agree with the
receiver; no daemon exited by itself except while the database was down (each exit restarted);
SIGTERM stops every daemon; `audit verify` intact on the shared database.

Small (CI): 2 daemons, 1,500 reminders, 4 daemon kills. Full: 3 daemons, 10,000 reminders, 10 kills.
Both: one kill -9 of the database server. Needs PostgreSQL's binaries (scripts/setup --tests).
"""
import glob
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_CLUSTER = os.path.join(REPO, "scripts", "pg-cluster")

# steps: (id, offset in seconds after the procedure); drops: files arrive over the first `drop_window`
# seconds; kills of a daemon fall in the first `kill_window` seconds, the database's kill in `db_window`.
SIZES = {
    "small": {
        "daemons": 2, "procedures": 300, "steps": [0, 8, 18, 30, 42], "files": 8, "drop_window": 20,
        "kills": 4, "kill_window": (3, 55), "db_window": (12, 35), "twins": 20,
    },
    "full": {
        "daemons": 3, "procedures": 2000, "steps": [0, 20, 45, 70, 100], "files": 24, "drop_window": 45,
        "kills": 10, "kill_window": (3, 115), "db_window": (30, 80), "twins": 50,
    },
}
STEP_NAMES = ["now", "soon", "mid", "late", "last"]
# A daemon that exits by itself this long after the database is back is a failure, not the outage.
OUTAGE_GRACE = 30.0
RESTART_PAUSE = 1.0


def psql_binary():
    """Debian's newest psql itself (not the pg_wrapper, which looks for clusters of its own)."""
    found = glob.glob("/usr/lib/postgresql/*/bin/psql")
    found.sort(key=lambda path: int(re.sub(r"\D", "", path.split("/")[4]) or 0))
    return found[-1] if found else "psql"


class PgServer:
    """The throwaway PostgreSQL server of scripts/pg-cluster, and a read-only look at its database."""

    def __init__(self, campaign, folder):
        self.campaign = campaign
        self.folder = folder
        self.psql = psql_binary()
        self.database = None
        self.port = None
        self.env = dict(os.environ)
        if not campaign.args.keep:
            # Stops the server and removes its folder should this campaign die without its clean-up.
            self.env["AFTERCARE_PG_OWNER"] = str(os.getpid())

    def _run(self, *args, timeout=180):
        result = subprocess.run(["bash", PG_CLUSTER, *args], capture_output=True, text=True, timeout=timeout,
                                env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"pg-cluster {args[0]}: {(result.stderr or result.stdout).strip()}")
        return result.stdout.strip()

    def start(self):
        url = self._run("start", self.folder)
        self.campaign.on_cleanup(self.stop)
        self.port = url.rsplit(":", 1)[1].split("/", 1)[0]
        with open(os.path.join(self.folder, "password")) as source:
            self.password = source.readline().strip()
        return url

    def createdb(self, name):
        url = self._run("createdb", self.folder, name)
        self.database = name
        return url

    def kill(self):
        self._run("kill", self.folder, timeout=60)

    def restart(self):
        self._run("restart", self.folder)

    def stop(self):
        if os.path.exists(os.path.join(self.folder, "data", "PG_VERSION")):
            self._run("stop", self.folder, timeout=90)

    def query(self, sql, timeout=60):
        """Rows of a query as tuples of strings (NULL is ''); raises when the server does not answer."""
        result = subprocess.run(
            [self.psql, "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", os.path.join(self.folder, "run"),
             "-p", self.port, "-U", "aftercare", "-d", self.database, "-c", sql],
            capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, PGPASSWORD=self.password, PGCONNECT_TIMEOUT="5"))
        if result.returncode != 0:
            raise RuntimeError(f"psql: {result.stderr.strip()}")
        return [tuple(line.split("\t")) for line in result.stdout.splitlines()]


class Fleet:
    """The daemons, each restarted when it exits by itself (with the exit noted); kills take the same
    lock, so a deliberate kill and restart is never mistaken for an exit."""

    def __init__(self, campaign, daemons):
        self.campaign = campaign
        self.daemons = daemons
        self.lock = threading.Lock()
        self.exits = []  # (name, exit code, seconds into the run, during the database outage)
        self.outage = None  # (start, end or None), monotonic
        self.last_start = {name: 0.0 for name in daemons}
        self.log_offset = {name: 0 for name in daemons}
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        for name in self.daemons:
            self._start(name)
        self.thread.start()

    def _start(self, name):
        daemon = self.daemons[name]
        self.log_offset[name] = len(daemon.log_bytes())
        daemon.start()
        daemon.noted = False
        self.last_start[name] = time.monotonic()

    def in_outage(self, moment):
        if self.outage is None:
            return False
        start, end = self.outage
        return start <= moment and (end is None or moment <= end + OUTAGE_GRACE)

    def _loop(self):
        while self.running:
            with self.lock:
                for name, daemon in self.daemons.items():
                    if not self.running or daemon.alive():
                        continue
                    now = time.monotonic()
                    if daemon.process is not None and daemon.process.returncode is not None \
                            and not getattr(daemon, "noted", False):
                        self.exits.append((name, daemon.exit_code(), now - self.campaign.started,
                                           self.in_outage(now)))
                        daemon.noted = True
                        self.campaign.log(f"{name} exited by itself with {daemon.exit_code()}"
                                          + (" (database down)" if self.in_outage(now) else ""))
                    if now - self.last_start[name] >= RESTART_PAUSE:
                        self._start(name)
            time.sleep(0.1)

    def kill9_and_restart(self, name):
        with self.lock:
            daemon = self.daemons[name]
            was_alive = daemon.alive()
            daemon.kill9()
            self._start(name)
        return was_alive

    def halt(self):
        self.running = False
        self.thread.join(5)


def body(campaign):
    size = SIZES[campaign.args.size]
    rng = random.Random(campaign.args.seed)
    workspace = campaign.workspace
    # The postgres user creates the cluster in here.
    os.chmod(workspace, 0o711)
    pg = PgServer(campaign, os.path.join(workspace, "pg"))
    pg.start()
    # 127.0.0.1: TLS is verified against the certificate's IP address entry, not a host name.
    url = pg.createdb("cluster")
    campaign.log(f"PostgreSQL at {url}")
    receiver = common.Receiver(campaign, delay=(0.0, 0.1), seed=campaign.args.seed)
    protocol = os.path.join(workspace, "cluster.toml")
    steps = [(STEP_NAMES[index], f"+{offset}s") for index, offset in enumerate(size["steps"])]
    common.write_protocol(protocol, "cluster", [(step, at, "1h") for step, at in steps])

    names = [f"daemon-{number}" for number in range(1, size["daemons"] + 1)]
    daemons, configs, spools = {}, {}, {}
    for name in names:
        folder = os.path.join(workspace, name)
        os.makedirs(folder)
        store = f"""
[store]
kind = "postgres"
url = "{url}"
password_file = "{os.path.join(pg.folder, 'password')}"
tls = "verify-full"
ca_file = "{os.path.join(pg.folder, 'ca.crt')}"
node = "{name}"
connections = 4
"""
        state = os.path.join(folder, "state")
        configs[name] = common.write_config(folder, receiver.port, state, [protocol], extra=store)
        spools[name] = common.Spool(os.path.join(state, "spool"))
        daemons[name] = common.Daemon(campaign, campaign.args.bin, configs[name], os.path.join(folder, "daemon.log"))
    fleet = Fleet(campaign, daemons)
    campaign.on_cleanup(fleet.halt)

    # The plan: procedures K-..., the first `twins` of them in one file dropped into two spools at once.
    ids = [f"K{campaign.args.seed}-{index:06d}" for index in range(size["procedures"])]
    planned = {f"{pid}.{step}" for pid in ids for step, _ in steps}
    twins, rest = ids[:size["twins"]], ids[size["twins"]:]
    cuts = sorted(rng.sample(range(1, len(rest)), size["files"] - 1))
    chunks = [rest[a:b] for a, b in zip([0] + cuts, cuts + [len(rest)])]
    events = [(0.0, "twin", twins)]
    events += [(rng.uniform(0, size["drop_window"]), "drop", chunk) for chunk in chunks]
    events += [(rng.uniform(*size["kill_window"]), "kill", rng.choice(names)) for _ in range(size["kills"])]
    events += [(rng.uniform(*size["db_window"]), "db", None)]
    events.sort(key=lambda event: event[0])

    fleet.start()
    for name, daemon in daemons.items():
        if not daemon.wait_for_log("aftercare ready", 60):
            campaign.check(f"{name} ready", False, f"no 'aftercare ready' within 60 s; log: {daemon.log_path}")
            return
    campaign.log(f"{len(names)} daemons ready; {len(planned)} reminders in {len(chunks) + 1} files, "
                 f"{size['kills']} daemon kills and 1 database kill to come")

    owners = {}
    sampling = {"on": True}

    def sample():
        while sampling["on"]:
            try:
                for owner, count in pg.query(
                        "SELECT lease_owner, count(*) FROM reminder WHERE state = 'claimed' GROUP BY 1", timeout=10):
                    owners[owner] = owners.get(owner, 0) + int(count)
            except Exception:
                pass  # the server is down for a moment: that is part of the campaign
            time.sleep(0.2)

    def claim_holders():
        try:
            return {owner for owner, in pg.query(
                "SELECT DISTINCT lease_owner FROM reminder WHERE state = 'claimed'", timeout=10) if owner in names}
        except Exception:
            return set()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    campaign.on_cleanup(lambda: sampling.update(on=False))

    started = time.monotonic()
    kills, kill_modes, twin_files = 0, {"holding claims": 0, "random": 0}, []
    db_down_for = 0.0
    for at, kind, what in events:
        pause = started + at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if kind == "twin":
            data = common.jsonl(common.procedure(pid, "cluster", common.now_iso()) for pid in twins)
            for name in names[:2]:
                twin_files.append((name, spools[name].drop(data, name="twin.jsonl")))
        elif kind == "drop":
            name = rng.choice(names)
            spools[name].drop(common.jsonl(common.procedure(pid, "cluster", common.now_iso()) for pid in what))
        elif kind == "kill":
            mode = rng.choice(["holding claims", "holding claims", "random"])
            if mode == "holding claims":
                # The victim is a daemon holding leases at this moment, with sends under way if any.
                holders = common.wait_until(lambda: claim_holders(), 5, interval=0.02)
                if holders:
                    what = rng.choice(sorted(holders))
                    common.wait_until(lambda: receiver.in_flight > 0, 1, interval=0.002)
                else:
                    mode = "random"
            kill_modes[mode] += 1
            if not fleet.kill9_and_restart(what):
                campaign.log(f"{what} was not running when its kill came (an exit of its own is noted)")
            kills += 1
        else:
            down = rng.uniform(1.0, 4.0)
            moment = time.monotonic()
            fleet.outage = (moment, None)
            pg.kill()
            campaign.log(f"database server killed (-9); restarting it in {down:.1f} s")
            time.sleep(down)
            pg.restart()
            fleet.outage = (moment, time.monotonic())
            db_down_for = fleet.outage[1] - moment
            campaign.log(f"database server back after {db_down_for:.1f} s")
    campaign.log(f"{kills} daemon kills ({kill_modes}) and the database kill done; waiting for the queue to drain")

    def drained():
        if any(spool.waiting() for spool in spools.values()):
            return False
        try:
            pending = pg.query("SELECT count(*) FROM reminder WHERE state IN ('scheduled', 'claimed')")[0][0]
            stored = pg.query("SELECT count(*) FROM procedure")[0][0]
        except Exception:
            return False
        return int(pending) == 0 and int(stored) == len(ids)

    ok = common.wait_until(drained, 90 + len(planned) / 50, interval=0.5)
    elapsed = time.monotonic() - started
    sampling["on"] = False
    campaign.check("queue drained", ok, f"after {elapsed:.0f} s" if ok else
                   f"still waiting after {elapsed:.0f} s: "
                   f"{sum(len(s.waiting()) for s in spools.values())} spool file(s); see the daemon logs")
    fleet.halt()
    campaign.check("every daemon alive at the end", all(d.alive() for d in daemons.values()),
                   ", ".join(f"{n} exited with {d.exit_code()}" for n, d in daemons.items() if not d.alive()))
    not_ready = [f"{name}: {daemon.log_path}" for name, daemon in daemons.items()
                 if b"aftercare ready" not in daemon.log_bytes()[fleet.log_offset[name]:]]
    campaign.check("every daemon's last start came up ready", not not_ready, "", items=not_ready)
    own_exits = [exit for exit in fleet.exits if not exit[3]]
    outage_exits = [exit for exit in fleet.exits if exit[3]]
    campaign.check("no daemon exited by itself outside the database outage (each exit restarted)", not own_exits,
                   f"{len(outage_exits)} exit(s) while the database was down, each restarted" if not own_exits else
                   f"{len(own_exits)} exit(s)",
                   items=[f"{n} exited with {code} at {at:.1f} s" for n, code, at, _ in own_exits])

    received = receiver.snapshot()
    states = {f"{pid}.{step}": state for pid, step, state in pg.query(
        "SELECT procedure_id, step_id, state FROM reminder")}
    logged = {}
    for pid, step, event, outcome in pg.query(
            "SELECT procedure_id, step_id, event, outcome FROM delivery_log WHERE procedure_id IS NOT NULL"):
        logged.setdefault(f"{pid}.{step}", set()).add(outcome if event == "attempt" else event)
    explained = {rid for rid in planned - set(received)
                 if states.get(rid) in ("expired", "cancelled") and states.get(rid) in logged.get(rid, set())}
    lost = sorted(planned - set(received) - explained)
    unexpected = sorted(set(received) - planned)
    duplicates = {rid: count for rid, count in received.items() if count > 1}
    campaign.check("lost = 0", not lost,
                   f"{len(lost)} of {len(planned)} never reached the receiver, e.g. "
                   + ", ".join(f"{rid} (state {states.get(rid)})" for rid in lost[:5]) if lost else
                   f"{len(planned)} planned, {len(planned) - len(explained)} received, "
                   f"{len(explained)} expired/cancelled")
    campaign.check("unexpected = 0 (a re-send never comes under a new id)", not unexpected,
                   f"{len(unexpected)} webhook-ids the store never planned, e.g. {unexpected[:5]}"
                   if unexpected else f"{len(duplicates)} id(s) sent more than once, each under its own id")
    campaign.check("signatures valid", receiver.bad_signatures == 0,
                   f"{receiver.bad_signatures} request(s) with a bad signature" if receiver.bad_signatures else "")
    extra_rows = sorted(set(states) - planned)
    campaign.check("the store holds exactly the planned reminders", not extra_rows and len(states) == len(planned),
                   f"{len(states)} rows for {len(planned)} planned"
                   + (f", e.g. {extra_rows[:5]}" if extra_rows else ""))
    not_delivered = {rid: state for rid, state in states.items() if rid in received and state != "delivered"}
    campaign.check("every received reminder is 'delivered' in the store", not not_delivered,
                   f"{len(not_delivered)} received but stored otherwise, e.g. {list(not_delivered.items())[:5]}"
                   if not_delivered else "")
    unlogged = sorted(rid for rid in received if rid in planned and "delivered" not in logged.get(rid, set()))
    campaign.check("every received reminder has a delivered attempt in the log", not unlogged,
                   f"{len(unlogged)} without one, e.g. {unlogged[:5]}" if unlogged else "")
    campaign.check("every daemon claimed reminders from the shared queue", all(owners.get(n) for n in names),
                   ", ".join(f"{n}: {owners.get(n, 0)}" for n in names) + " claims seen in samples of the leases")

    twin_stored = int(pg.query("SELECT count(*) FROM procedure WHERE id = ANY(ARRAY[%s])" % ",".join(
        f"'{pid}'" for pid in twins))[0][0])
    leftover = [f"{name}: {entry}" for name, spool in spools.items() if os.path.isdir(spool.rejected)
                for entry in os.listdir(spool.rejected)]
    twin_left = [f"{name}: {file}" for name, file in twin_files
                 if os.path.exists(os.path.join(spools[name].incoming, file))]
    campaign.check("the file dropped into two spools is stored once, both copies taken in",
                   twin_stored == len(twins) and not twin_left and not leftover,
                   f"{twin_stored} of {len(twins)} procedures stored, {len(twin_files)} copies"
                   + (f"; still waiting: {twin_left}" if twin_left else "")
                   + (f"; rejected: {leftover[:5]}" if leftover else ""))

    code, out, err, _ = common.cli(campaign.args.bin, ["status", "--format", "json"], config=configs[names[-1]],
                                   timeout=60)
    try:
        delivered_status = json.loads(out)["reminders"]["delivered"] if code == 0 else None
    except (ValueError, KeyError, TypeError):
        delivered_status = None
    received_planned = len(set(received) & planned)
    campaign.check("status: delivered equals the receiver's distinct ids", delivered_status == received_planned,
                   f"status says {delivered_status}, receiver saw {received_planned}"
                   + ("" if code == 0 else f" (exit {code}: {common.printable(err, 200)})"))
    shown = rng.sample(ids, 5)
    wrong = []
    for pid in shown:
        code, out, err, _ = common.cli(campaign.args.bin, ["show", pid], config=configs[rng.choice(names)])
        rows = {line.split()[0]: line.split()[1] for line in out.decode("utf-8", "replace").splitlines()
                if line.split() and line.split()[0] in STEP_NAMES and len(line.split()) > 1}
        expected = {step: states.get(f"{pid}.{step}") for step, _ in steps}
        if code != 0 or rows != expected:
            wrong.append(f"{pid}: exit {code}, shows {rows}, expected {expected} {common.printable(err, 200)}")
    campaign.check("show agrees with the store for 5 procedures", not wrong, ", ".join(shown) if not wrong else "",
                   items=wrong)

    slow = []
    for name, daemon in daemons.items():
        exit_time = daemon.terminate(15)
        if exit_time is None:
            slow.append(name)
        daemon.stop_hard()
    campaign.check("SIGTERM stops every daemon", not slow, f"still running 15 s after SIGTERM: {slow}" if slow else "")
    problems = [f"{name}: {problem}" for name, daemon in daemons.items()
                for problem in common.journal_problems(daemon.log_bytes())]
    errors = sum(daemon.log_bytes().count(b" error ") for daemon in daemons.values())
    campaign.check("every daemon's log is one clean event per line", not problems,
                   f"{errors} error event(s) in all, each ridden out" if not problems else "", items=problems)
    ok, text = common.audit_verify(campaign.args.bin, configs[names[0]])
    campaign.check("audit verify on the shared database", ok, common.printable(text, 300))
    recovered = int(pg.query("SELECT count(*) FROM delivery_log WHERE event = 'recovered'")[0][0])
    log_rows = int(pg.query("SELECT count(*) FROM delivery_log")[0][0])

    campaign.figure("daemons", len(names))
    campaign.figure("reminders", len(planned))
    campaign.figure("kills", f"{kills} of a daemon ({kill_modes['holding claims']} while it held leases), "
                    f"{sum(d.starts for d in daemons.values())} daemon starts in all")
    campaign.figure("db restart", f"1 kill -9 of the postmaster, back after {db_down_for:.1f} s")
    campaign.figure("error events in the daemons' logs", errors)
    campaign.figure("daemon exits of their own", f"{len(outage_exits)} during the outage, {len(own_exits)} otherwise")
    campaign.figure("claims seen per daemon", ", ".join(f"{n} {owners.get(n, 0)}" for n in names))
    campaign.figure("webhook requests", f"{receiver.total} ({receiver.aborted} cut off by a kill)")
    campaign.figure("delivered", received_planned)
    campaign.figure("duplicates (same id)", f"{len(duplicates)} ids, {sum(duplicates.values()) - len(duplicates)} "
                    f"extra sends (max {max(duplicates.values(), default=1)} times)")
    campaign.figure("lost", len(lost))
    campaign.figure("unexpected", len(unexpected))
    campaign.figure("leases returned to the queue (log 'recovered')", recovered)
    campaign.figure("delivery log rows", log_rows)
    campaign.figure("elapsed (first drop to drained)", f"{elapsed:.1f} s")


if __name__ == "__main__":
    sys.exit(common.main("cluster", body))

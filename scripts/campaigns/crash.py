#!/usr/bin/env python3
"""Campaign crash: kill -9 at random moments while reminders are ingested, claimed, sent and
recorded; restart each time; then prove nothing was lost, nothing unknown was sent, duplicates only
ever repeat the same webhook-id, the database is sound, the log verifies and `status` agrees with
what the receiver saw. Then kills during the ingest of one big JSONL file: all of it or none of it
is in the store after each kill, and all of it after a final restart.

Small (CI): 600 reminders x 4 kills x 1 seed, a 2,000-line file.
Full: 10,000 reminders x 20 kills x 5 seeds, a 50,000-line file.
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SIZES = {
    "small": {"reminders": 600, "kills": 4, "seeds": 1, "bulk": 2_000, "bulk_kills": 3},
    "full": {"reminders": 10_000, "kills": 20, "seeds": 5, "bulk": 50_000, "bulk_kills": 5},
}
STEPS = [("now", "+0s", "1h"), ("soon", "+4s", "1h"), ("later", "+9s", "1h"), ("last", "+15s", "1h")]


def run_seed(campaign, seed, size):
    rng = random.Random(seed)
    folder = os.path.join(campaign.workspace, f"seed-{seed}")
    os.makedirs(folder)
    state = os.path.join(folder, "state")
    receiver = common.Receiver(campaign, delay=(0.0, 0.05), seed=seed)
    common.write_protocol(os.path.join(folder, "crash.toml"), "crash", STEPS)
    config = common.write_config(folder, receiver.port, state, ["crash.toml"])
    database = os.path.join(state, "aftercare.sqlite")
    spool = common.Spool(os.path.join(state, "spool"))
    daemon = common.Daemon(campaign, campaign.args.bin, config, os.path.join(folder, "daemon.log"))

    procedures = size["reminders"] // len(STEPS)
    ids = [f"C{seed}-{index:06d}" for index in range(procedures)]
    planned = {f"{pid}.{step}" for pid in ids for step, _, _ in STEPS}
    kills = size["kills"]
    # Procedures arrive in one drop per round, of random sizes: some big, some a handful.
    cuts = sorted(rng.sample(range(1, procedures), kills - 1)) if kills > 1 else []
    chunks = [ids[a:b] for a, b in zip([0] + cuts, cuts + [procedures])]
    started = time.monotonic()
    daemon.start()
    moments = {"right after a drop": 0, "spool non-empty": 0, "sends under way": 0, "quiet": 0}
    for round_number, chunk in enumerate(chunks):
        # A chunk goes in as one to three files, the last of them the biggest.
        pieces = rng.randint(1, 3)
        bounds = sorted(rng.sample(range(1, len(chunk)), min(pieces - 1, len(chunk) - 1))) if len(chunk) > 1 else []
        for a, b in zip([0] + bounds, bounds + [len(chunk)]):
            spool.drop(common.jsonl(common.procedure(pid, "crash", common.now_iso()) for pid in chunk[a:b]))
        mode = rng.choice(["right after a drop", "mid-send", "mid-send", "random"])
        if mode == "right after a drop":
            time.sleep(rng.uniform(0, 0.05))
        elif mode == "mid-send":
            # Wait for a request to be under way at the receiver (it answers after up to 50 ms).
            common.wait_until(lambda: receiver.in_flight > 0, 5, interval=0.002)
            time.sleep(rng.uniform(0, 0.02))
        else:
            time.sleep(rng.uniform(0.05, 4))
        if mode == "right after a drop":
            moments[mode] += 1
        elif receiver.in_flight > 0:
            moments["sends under way"] += 1
        elif spool.waiting():
            moments["spool non-empty"] += 1
        else:
            moments["quiet"] += 1
        if not daemon.alive():
            campaign.check(f"seed {seed}: daemon alive before kill {round_number + 1}", False,
                           f"it had exited with {daemon.exit_code()}; log: {daemon.log_path}")
        daemon.kill9()
        daemon.start()
    campaign.log(f"seed {seed}: {kills} kills done ({moments}), waiting for the queue to drain")

    def drained():
        if spool.waiting():
            return False
        try:
            rows = common.query(
                database,
                "SELECT count(*) FROM reminder WHERE procedure_id LIKE ? AND state IN ('scheduled','claimed')",
                (f"C{seed}-%",))
            stored = common.query(database, "SELECT count(*) FROM procedure WHERE id LIKE ?", (f"C{seed}-%",))
        except Exception:
            return False
        return rows[0][0] == 0 and stored[0][0] == procedures

    ok = common.wait_until(drained, 90 + size["reminders"] / 50)
    elapsed = time.monotonic() - started
    campaign.check(f"seed {seed}: queue drained", ok,
                   f"after {elapsed:.0f} s" if ok else f"still waiting after {elapsed:.0f} s: "
                   f"{len(spool.waiting())} spool file(s), see {daemon.log_path}")
    campaign.check(f"seed {seed}: daemon alive at the end", daemon.alive(),
                   f"exit code {daemon.exit_code()}" if not daemon.alive() else "")

    received = receiver.snapshot()
    states = dict(((pid + "." + step), state) for pid, step, state in common.query(
        database, "SELECT procedure_id, step_id, state FROM reminder WHERE procedure_id LIKE ?", (f"C{seed}-%",)))
    logged = {}
    for pid, step, event, outcome in common.query(
            database, "SELECT procedure_id, step_id, event, outcome FROM delivery_log WHERE procedure_id LIKE ?",
            (f"C{seed}-%",)):
        logged.setdefault(f"{pid}.{step}", set()).add(outcome if event == "attempt" else event)
    # Lost: planned, never received, and not expired or cancelled as the store and the log both say.
    explained = {rid for rid in planned - set(received)
                 if states.get(rid) in ("expired", "cancelled") and states.get(rid) in logged.get(rid, set())}
    lost = sorted(planned - set(received) - explained)
    unexpected = sorted(set(received) - planned)
    duplicates = {rid: count for rid, count in received.items() if count > 1}
    campaign.check(f"seed {seed}: lost = 0", not lost,
                   f"{len(lost)} of {len(planned)} never reached the receiver, e.g. "
                   + ", ".join(f"{rid} (state {states.get(rid)})" for rid in lost[:5]) if lost else
                   f"{len(planned)} planned, {len(planned) - len(explained)} received, "
                   f"{len(explained)} expired/cancelled")
    campaign.check(f"seed {seed}: unexpected = 0", not unexpected,
                   f"{len(unexpected)} webhook-ids the store never planned, e.g. {unexpected[:5]}"
                   if unexpected else "")
    campaign.check(f"seed {seed}: signatures valid", receiver.bad_signatures == 0,
                   f"{receiver.bad_signatures} request(s) with a bad signature" if receiver.bad_signatures else "")
    not_delivered = {rid: state for rid, state in states.items() if rid in received and state != "delivered"}
    campaign.check(f"seed {seed}: every received reminder is 'delivered' in the store", not not_delivered,
                   f"{len(not_delivered)} received but stored otherwise, e.g. {list(not_delivered.items())[:5]}"
                   if not_delivered else "")
    unlogged = sorted(rid for rid in received if rid in planned and "delivered" not in logged.get(rid, set()))
    campaign.check(f"seed {seed}: every received reminder has a delivered attempt in the log", not unlogged,
                   f"{len(unlogged)} without one, e.g. {unlogged[:5]}" if unlogged else "")
    code, figures, text = common.status(campaign.args.bin, config)
    delivered_status = figures.get("Delivered")
    campaign.check(f"seed {seed}: status Delivered equals the receiver's distinct ids",
                   code == 0 and delivered_status == len(set(received) & planned),
                   f"status says {delivered_status}, receiver saw {len(set(received) & planned)}")
    exit_time = daemon.terminate(15)
    campaign.check(f"seed {seed}: SIGTERM stops the daemon", exit_time is not None,
                   f"in {exit_time:.1f} s" if exit_time is not None else "still running 15 s after SIGTERM")
    daemon.stop_hard()
    result = common.integrity(database)
    campaign.check(f"seed {seed}: PRAGMA integrity_check", result == "ok", common.printable(result, 300))
    ok, text = common.audit_verify(campaign.args.bin, config)
    campaign.check(f"seed {seed}: audit verify", ok, common.printable(text, 300))
    campaign.log(f"seed {seed}: {len(planned)} reminders, {kills} kills, {daemon.starts} starts, "
                 f"{receiver.total} requests (and {receiver.aborted} cut off by a kill), "
                 f"{len(duplicates)} duplicated ids "
                 f"(max {max(duplicates.values(), default=1)} times)")
    return {"reminders": len(planned), "kills": kills, "lost": len(lost), "unexpected": len(unexpected),
            "duplicates": len(duplicates), "requests": receiver.total}


def run_bulk(campaign, seed, size):
    """Kills during the ingest of big JSONL files: after every kill each file is all in, or not at all."""
    rng = random.Random(seed * 7919)
    folder = os.path.join(campaign.workspace, "bulk")
    os.makedirs(folder)
    state = os.path.join(folder, "state")
    receiver = common.Receiver(campaign)
    # Far in the future: the bulk is about intake, nothing of it falls due during the campaign.
    common.write_protocol(os.path.join(folder, "bulk.toml"), "bulk", [("month", "+30d", "1h")])
    config = common.write_config(folder, receiver.port, state, ["bulk.toml"])
    database = os.path.join(state, "aftercare.sqlite")
    spool = common.Spool(os.path.join(state, "spool"))
    daemon = common.Daemon(campaign, campaign.args.bin, config, os.path.join(folder, "daemon.log"))
    lines = size["bulk"]
    files = []

    def new_file():
        number = len(files)
        performed = common.now_iso()
        data = common.jsonl(common.procedure(f"B{number}-{index:06d}", "bulk", performed) for index in range(lines))
        spool.drop(data, name=f"bulk-{number}.jsonl")
        files.append(number)
        campaign.log(f"bulk: dropped bulk-{number}.jsonl ({lines} procedures, {len(data) / 1e6:.1f} MB)")

    def stored(number):
        try:
            return common.query(database, "SELECT count(*) FROM procedure WHERE id LIKE ?", (f"B{number}-%",))[0][0]
        except Exception:
            return 0

    # The database is created first, so the kills below find a start-up like any later one.
    daemon.start()
    daemon.wait_for_log("aftercare ready", 60)
    daemon.kill9()
    # Calibrate: how long one file takes from start to commit, so the kills land inside it.
    new_file()
    started = time.monotonic()
    daemon.start()
    common.wait_until(lambda: stored(0) == lines, 600, interval=0.02)
    estimate = max(0.05, time.monotonic() - started)
    daemon.kill9()
    campaign.log(f"bulk: one {lines}-line file takes about {estimate:.2f} s from start to commit")
    partial = []
    before = after = 0
    for kill in range(size["bulk_kills"]):
        if stored(files[-1]) == lines:
            new_file()
        daemon.start()
        time.sleep(rng.uniform(0.3, 1.0) * estimate)
        daemon.kill9()
        for number in files:
            count = stored(number)
            if count not in (0, lines):
                partial.append(f"bulk-{number}.jsonl: {count} of {lines} after kill {kill + 1}")
        # Aim the next kill earlier if this one came after the commit, later if before.
        if stored(files[-1]) == lines:
            after += 1
            estimate *= 0.6
        else:
            before += 1
            estimate *= 1.25
    campaign.check("bulk: all or nothing after every kill", not partial, "; ".join(partial[:5]) if partial else
                   f"{size['bulk_kills']} kills: {before} before the commit, {after} after it")
    daemon.start()
    ok = common.wait_until(lambda: all(stored(n) == lines for n in files) and not spool.waiting(), 120 + lines / 200)
    campaign.check("bulk: every file wholly in after a final restart", ok,
                   ", ".join(f"bulk-{n}.jsonl: {stored(n)} of {lines}" for n in files))
    daemon.terminate(15)
    daemon.stop_hard()
    result = common.integrity(database)
    campaign.check("bulk: PRAGMA integrity_check", result == "ok", common.printable(result, 300))
    ok, text = common.audit_verify(campaign.args.bin, config)
    campaign.check("bulk: audit verify", ok, common.printable(text, 300))
    return size["bulk_kills"], len(files) * lines, before


def body(campaign):
    size = SIZES[campaign.args.size]
    totals = {"reminders": 0, "kills": 0, "lost": 0, "unexpected": 0, "duplicates": 0, "requests": 0}
    seeds = [campaign.args.seed + offset for offset in range(size["seeds"])]
    for seed in seeds:
        for key, value in run_seed(campaign, seed, size).items():
            totals[key] += value
    bulk_kills, bulk_procedures, bulk_before = run_bulk(campaign, campaign.args.seed, size)
    campaign.figure("seeds", ", ".join(map(str, seeds)))
    campaign.figure("reminders", totals["reminders"])
    campaign.figure("kills", f"{totals['kills']} during delivery, {bulk_kills} during bulk ingest "
                    f"({bulk_before} before its commit)")
    campaign.figure("bulk procedures", bulk_procedures)
    campaign.figure("webhook requests", totals["requests"])
    campaign.figure("lost", totals["lost"])
    campaign.figure("unexpected", totals["unexpected"])
    campaign.figure("duplicates (same id)", totals["duplicates"])


if __name__ == "__main__":
    sys.exit(common.main("crash", body))

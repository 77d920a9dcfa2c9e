import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation

/// Issue 11, targets 4 and 5, on one database holding 1,000,000 scheduled reminders (procedures
/// performed now under a protocol whose six steps all come a day or more later):
///
/// 1. the daemon ingests them from the spool as it starts (its peak memory during bulk intake);
/// 2. a second daemon starts on that database: spawn to the `READY=1` datagram, then its CPU over
///    10 s with nothing due, and its resident memory;
/// 3. lateness, in that same daemon: procedures arrive through the spool whose one-step protocol
///    makes a reminder come due every 1/rate s for `window` s, starting a few seconds later; each
///    reminder's lateness is its arrival at the receiver (and its attempt's start, from the log)
///    minus its due time;
/// 4. a backlog: a fresh database with 100,000 reminders due at once, drained to a file outbox.
///
/// Every daemon's resident memory is sampled throughout, and its VmHWM read when it exits.
struct ScheduledBenchmark {
    let reminders: Int
    let receiver: Receiver
    let memory: Bool
    let startup: Bool
    let lateness: Bool
    /// Reminders coming due per second, and for how many seconds.
    let rate: Int
    let window: Int
    /// How long after the steady procedures are written the first of them comes due.
    let lead: Double = 6

    static let steadyProtocol = """
        id = "steady"
        title = "Benchmark: one step an hour after the procedure"

        [[steps]]
        id = "now"
        at = "+1h"
        valid_for = "12h"
        channels = ["sms"]
        subject = "Aftercare from {clinic_name}"
        body = "Hi {first_name}, a reminder from {clinic_name}: {clinic_phone}"
        """

    func run() async throws -> [Figure] {
        var figures: [Figure] = []
        let secretPath = NSTemporaryDirectory() + "aftercare-bench-secret-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: secretPath) }
        let bench = try Workbench(
            name: "scheduled", senders: try DeliveryBenchmark.senders(receiver: receiver, secretPath: secretPath),
            channels: "sms = \"gateway\"\nemail = \"gateway\"", laterSteps: true, extraProtocols: [Self.steadyProtocol])
        defer { bench.remove() }
        let procedures = (reminders + 5) / 6
        try bench.spoolProcedures(procedures, perFile: 2000, performedAt: Date())
        let database = try AftercareConfiguration.load(path: bench.configPath).paths.database
        let store = { try ReminderStore(path: database, readOnly: true) }

        // 1. Bulk intake as the daemon starts.
        do {
            let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon-intake.log")
            let ready = try daemon.waitUntilReady()
            daemon.stop()
            let scheduled = try await store().status(now: Date()).count(.scheduled)
            guard scheduled == procedures * 6 else {
                throw BenchError("\(scheduled) reminders scheduled, \(procedures * 6) expected (see \(daemon.logPath))")
            }
            report(
                "memory (bulk intake): the daemon ingested \(procedures) procedures (\(scheduled) reminders) "
                    + "from the spool "
                    + "as it started, READY after \(String(format: "%.1f", ready)) s; \(daemon.memoryLine)")
            if memory {
                figures.append(Figure(
                    name: "peak RSS, daemon ingesting \(scheduled.grouped) reminders at start-up", target: "< 64 MiB",
                    measured: mebibytes(daemon.peakKiB), met: daemon.peakKiB < 64 * 1024))
            }
        }

        // 2. Start-up and idle with a million scheduled.
        let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log")
        defer { daemon.stop() }
        let startupSeconds = try daemon.waitUntilReady()
        usleep(2_000_000)
        let cpuBefore = ProcessProbe.cpuSeconds(daemon.pid)
        let switchesBefore = ProcessProbe.contextSwitches(daemon.pid)
        let idleSeconds = 10.0
        usleep(UInt32(idleSeconds * 1_000_000))
        let cpuIdle = ProcessProbe.cpuSeconds(daemon.pid) - cpuBefore
        let wakeups = ProcessProbe.contextSwitches(from: switchesBefore, to: ProcessProbe.contextSwitches(daemon.pid))
        let idleRSS = ProcessProbe.memory(daemon.pid).rss
        report(
            "startup: spawn to READY=1 with \((procedures * 6).grouped) reminders scheduled: "
                + "\(String(format: "%.3f", startupSeconds)) s",
            "idle: \(String(format: "%.3f", cpuIdle)) CPU seconds over \(Int(idleSeconds)) s with nothing due "
                + "(\(String(format: "%.2f", cpuIdle / idleSeconds * 100)) % of a core, clock ticks of 10 ms), "
                + "\(wakeups) context switches across its threads; RSS \(mebibytes(idleRSS))")
        if startup {
            figures.append(Figure(
                name: "start-up to READY (sd_notify) with \((procedures * 6).grouped) scheduled", target: "< 1 s",
                measured: String(format: "%.3f s", startupSeconds), met: startupSeconds < 1))
        }
        if memory {
            figures.append(Figure(
                name: "CPU over 10 s while \((procedures * 6).grouped) reminders wait, nothing due", target: "0",
                measured: String(format: "%.2f s, %d context switches", cpuIdle, wakeups), met: cpuIdle == 0))
            figures.append(Figure(
                name: "RSS with \((procedures * 6).grouped) scheduled, idle", target: "< 64 MiB",
                measured: mebibytes(idleRSS), met: idleRSS < 64 * 1024))
        }

        // 3. Lateness with reminders coming due steadily.
        if lateness {
            figures += try await steady(bench: bench, database: database, daemon: daemon)
        }
        daemon.stop()
        report("startup/idle\(lateness ? "/lateness" : ""): daemon \(daemon.memoryLine)")
        figures.append(Figure(
            name: "peak RSS, daemon starting\(lateness ? ", idling and sending steadily" : " and idling") "
                + "with \((procedures * 6).grouped) scheduled",
            target: "< 64 MiB", measured: mebibytes(daemon.peakKiB), met: daemon.peakKiB < 64 * 1024))

        // 4. A backlog all due at once.
        if memory {
            figures.append(try backlog(procedures: 50_000))
        }
        return figures
    }

    private func steady(bench: Workbench, database: String, daemon: DaemonProcess) async throws -> [Figure] {
        let count = rate * window
        let spool = Spool(root: bench.state + "/spool")
        let mark = receiver.mark()
        let firstDue = Date().addingTimeInterval(lead)
        let firstMillis = Int64((firstDue.timeIntervalSince1970 * 1000).rounded())
        func due(_ index: Int) -> Double { Double(firstMillis) / 1000 + Double(index) / Double(rate) }
        // Performed an hour before each due time, under the one-step "+1h" protocol; written to
        // tmp/ and renamed into incoming/ as a well-behaved writer does.
        var index = 0
        var file = 0
        while index < count {
            var text = ""
            for _ in 0..<min(1000, count - index) {
                let performed = Self.utcMillis(due(index) - 3600)
                text += #"{"procedure_id":"L-\#(index)","protocol":"steady","performed_at":"\#(performed)","#
                text += #""patient":{"id":"MRN-L\#(index)","first_name":"Ana","time_zone":"America/New_York","#
                text += #""routes":[{"channel":"sms","to":"+1555\#(String(format: "%07d", index))"}]}}"#
                text += "\n"
                index += 1
            }
            let name = String(format: "L-%06d.jsonl", file)
            let staged = spool.temporary.appendingPathComponent(name + ".tmp").path
            try text.write(toFile: staged, atomically: false, encoding: .utf8)
            try FileManager.default.moveItem(atPath: staged, toPath: spool.incoming.appendingPathComponent(name).path)
            file += 1
        }
        let written = Date().timeIntervalSince(firstDue)
        let reader = try ReminderStore(path: database, readOnly: true)
        var intakeDone: Double?
        let cpuBefore = ProcessProbe.cpuSeconds(daemon.pid)
        let last = due(count - 1)
        while true {
            try await Task.sleep(for: .milliseconds(100))
            guard daemon.isRunning else { throw BenchError("the daemon exited: \(daemon.tail())") }
            let now = Date().timeIntervalSince1970
            if intakeDone == nil, try spool.pendingFiles().isEmpty { intakeDone = now - Double(firstMillis) / 1000 }
            if now > last + 1, try await reader.dueOrClaimedCount(now: Date()) == 0 { break }
            if now > last + 120 { throw BenchError("reminders still due 2 minutes after the last due time") }
        }
        let cpu = ProcessProbe.cpuSeconds(daemon.pid) - cpuBefore
        // The due times as stored, checked against the ones meant (first, middle, last).
        for probe in [0, count / 2, count - 1] {
            guard let (_, reminders) = try await reader.procedure("L-\(probe)"), let stored = reminders.first else {
                throw BenchError("procedure L-\(probe) was not ingested (see \(daemon.logPath))")
            }
            guard abs(stored.dueAt.timeIntervalSince1970 - due(probe)) < 0.002 else {
                throw BenchError("L-\(probe) is due at \(stored.dueAt.timeIntervalSince1970), not \(due(probe))")
            }
        }
        let log = try await reader.auditLog(AuditFilter(stepID: "now")).filter { $0.entry.startedAt != nil }
        let delivered = log.filter { $0.entry.outcome == "delivered" }
        guard delivered.count == count else {
            throw BenchError("\(delivered.count) of \(count) steady reminders delivered (\(log.count) attempts)")
        }
        let started = delivered.compactMap { record -> Double? in
            guard let id = record.entry.procedureID, let index = Int(id.dropFirst(2)),
                let start = record.entry.startedAt
            else { return nil }
            return start.timeIntervalSince1970 - due(index)
        }
        let arrived = receiver.entries(since: mark).compactMap { entry -> Double? in
            guard entry.webhookID.hasPrefix("L-"), let dot = entry.webhookID.firstIndex(of: "."),
                let index = Int(entry.webhookID[entry.webhookID.index(entry.webhookID.startIndex, offsetBy: 2)..<dot])
            else { return nil }
            return entry.at - due(index)
        }
        guard arrived.count >= count else {
            throw BenchError("the receiver saw \(arrived.count) of \(count) steady reminders")
        }
        let sent = Percentiles(started)
        let arrival = Percentiles(arrived)
        report(
            "lateness: \(count) reminders due one every \(String(format: "%.1f", 1000 / Double(rate))) ms "
                + "for \(window) s "
                + "beside \((reminders).grouped) scheduled; written to the spool \(String(format: "%.1f", -written)) s "
                + "before the first came due, ingested \(intakeDone.map(Self.relative) ?? "?")",
            "lateness: receiver arrival minus due: \(arrival.line); attempt start minus due: \(sent.line); "
                + "\(log.count - delivered.count) retried attempts; daemon CPU \(String(format: "%.1f", cpu)) s "
                + "while they were sent")
        return [
            Figure(
                name: "lateness p50 at \(rate.grouped) reminders/s due (receiver arrival − due)", target: "< 50 ms",
                measured: String(format: "%.1f ms (attempt start: %.1f ms)", arrival.p50 * 1000, sent.p50 * 1000),
                met: arrival.p50 < 0.050),
            Figure(
                name: "lateness p99 (max in brackets)", target: "< 500 ms",
                measured: String(format: "%.1f ms (max %.0f ms)", arrival.p99 * 1000, arrival.max * 1000),
                met: arrival.p99 < 0.500),
        ]
    }

    /// `1.5 s before it` or `0.2 s after it`.
    static func relative(_ offset: Double) -> String {
        String(format: "%.1f s ", abs(offset)) + (offset < 0 ? "before it" : "after it")
    }

    /// `2026-11-29T12:00:00.123+00:00`: intake takes a fraction of a second.
    static func utcMillis(_ seconds: Double) -> String {
        let millis = Int64((seconds * 1000).rounded())
        let whole = Timestamp.format(Date(timeIntervalSince1970: Double(millis / 1000)), in: .gmt)
        return String(whole.dropLast(6)) + String(format: ".%03d", Int(millis % 1000)) + "+00:00"
    }

    private func backlog(procedures: Int) throws -> Figure {
        let outbox = "/dev/shm/aftercare-bench-outbox-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: outbox) }
        let bench = try Workbench(name: "backlog", outbox: outbox)
        defer { bench.remove() }
        // Procedures performed now: their two 0 h reminders are due at once.
        try bench.spoolProcedures(procedures, perFile: 2000, performedAt: Date())
        let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log")
        defer { daemon.stop() }
        let start = ContinuousClock.now
        let expected = procedures * 2
        while true {
            let done = (try? FileManager.default.contentsOfDirectory(atPath: outbox).count) ?? 0
            if done >= expected { break }
            guard daemon.isRunning else { throw BenchError("the daemon exited: \(daemon.tail())") }
            if seconds(since: start) > 600 {
                throw BenchError("backlog not drained in 10 minutes (\(done) of \(expected))")
            }
            usleep(50_000)
        }
        let elapsed = seconds(since: start)
        daemon.stop()
        report(
            "memory (backlog): ingested \(procedures) procedures and drained \(expected) due reminders "
                + "to a file outbox "
                + "in \(String(format: "%.1f", elapsed)) s; \(daemon.memoryLine)")
        return Figure(
            name: "peak RSS, daemon ingesting and draining a \(expected.grouped)-reminder backlog", target: "< 64 MiB",
            measured: mebibytes(daemon.peakKiB), met: daemon.peakKiB < 64 * 1024)
    }
}

/// p50, p99 and the extremes of a set of durations in seconds (nearest rank).
struct Percentiles {
    let p50: Double
    let p99: Double
    let min: Double
    let max: Double

    init(_ values: [Double]) {
        let sorted = values.sorted()
        func rank(_ q: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            return sorted[Swift.min(sorted.count - 1, Int((q * Double(sorted.count)).rounded(.up)) - 1)]
        }
        p50 = rank(0.5)
        p99 = rank(0.99)
        min = sorted.first ?? .nan
        max = sorted.last ?? .nan
    }

    var line: String {
        String(
            format: "p50 %.1f ms, p99 %.1f ms, max %.1f ms, min %.1f ms",
            p50 * 1000, p99 * 1000, max * 1000, min * 1000)
    }
}

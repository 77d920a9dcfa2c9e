import Foundation

/// DESIGN 9: under 64 MiB resident with 1,000,000 reminders scheduled, and while draining a backlog;
/// no CPU while nothing is due.
///
/// Runs the real daemon binary (`aftercare daemon`) on a database holding the scheduled reminders
/// (procedures performed a week ahead, so nothing is due), reads its resident memory from
/// /proc/PID/status and its CPU time from /proc/PID/stat over an idle stretch. Then a backlog: a
/// fresh database with reminders all due at once, drained to a file outbox on tmpfs, sampling the
/// peak resident memory (VmHWM) until the last one is delivered.
struct MemoryBenchmark {
    let reminders: Int

    func run() async throws {
        try scheduled()
        try backlog(procedures: 50_000)
    }

    private func scheduled() throws {
        // Performed now, under a protocol whose steps all come a day or more later: everything is
        // scheduled and nothing is due. (A performed time days ahead, as before, is refused at intake.)
        let bench = try Workbench(name: "memory", laterSteps: true)
        defer { bench.remove() }
        let procedures = (reminders + 5) / 6
        try bench.spoolProcedures(procedures, perFile: 2000, performedAt: Date())
        let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log")
        defer { daemon.stop() }
        let start = ContinuousClock.now
        try daemon.waitUntilReady()
        let ingestSeconds = seconds(since: start)
        // Let start-up settle, then watch it idle.
        usleep(2_000_000)
        let cpuBefore = ProcessProbe.cpuSeconds(daemon.pid)
        let idleSeconds = 10.0
        usleep(UInt32(idleSeconds * 1_000_000))
        let cpuIdle = ProcessProbe.cpuSeconds(daemon.pid) - cpuBefore
        let memory = ProcessProbe.memory(daemon.pid)
        report(
            "memory (scheduled): \(procedures * 6) reminders scheduled (start-up with ingest \(String(format: "%.1f", ingestSeconds)) s); "
                + "RSS \(memory.rss / 1024) MiB now, peak \(memory.peak / 1024) MiB; target < 64 MiB: "
                + "\(memory.rss < 64 * 1024 ? "met" : "NOT met")",
            "idle: \(String(format: "%.3f", cpuIdle)) CPU seconds over \(Int(idleSeconds)) s with nothing due "
                + "(\(String(format: "%.2f", cpuIdle / idleSeconds * 100)) % of a core)"
        )
    }

    private func backlog(procedures: Int) throws {
        let outbox = "/dev/shm/aftercare-bench-outbox-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: outbox) }
        let bench = try Workbench(name: "backlog", outbox: outbox)
        defer { bench.remove() }
        // Procedures performed now: their two 0 h reminders are due at once.
        try bench.spoolProcedures(procedures, perFile: 2000, performedAt: Date())
        let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log")
        defer { daemon.stop() }
        let start = ContinuousClock.now
        var peak = 0
        let expected = procedures * 2
        while true {
            peak = max(peak, ProcessProbe.memory(daemon.pid).rss)
            let done = (try? FileManager.default.contentsOfDirectory(atPath: outbox).count) ?? 0
            if done >= expected { break }
            guard daemon.process.isRunning else { throw BenchError("the daemon exited: \(daemon.tail())") }
            if seconds(since: start) > 600 { throw BenchError("backlog not drained in 10 minutes (\(done) of \(expected))") }
            usleep(50_000)
        }
        let elapsed = seconds(since: start)
        let hwm = ProcessProbe.memory(daemon.pid).peak
        report(
            "memory (backlog): ingested \(procedures) procedures and drained \(expected) due reminders to a file outbox "
                + "in \(String(format: "%.1f", elapsed)) s; peak RSS \(max(peak, hwm) / 1024) MiB; target < 64 MiB: "
                + "\(max(peak, hwm) < 64 * 1024 ? "met" : "NOT met")"
        )
    }
}

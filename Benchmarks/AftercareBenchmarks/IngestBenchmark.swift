import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Logging

/// Issue 11, target 2: ingest and plan 100,000 procedures (600,000 reminders) from the spool in 2 s or less.
///
/// Measures the daemon's own intake pass (read, parse, validate, plan, one SQLite transaction per
/// batch of files with `synchronous = FULL`, remove the files) on a real database file, from the
/// moment the files are waiting to the moment the spool is empty.
struct IngestBenchmark {
    let procedures: Int

    func run() async throws -> Figure {
        let bench = try Workbench(name: "ingest")
        defer { bench.remove() }
        let performed = Date()
        try bench.spoolProcedures(procedures, perFile: 1000, performedAt: performed)
        let config = try AftercareConfiguration.load(path: bench.configPath)
        let store = try ReminderStore(path: config.paths.database)
        let spool = Spool(root: config.paths.spool)
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let intake = Intake(spool: spool, store: store, config: config, clock: SystemClock(), logger: logger)

        let start = ContinuousClock.now
        try await bench.drainSpool(intake)
        let elapsed = seconds(since: start)

        let status = try await store.status(now: performed)
        let reminders = status.countsByState.values.reduce(0, +)
        report(
            "ingest: \(status.procedures) procedures, \(reminders) reminders from \(procedures / 1000) JSON Lines spool files "
                + "in \(String(format: "%.2f", elapsed)) s (\(Int(Double(status.procedures) / elapsed)) procedures/s); "
                + "target ≤ 2 s: \(elapsed <= 2 ? "met" : "NOT met")"
        )
        guard status.procedures == procedures else {
            throw BenchError("only \(status.procedures) of \(procedures) procedures were ingested")
        }
        return Figure(
            name: "ingest and plan \(procedures.grouped) procedures (\(reminders.grouped) reminders) from the spool",
            target: "≤ 2 s", measured: String(format: "%.2f s", elapsed), met: elapsed <= 2)
    }
}

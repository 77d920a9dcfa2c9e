import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Logging

/// Issue 4: how long `aftercare audit verify` takes on a delivery log of a million rows.
///
/// The log is built the way the daemon builds it: procedures performed ten days ago are ingested
/// (one `ingested` row and six `expired` rows each, every row hash-chained in its transaction).
/// Then the real binary runs `aftercare audit verify` on the file, timed from start to exit.
struct AuditBenchmark {
    let rows: Int

    func run() async throws -> Figure {
        let bench = try Workbench(name: "audit")
        defer { bench.remove() }
        let procedures = (rows + 6) / 7
        try bench.spoolProcedures(procedures, perFile: 5000, performedAt: Date().addingTimeInterval(-10 * 86400), force: true)
        let config = try AftercareConfiguration.load(path: bench.configPath)
        let store = try ReminderStore(path: config.paths.database)
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let spool = Spool(root: config.paths.spool)
        let intake = Intake(spool: spool, store: store, config: config, clock: SystemClock(), logger: logger)
        let buildStart = ContinuousClock.now
        try await bench.drainSpool(intake)
        let built = seconds(since: buildStart)
        let head = try await store.logHead()

        let process = Process()
        process.executableURL = Workbench.binFolder.appendingPathComponent("aftercare")
        process.arguments = ["audit", "verify", "--config", bench.configPath]
        let output = Pipe()
        process.standardOutput = output
        let start = ContinuousClock.now
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let elapsed = seconds(since: start)
        guard process.terminationStatus == 0, text.contains("intact: \(head?.seq ?? -1) rows") else {
            throw BenchError("audit verify did not confirm the chain: \(text)")
        }
        report(
            "audit: `aftercare audit verify` confirmed a chain of \(head?.seq ?? 0) rows in \(String(format: "%.2f", elapsed)) s "
                + "(\(Int(Double(head?.seq ?? 0) / elapsed)) rows/s); the log took \(String(format: "%.1f", built)) s to build "
                + "through intake"
        )
        return Figure(
            name: "`aftercare audit verify` on a \(Int(head?.seq ?? 0).grouped)-row log", target: "≤ 1.5 s",
            measured: String(format: "%.2f s", elapsed), met: elapsed <= 1.5)
    }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Logging

/// Issue 11, target 1: the real daemon binary delivering signed webhooks to nginx on loopback, every
/// attempt committed to the log, against `wrk`'s rate on the same receiver in the same run: a GET,
/// and a POST whose body is the size of aftercare's bodies as the receiver saw them.
///
/// The database is filled first (not timed); then the daemon starts with every reminder due. The
/// rate runs from the first attempt's start (read from the delivery log) to the moment the store
/// shows none due or claimed, i.e. every outcome committed with its log row.
struct DeliveryBenchmark {
    let messages: Int
    let receiver: Receiver

    /// What one delivery run measured.
    struct Result {
        var rate: Double
        var bodyBytes: Int
        var requestBytes: Int
        var peakKiB: Int
    }

    static let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

    /// The config's webhook sender, pointing at `receiver`, signing with ``secret`` read from `secretPath`.
    static func senders(receiver: Receiver, secretPath: String) throws -> String {
        try (secret + "\n").write(toFile: secretPath, atomically: true, encoding: .utf8)
        return """
            [senders.gateway]
            kind = "webhook"
            url = "\(receiver.url)"
            allow_insecure_http = true
            secret_file = "\(secretPath)"
            """
    }

    func run(quiet: Bool = false) async throws -> Result {
        let secretPath = NSTemporaryDirectory() + "aftercare-bench-secret-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: secretPath) }
        let bench = try Workbench(
            name: "delivery",
            senders: try Self.senders(receiver: receiver, secretPath: secretPath),
            channels: "sms = \"gateway\"",
            dispatch: "batch_size = 256\nmax_concurrent = 256\nmax_per_host = 256"
        )
        defer { bench.remove() }

        // Fill the database: procedures performed now, two reminders each due at once.
        let procedures = messages / 2
        try bench.spoolProcedures(procedures, perFile: 5000, performedAt: Date())
        let config = try AftercareConfiguration.load(path: bench.configPath)
        do {
            let store = try ReminderStore(path: config.paths.database)
            var logger = Logger(label: "bench")
            logger.logLevel = .warning
            let intake = Intake(
                spool: Spool(root: config.paths.spool), store: store, config: config, clock: SystemClock(),
                logger: logger)
            try await bench.drainSpool(intake)
        }
        let expected = procedures * 2
        let mark = receiver.mark()

        let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log")
        defer { daemon.stop() }
        try daemon.waitUntilReady()
        let ready = ContinuousClock.now
        let store = try ReminderStore(path: config.paths.database, readOnly: true)
        // Watch the queue drain with a query that costs the machine next to nothing (two index
        // probes, not counts: counting a 100,000-entry index 50 times a second took half a core
        // from the daemon on this 2-core machine).
        while try await store.hasDueOrClaimed(now: Date()) {
            try await Task.sleep(for: .milliseconds(20))
            guard daemon.isRunning else { throw BenchError("the daemon exited: \(daemon.tail())") }
            if seconds(since: ready) > 600 {
                let unsettled = try await store.dueOrClaimedCount(now: Date())
                throw BenchError("\(unsettled) of \(expected) still unsettled after 10 minutes")
            }
        }
        let drained = Date()
        let fromReady = seconds(since: ready)
        daemon.stop()
        let delivered = try await store.status(now: Date()).count(.delivered)
        guard delivered == expected else {
            throw BenchError("only \(delivered) of \(expected) reminders were delivered")
        }
        let attempts = try await store.auditLog(AuditFilter(outcome: "delivered"))
        guard attempts.count == expected, let first = attempts.compactMap(\.entry.startedAt).min() else {
            throw BenchError("the log holds \(attempts.count) delivered attempts for \(expected) reminders")
        }
        let elapsed = drained.timeIntervalSince(first)
        let rate = Double(expected) / elapsed
        let seen = receiver.entries(since: mark).filter { !$0.webhookID.isEmpty && $0.webhookID != "-" }
        guard seen.count == expected, let bodies = seen.map({ $0.bodyBytes ?? 0 }).max() else {
            throw BenchError("the receiver saw \(seen.count) webhooks for \(expected) reminders")
        }
        let bodyBytes = Int((Double(seen.reduce(0) { $0 + ($1.bodyBytes ?? 0) }) / Double(seen.count)).rounded())
        let requestBytes = Int((Double(seen.reduce(0) { $0 + $1.requestBytes }) / Double(seen.count)).rounded())
        if !quiet {
            report(
                "delivery: \(expected) signed webhooks delivered by the daemon in \(String(format: "%.2f", elapsed)) s "
                    + "(first attempt's start to last outcome committed; "
                    + "\(String(format: "%.2f", fromReady)) s from READY) "
                    + "= \(Int(rate))/s; the receiver saw \(seen.count) requests, \(attempts.count) delivered attempts "
                    + "are in the log",
                "delivery: aftercare's bodies as the receiver saw them: \(bodyBytes) bytes on average "
                    + "(largest \(bodies)), "
                    + "request line and headers \(requestBytes) bytes",
                "delivery: daemon \(daemon.memoryLine)"
            )
        }
        return Result(rate: rate, bodyBytes: bodyBytes, requestBytes: requestBytes, peakKiB: daemon.peakKiB)
    }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Logging

/// Issue 12: the delivery rate on the shared PostgreSQL store, with one daemon and with two on the
/// same database (each its own process, state folder and node name), to the same nginx as the
/// delivery part. A throwaway cluster (`scripts/pg-cluster`, fsync on, TLS verified) holds a new
/// database per run. The backlog is ingested first (not timed); then the daemons start and the rate
/// runs from the first attempt's start to the moment the store shows none due or claimed.
struct ClusterBenchmark {
    let messages: Int
    let receiver: Receiver

    /// The cluster for every run of the part; stopped at the end.
    final class Server {
        let folder: String
        let password: String

        init() throws {
            folder = NSTemporaryDirectory() + "aftercare-bench-pg-" + UUID().uuidString
            _ = try Self.script(["start", folder])
            password = try String(contentsOfFile: folder + "/password", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// A new empty database: its `[store]` lines for daemon `node`.
        func database(_ name: String) throws -> (url: String, store: (String) -> String) {
            let url = try Self.script(["createdb", folder, name]).trimmingCharacters(in: .whitespacesAndNewlines)
            let passwordFile = folder + "/password"
            let ca = folder + "/ca.crt"
            return (url, { node in
                """
                kind = "postgres"
                url = "\(url)"
                password_file = "\(passwordFile)"
                ca_file = "\(ca)"
                node = "\(node)"
                """
            })
        }

        func stop() {
            _ = try? Self.script(["stop", folder])
            try? FileManager.default.removeItem(atPath: folder)
        }

        static func script(_ arguments: [String]) throws -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = [Workbench.repositoryRoot.appendingPathComponent("scripts/pg-cluster").path] + arguments
            let output = Pipe()
            process.standardOutput = output
            try process.run()
            let data = output.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw BenchError("scripts/pg-cluster \(arguments.joined(separator: " ")) failed")
            }
            return String(decoding: data, as: UTF8.self)
        }
    }

    struct Result {
        var daemons: Int
        var rate: Double
        var duplicates: Int
    }

    func run(daemons count: Int, server: Server) async throws -> Result {
        let secretPath = NSTemporaryDirectory() + "aftercare-bench-secret-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: secretPath) }
        let database = try server.database("bench_\(count)_\(UInt32.random(in: 0...UInt32.max))")
        var benches: [Workbench] = []
        defer { for bench in benches { bench.remove() } }
        for index in 1...count {
            benches.append(
                try Workbench(
                    name: "cluster-\(index)",
                    senders: try DeliveryBenchmark.senders(receiver: receiver, secretPath: secretPath),
                    channels: "sms = \"gateway\"",
                    dispatch: "batch_size = 256\nmax_concurrent = 256\nmax_per_host = 256",
                    store: database.store("bench-\(index)")))
        }
        let procedures = messages / 2
        try benches[0].spoolProcedures(procedures, perFile: 5000, performedAt: Date())
        let config = try AftercareConfiguration.load(path: benches[0].configPath)
        let store = try await StoreOpener.open(config.store, sqlitePath: config.paths.database)
        defer { Task { await store.close() } }
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let intake = Intake(
            spool: Spool(root: config.paths.spool), store: store, config: config, clock: SystemClock(), logger: logger)
        try await benches[0].drainSpool(intake)
        let expected = procedures * 2
        let mark = receiver.mark()

        var processes: [DaemonProcess] = []
        defer { for process in processes { process.stop() } }
        for bench in benches {
            processes.append(try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log"))
        }
        for process in processes { try process.waitUntilReady() }
        let ready = ContinuousClock.now
        while try await store.hasDueOrClaimed(now: Date()) {
            try await Task.sleep(for: .milliseconds(20))
            for process in processes where !process.isRunning {
                throw BenchError("a daemon exited: \(process.tail())")
            }
            if seconds(since: ready) > 600 { throw BenchError("still unsettled after 10 minutes") }
        }
        let drained = Date()
        for process in processes { process.stop() }
        let delivered = try await store.status(now: Date()).count(.delivered)
        guard delivered == expected else { throw BenchError("only \(delivered) of \(expected) reminders were delivered") }
        let attempts = try await store.auditLog(AuditFilter(outcome: "delivered"))
        guard let first = attempts.compactMap(\.entry.startedAt).min() else {
            throw BenchError("no delivered attempt in the log")
        }
        let seen = receiver.entries(since: mark).filter { !$0.webhookID.isEmpty && $0.webhookID != "-" }
        let unique = Set(seen.map(\.webhookID)).count
        guard unique == expected else {
            throw BenchError("the receiver saw \(unique) distinct webhook ids for \(expected) reminders")
        }
        let verdict = try await store.verifyLog()
        guard verdict.isIntact else { throw BenchError("the shared log does not verify: \(verdict)") }
        let elapsed = drained.timeIntervalSince(first)
        let rate = Double(expected) / elapsed
        report(
            "cluster: \(count) daemon(s) on one PostgreSQL delivered \(expected) signed webhooks in "
                + "\(String(format: "%.2f", elapsed)) s = \(Int(rate))/s; the receiver saw \(seen.count) requests "
                + "(\(seen.count - unique) repeated ids), the log holds \(attempts.count) delivered attempts and verifies",
            "cluster: " + processes.enumerated().map { "daemon \($0.offset + 1) \($0.element.memoryLine)" }
                .joined(separator: "; "))
        return Result(daemons: count, rate: rate, duplicates: seen.count - unique)
    }
}

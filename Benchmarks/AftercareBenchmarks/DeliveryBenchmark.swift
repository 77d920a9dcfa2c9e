import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Logging

/// DESIGN 9: 20,000 signed webhooks per second or more to a fast loopback HTTP receiver, every
/// attempt committed to the log; and `wrk`'s rate on the same receiver, and the ratio.
///
/// The receiver is nginx answering 204 to every POST on 127.0.0.1, with its access log on, so the
/// number of requests it saw is counted. The database is filled first (not timed); then the real
/// daemon binary starts with nothing to ingest and every reminder due, and the clock runs from its
/// ready line until the database shows the last reminder delivered (each with its log row).
struct DeliveryBenchmark {
    let messages: Int

    func run() async throws {
        guard let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].first(where: FileManager.default.isExecutableFile) else {
            throw BenchError("nginx is not installed (apt-get install nginx-light wrk)")
        }
        let port = 18_000 + Int.random(in: 0..<2000)
        let receiver = try Receiver(nginx: nginx, port: port)
        defer { receiver.stop() }

        let secretPath = NSTemporaryDirectory() + "aftercare-bench-secret-" + UUID().uuidString
        try "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n".write(toFile: secretPath, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: secretPath) }
        let bench = try Workbench(
            name: "delivery",
            senders: """
                [senders.gateway]
                kind = "webhook"
                url = "http://127.0.0.1:\(port)/hooks/aftercare"
                allow_insecure_http = true
                secret_file = "\(secretPath)"
                """,
            channels: "sms = \"gateway\"",
            dispatch: "batch_size = 1024\nmax_concurrent = 256\nmax_per_host = 256"
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
            let intake = Intake(spool: Spool(root: config.paths.spool), store: store, config: config, clock: SystemClock(), logger: logger)
            try await bench.drainSpool(intake)
        }
        let expected = procedures * 2
        let seenBefore = receiver.requestCount()

        let daemon = try DaemonProcess(configPath: bench.configPath, logPath: bench.root + "/daemon.log")
        defer { daemon.stop() }
        try daemon.waitUntilReady()
        let start = ContinuousClock.now
        let store = try ReminderStore(path: config.paths.database, readOnly: true)
        // Watch the queue drain with a query that costs the machine next to nothing (two partial
        // index counts), so the measurement does not take CPU from the daemon.
        var unsettled = expected
        while unsettled > 0 {
            try await Task.sleep(for: .milliseconds(50))
            unsettled = try await store.dueOrClaimedCount(now: Date())
            guard daemon.process.isRunning else { throw BenchError("the daemon exited: \(daemon.tail())") }
            if seconds(since: start) > 600 { throw BenchError("\(unsettled) of \(expected) still unsettled after 10 minutes") }
        }
        let elapsed = seconds(since: start)
        daemon.stop()
        let delivered = try await store.status(now: Date()).count(.delivered)
        guard delivered == expected else { throw BenchError("only \(delivered) of \(expected) reminders were delivered") }
        let attempts = try await store.auditLog(AuditFilter(outcome: "delivered")).count
        let received = receiver.requestCount() - seenBefore
        let rate = Double(expected) / elapsed

        let wrkRate = try receiver.wrkRate()
        report(
            "delivery: \(expected) signed webhooks delivered by the daemon in \(String(format: "%.2f", elapsed)) s = "
                + "\(Int(rate))/s (receiver saw \(received) requests; \(attempts) delivered attempts in the log); "
                + "target ≥ 20000/s: \(rate >= 20000 ? "met" : "NOT met")",
            "delivery: wrk on the same receiver: \(wrkRate.map { "\(Int($0))/s" } ?? "wrk not installed"); "
                + "aftercare/wrk = \(wrkRate.map { String(format: "%.2f", rate / $0) } ?? "n/a")"
        )
    }
}

/// nginx on 127.0.0.1 answering 204 to everything, counting requests in its access log.
final class Receiver {
    let process = Process()
    let prefix: String
    let port: Int

    init(nginx: String, port: Int) throws {
        self.port = port
        prefix = NSTemporaryDirectory() + "aftercare-bench-nginx-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: prefix + "/logs", withIntermediateDirectories: true)
        let conf = """
            worker_processes 1;
            error_log \(prefix)/logs/error.log warn;
            pid \(prefix)/nginx.pid;
            events { worker_connections 4096; }
            http {
                access_log \(prefix)/logs/access.log combined buffer=1m flush=1s;
                client_body_temp_path \(prefix)/body;
                keepalive_requests 1000000;
                server {
                    listen 127.0.0.1:\(port) reuseport;
                    location / { return 204; }
                }
            }
            """
        try conf.write(toFile: prefix + "/nginx.conf", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: nginx)
        process.arguments = ["-p", prefix, "-c", prefix + "/nginx.conf", "-g", "daemon off;"]
        try process.run()
        usleep(300_000)
        guard process.isRunning else { throw BenchError("nginx did not start (see \(prefix)/logs/error.log)") }
    }

    func requestCount() -> Int {
        usleep(1_200_000)  // the access log flushes every second
        guard let data = FileManager.default.contents(atPath: prefix + "/logs/access.log") else { return 0 }
        return data.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
    }

    /// `wrk`'s requests per second against the same receiver (2 threads, 64 connections, 10 s).
    func wrkRate() throws -> Double? {
        guard let wrk = ["/usr/bin/wrk", "/usr/local/bin/wrk"].first(where: FileManager.default.isExecutableFile) else {
            return nil
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: wrk)
        process.arguments = ["-t2", "-c64", "-d10s", "http://127.0.0.1:\(port)/hooks/aftercare"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("Requests/sec:") }) else { return nil }
        return Double(line.split(separator: " ").last ?? "")
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: prefix)
    }
}

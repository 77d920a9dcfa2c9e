import Foundation
import Testing

/// The HTTP receiver from the delivery tests, run for the whole system.
final class Receiver: Sendable {
    let port: Int
    let log: String
    private let process: Process

    init(secret: String) throws {
        log = NSTemporaryDirectory() + "aftercare-receiver-\(UUID().uuidString).jsonl"
        let script = CLIHarness.repositoryRoot.appendingPathComponent("Tests/AftercareDeliveryTests/Servers/http_receiver.py").path
        let process = Process()
        let python = ProcessInfo.processInfo.environment["AFTERCARE_TEST_PYTHON"]
        process.executableURL = URL(fileURLWithPath: python ?? "/usr/bin/env")
        process.arguments = (python == nil ? ["python3"] : []) + [script, "--log", log, "--secret", secret]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        self.process = process
        let line = String(decoding: output.fileHandleForReading.availableData, as: UTF8.self)
        guard line.hasPrefix("READY "), let port = Int(line.dropFirst(6).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            kill(process.processIdentifier, SIGKILL)
            throw CLIError("the receiver did not start: \(line)")
        }
        self.port = port
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: log)
    }

    func requests() -> [[String: Any]] {
        ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }
}

struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

@Suite("The whole system delivering signed webhooks", .serialized)
struct WebhookEndToEndTests {
    static let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

    func harness(receiver: Receiver, path: String, attempts: Int = 3) throws -> CLIHarness {
        let secretFile = NSTemporaryDirectory() + "aftercare-secret-" + UUID().uuidString
        try (Self.secret + "\n").write(toFile: secretFile, atomically: true, encoding: .utf8)
        return try CLIHarness(
            channels: "sms = \"gateway\"",
            extra: """
                [senders.gateway]
                kind = "webhook"
                url = "http://127.0.0.1:\(receiver.port)\(path)"
                allow_insecure_http = true
                secret_file = "\(secretFile)"
                connect_timeout = "2s"
                total_timeout = "5s"

                [retry]
                initial_delay = "1s"
                multiplier = 2.0
                max_delay = "2s"
                max_attempts = \(attempts)
                jitter = 0.0
                """)
    }

    @Test("a reminder goes out signed, is retried after a 503 under the same id, and the audit tells the story")
    func retriedThenDelivered() throws {
        let receiver = try Receiver(secret: Self.secret)
        let harness = try harness(receiver: receiver, path: "/flaky/1")
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        let add = try harness.run([
            "add", "--procedure", "W-1", "--patient", "MRN-5", "--performed-at", "now", "--route", "sms:+15551234567",
        ])
        #expect(add.status == 0, "\(add.stderr)")
        // Two 0 h reminders, each answered 503 once and then 204.
        #expect(harness.eventually(timeout: 20) { receiver.requests().filter { $0["answered"] as? Int == 204 }.count == 2 },
                "daemon log: \(harness.daemonLog)")
        let requests = receiver.requests()
        #expect(requests.count == 4)
        #expect(requests.allSatisfy { $0["signature_valid"] as? Bool == true })
        let ids = requests.compactMap { ($0["headers"] as? [String: String])?["webhook-id"] }
        #expect(ids.sorted() == ["W-1.activity", "W-1.activity", "W-1.ice", "W-1.ice"])
        let audit = try harness.run(["audit", "--procedure", "W-1", "--step", "ice", "--format", "jsonl"])
        #expect(audit.status == 0)
        let rows = audit.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let attempts = rows.filter { $0["event"] as? String == "attempt" }
        #expect(attempts.map { $0["outcome"] as? String } == ["retry", "delivered"])
        #expect(attempts.map { $0["response_code"] as? Int } == [503, 204])
        #expect(attempts.map { $0["attempt"] as? Int } == [1, 2])
        #expect(attempts.allSatisfy { $0["destination"] as? String == "+1******4567" })
        let verify = try harness.run(["audit", "verify"])
        #expect(verify.status == 0)
        #expect(verify.stdout.hasPrefix("delivery log intact:"))
        daemon.terminate()
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0)
    }

    @Test("a receiver that refuses makes the reminder dead; replay re-queues it and the log names who asked")
    func deadThenReplayed() throws {
        let receiver = try Receiver(secret: Self.secret)
        let harness = try harness(receiver: receiver, path: "/status/410")
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        let add = try harness.run([
            "add", "--procedure", "W-2", "--patient", "MRN-6", "--performed-at", "now", "--route", "sms:+15551234567",
        ])
        #expect(add.status == 0, "\(add.stderr)")
        #expect(harness.eventually(timeout: 20) {
            (try? harness.run(["status"]).stdout.range(of: #"Dead\s+2"#, options: .regularExpression)) != nil
        })
        // Each reminder that died is its own warning line in the journal, saying which and why.
        let warnings = harness.daemonLog.split(separator: "\n").filter { $0.contains(" warning reminder W-2.") }
        #expect(warnings.contains { $0.hasSuffix(" warning reminder W-2.ice dead: HTTP 410") }, "\(harness.daemonLog)")
        #expect(warnings.count == 2, "\(harness.daemonLog)")
        let replay = try harness.run(["replay", "--reminder", "W-2.ice"])
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(replay.stdout.contains("The daemon has taken it."))
        #expect(harness.eventually(timeout: 20) { receiver.requests().count == 3 })
        let audit = try harness.run(["audit", "--procedure", "W-2", "--step", "ice", "--format", "jsonl"])
        let events = audit.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        #expect(events.map { $0["event"] as? String } == ["attempt", "dead", "replayed", "attempt", "dead"])
        let replayed = try #require(events.first { $0["event"] as? String == "replayed" })
        #expect((replayed["actor"] as? String)?.isEmpty == false)
        let notDead = try harness.run(["replay", "--reminder", "W-2.nothing"])
        #expect(notDead.status != 0)
        daemon.terminate()
        daemon.waitUntilExit()
    }
}

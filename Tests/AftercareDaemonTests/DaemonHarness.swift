import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareDelivery
import AftercareStore
import AftercareTestKit
import Foundation
import Logging
import Synchronization

/// A daemon in a temporary state folder with its own config, run on a manual clock.
final class DaemonHarness: Sendable {
    let root: String
    let clock: ManualClock
    let daemon: AftercareDaemon
    private let ownsRoot: Bool
    private let task: Mutex<Task<Void, any Error>?> = Mutex(nil)

    /// - Parameters:
    ///   - quietHours: `start`/`end` for `[quiet_hours]`, or `nil` for none.
    ///   - makeSender: substitutes the senders (default: the real file sender).
    init(
        start: Date,
        quietHours: (String, String)? = nil,
        dispatchExtra: String = "",
        notifier: any ServiceManagerNotifier = SilentNotifier(),
        makeSender: SenderMaker? = nil
    ) throws {
        root = NSTemporaryDirectory() + "aftercare-daemon-tests-" + UUID().uuidString
        ownsRoot = true
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let quiet = quietHours.map { "[quiet_hours]\nstart = \"\($0.0)\"\nend = \"\($0.1)\"\n" } ?? ""
        let config = TestClinic.config(
            """
            \(quiet)
            [retry]
            initial_delay = "30s"
            multiplier = 2.0
            max_delay = "10m"
            max_attempts = 3
            jitter = 0.0

            [dispatch]
            batch_size = 64
            lease = "5m"
            max_concurrent = 8
            max_per_host = 8
            shutdown_grace = "10s"
            \(dispatchExtra)
            """)
        try config.write(toFile: root + "/aftercare.toml", atomically: true, encoding: .utf8)
        clock = ManualClock(start)
        var logger = Logger(label: "aftercare-test")
        logger.logLevel = ProcessInfo.processInfo.environment["AFTERCARE_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        daemon = AftercareDaemon(
            configPath: root + "/aftercare.toml", clock: clock, logger: logger, notifier: notifier, handlesSIGHUP: false,
            makeSender: makeSender ?? { name, settings, _ in
                guard case .file(let outbox) = settings else { throw DaemonError("unexpected sender \(name)") }
                return try FileSender(outbox: URL(fileURLWithPath: outbox))
            }
        )
    }

    /// A second daemon on the same state folder and clock, as after a restart.
    init(reusing old: DaemonHarness, makeSender: @escaping SenderMaker) {
        root = old.root
        clock = old.clock
        ownsRoot = false
        var logger = Logger(label: "aftercare-test")
        logger.logLevel = ProcessInfo.processInfo.environment["AFTERCARE_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
        daemon = AftercareDaemon(
            configPath: root + "/aftercare.toml", clock: clock, logger: logger, handlesSIGHUP: false,
            makeSender: makeSender
        )
    }

    deinit {
        if ownsRoot { try? FileManager.default.removeItem(atPath: root) }
    }

    var state: String { root + "/state" }
    var outbox: String { state + "/outbox" }
    var spool: Spool { Spool(root: state + "/spool") }

    func start() {
        let daemon = self.daemon
        task.withLock { $0 = Task { try await daemon.run() } }
    }

    /// Asks the daemon to stop and waits for `run()` to return.
    func stop() async throws {
        daemon.requestShutdown()
        try await task.withLock { $0 }?.value
    }

    /// The reminder ids in the outbox, sorted.
    func outboxFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: outbox)) ?? [])
            .filter { $0.hasSuffix(".txt") && !$0.hasPrefix(".") }
            .map { String($0.dropLast(4)) }.sorted()
    }

    func outboxText(_ reminderID: String) throws -> String {
        try String(contentsOfFile: outbox + "/" + reminderID + ".txt", encoding: .utf8)
    }

    func store() throws -> ReminderStore { try ReminderStore(path: state + "/aftercare.sqlite", readOnly: true) }

    /// Polls (in real time) until `condition` holds; false if it never did within `timeout` seconds.
    func eventually(timeout: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return try await condition()
    }

    /// Waits until the store has recorded `count` deliveries (outcomes are recorded in groups, a
    /// moment after the outbox file appears).
    func deliveredCount(reaches count: Int) async -> Bool {
        guard let store = try? store() else { return false }
        return await eventually { (try? await store.status(now: clock.now()))?.count(.delivered) == count }
    }

    /// Waits until the daemon is asleep on the manual clock with nothing left to do now: the spool is
    /// empty and it sleeps on the clock. Lets a test assert that nothing more happens at this instant.
    func settle() async {
        let store = try? store()
        // Nothing claimed means every send under way has had its outcome recorded.
        _ = await eventually {
            guard (try? spool.pendingFiles().isEmpty) == true, clock.sleeperCount > 0 else { return false }
            return (try? await store?.status(now: clock.now()))?.count(.claimed) == 0
        }
        try? await Task.sleep(for: .milliseconds(100))
    }

    static func procedure(_ id: String, at performed: Date, zone: String = "America/New_York",
                          routes: [ContactRoute] = [ContactRoute(channel: "sms", address: "+15551234567")])
        -> Procedure
    {
        Procedure(
            id: id, protocolID: "trigger-point-injection", performedAt: performed,
            patient: Patient(id: "MRN-\(id)", firstName: "Ana", timeZone: zone, routes: routes)
        )
    }
}

/// A sender that records what it was given, answers as told, and can be slowed down.
final class RecordingSender: Sender {
    private let sent = Mutex<[OutboundMessage]>([])
    private let answer: @Sendable (OutboundMessage) -> SendResult
    private let delay: Duration

    init(delay: Duration = .zero, answer: @escaping @Sendable (OutboundMessage) -> SendResult = { _ in
        SendResult(.delivered(detail: "recorded"))
    }) {
        self.delay = delay
        self.answer = answer
    }

    var messages: [OutboundMessage] { sent.withLock { $0 } }

    func send(_ message: OutboundMessage) async -> SendResult {
        if delay > .zero { try? await Task.sleep(for: delay) }
        sent.withLock { $0.append(message) }
        return answer(message)
    }

    func shutdown() async {}
}

/// A service manager that counts what the daemon tells it, with a watchdog armed.
final class RecordingNotifier: ServiceManagerNotifier {
    private let pings = Mutex(0)
    private let lines = Mutex<[String]>([])
    let watchdogInterval: Duration?

    init(watchdogInterval: Duration? = .milliseconds(200)) { self.watchdogInterval = watchdogInterval }

    var pingCount: Int { pings.withLock { $0 } }
    var statusLines: [String] { lines.withLock { $0 } }

    func ready(status: String?) { if let status { lines.withLock { $0.append("READY " + status) } } }
    func status(_ text: String) { lines.withLock { $0.append(text) } }
    func reloading(status: String?) {}
    func stopping(status: String?) {}
    func watchdogPing() { pings.withLock { $0 += 1 } }
}

import AftercareCore
import AftercareDaemon
import AftercareDelivery
import AftercareStore
import Foundation
import Logging
import Synchronization
import Testing

/// Keeps every line logged at notice or above, for tests that read what the journal would get.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    var all: [String] { lines.withLock { $0 } }
    func append(_ line: String) { lines.withLock { $0.append(line) } }
}

struct CapturingLogHandler: LogHandler {
    let sink: CapturedLines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .notice

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
        function: String, line: UInt
    ) {
        sink.append("\(message)")
    }
}

@Suite("The daemon's journal as a witness of the log head")
struct LogWitnessTests {
    static let afternoon = Timestamp.parse("2026-11-25T14:00:00-05:00")!

    @Test("the head is written at start and again, at most hourly on the clock, as outcomes are recorded")
    func headIsWitnessed() async throws {
        let harness = try DaemonHarness(start: Self.afternoon)
        let lines = CapturedLines()
        let daemon = AftercareDaemon(
            configPath: harness.root + "/aftercare.toml", clock: harness.clock,
            logger: Logger(label: "witness") { _ in CapturingLogHandler(sink: lines) }, handlesSIGHUP: false,
            makeSender: { _, settings, _ in
                guard case .file(let outbox) = settings else { throw DaemonError("unexpected sender") }
                return try FileSender(outbox: URL(fileURLWithPath: outbox))
            })
        let task = Task { try await daemon.run() }
        func heads() -> [String] { lines.all.filter { $0.hasPrefix("delivery log head:") } }
        #expect(await harness.eventually { heads() == ["delivery log head: the log is empty"] })

        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-1", at: Self.afternoon))], label: "P-1")
        #expect(await harness.eventually { harness.outboxFiles().count == 2 })
        await harness.settle()
        // Within the hour: no second line, however many outcomes were recorded.
        #expect(heads().count == 1)

        harness.clock.set(Self.afternoon.addingTimeInterval(86400))
        #expect(await harness.eventually { harness.outboxFiles().count == 4 })
        #expect(await harness.eventually { heads().count == 2 })
        await harness.settle()
        daemon.requestShutdown()
        try await task.value

        // The line names a real row and hash, and the log verifies against it.
        let line = try #require(heads().last)
        let anchorText = try #require(line.split(separator: " ").last?.dropLast())
        let anchor = try LogAnchor(parsing: String(anchorText))
        let report = try await harness.store().verifyLog(anchor: anchor)
        #expect(report.anchoredSeq == anchor.seq)
        guard case .intact = report.verdict else {
            Issue.record("the witnessed head must hold: \(report)")
            return
        }
    }
}

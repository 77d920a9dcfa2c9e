import AftercareCore
@testable import AftercareDelivery
import Foundation
import Testing

@Suite("The outbox writes and fsyncs on its own queue, not on the cooperative pool", .timeLimit(.minutes(1)))
struct FileSenderTests {
    static func outbox() -> URL {
        URL(fileURLWithPath: NSTemporaryDirectory() + "aftercare-outbox-" + UUID().uuidString)
    }

    static func files(_ outbox: URL) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? []).sorted()
    }

    @Test("sends wait for a held writer without holding the pool; then every file is there, whole")
    func writesOffThePool() async throws {
        let folder = Self.outbox()
        defer { try? FileManager.default.removeItem(at: folder) }
        let sender = try FileSender(outbox: folder)
        // Stands for a disk that takes its time: the writer is busy until the gate opens.
        let gate = DispatchSemaphore(value: 0)
        sender.writer.async { gate.wait() }
        // More sends than the pool has threads: were they writing on it, nothing else could run.
        let sends = Task {
            await withTaskGroup(of: SendResult.self) { group in
                for index in 0..<16 { group.addTask { await sender.send(message("P-\(index).ice")) } }
                return await group.reduce(into: []) { $0.append($1) }
            }
        }
        for _ in 0..<20 {
            let value = await Task.detached { 42 }.value
            #expect(value == 42)
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(Self.files(folder).isEmpty, "a message was written on the calling thread")
        gate.signal()
        let results = await sends.value
        #expect(results.count == 16)
        for index in 0..<16 {
            #expect(results.contains(SendResult(.delivered(detail: "written to outbox/P-\(index).ice.txt"))))
        }
        #expect(Self.files(folder) == (0..<16).map { "P-\($0).ice.txt" }.sorted())
        let text = try String(contentsOf: folder.appendingPathComponent("P-3.ice.txt"), encoding: .utf8)
        #expect(text == FileSender.render(message("P-3.ice")))
        #expect(text.hasPrefix("Reminder-Id: P-3.ice\nProcedure-Id: P-3\n"))
        await sender.shutdown()
    }

    @Test("submit: completion once; a ticket cancelled before the write abandons it, a later cancel does nothing")
    func submitAndCancel() async throws {
        let folder = Self.outbox()
        defer { try? FileManager.default.removeItem(at: folder) }
        let sender = try FileSender(outbox: folder)
        let gate = DispatchSemaphore(value: 0)
        sender.writer.async { gate.wait() }
        let completions = Completions()
        let abandoned = sender.submit(message("P-1.ice"), completion: completions.record("abandoned"))
        let written = sender.submit(message("P-2.ice"), completion: completions.record("written"))
        abandoned.cancel()
        gate.signal()
        await sender.shutdown()  // waits for the queued writes
        written.cancel()
        #expect(completions.all.count == 2)
        #expect(completions.results("abandoned") == [
            SendResult(.retry(after: nil, reason: "cancelled before it was written")),
        ])
        #expect(completions.results("written") == [SendResult(.delivered(detail: "written to outbox/P-2.ice.txt"))])
        #expect(Self.files(folder) == ["P-2.ice.txt"])
    }

    @Test("a write that fails is a retry, reported through submit too")
    func failedWrite() async throws {
        let folder = Self.outbox()
        let sender = try FileSender(outbox: folder)
        try FileManager.default.removeItem(at: folder)
        let result = await sender.send(message("P-1.ice"))
        guard case .retry(nil, let reason) = result.outcome else {
            Issue.record("\(result)")
            return
        }
        #expect(reason.hasPrefix("outbox write failed: "))
    }
}

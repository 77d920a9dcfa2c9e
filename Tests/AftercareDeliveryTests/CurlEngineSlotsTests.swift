import AftercareCore
@testable import AftercareDelivery
import Foundation
import Testing

@Suite("Transfer slots: a try's time limits start when it is sent, not while it waits for a slot")
struct CurlEngineSlotsTests {
    static func post(_ server: LoopbackServer, _ path: String, timeout: Double) -> CurlRequest {
        CurlRequest(
            url: "http://127.0.0.1:\(server.port)\(path)",
            kind: .httpPost(headers: ["Content-Type: application/json"], body: Data("{}".utf8)),
            protocols: "http",
            transport: TransportSettings(
                connectTimeout: timeout, totalTimeout: timeout, lowSpeedBytes: 1, lowSpeedSeconds: 30, caFile: nil)
        )
    }

    /// The milliseconds libcurl says a timed-out transfer ran ("… timed out after 1001 milliseconds …").
    static func elapsedMilliseconds(_ error: String) -> Int? {
        guard let range = error.range(of: #"after \d+ m"#, options: .regularExpression) else { return nil }
        return Int(error[range].dropFirst(6).dropLast(2))
    }

    @Test("six tries to a receiver that never answers, two slots: each runs its full second before it times out")
    func queuedTriesGetTheirWholeTimeLimit() async throws {
        let receiver = try LoopbackServer(script: "http_receiver.py", arguments: ["--log", "{folder}/requests.jsonl"])
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 2)
        let responses = await withTaskGroup(of: CurlResponse.self) { group in
            for _ in 0..<6 { group.addTask { await engine.perform(Self.post(receiver, "/hang", timeout: 1)) } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        await engine.shutdown()
        #expect(responses.count == 6)
        for response in responses {
            // CURLE_OPERATION_TIMEDOUT, after the whole limit; before, the queued ones failed "after 0 ms".
            #expect(response.code == 28, "\(response.error)")
            let elapsed = Self.elapsedMilliseconds(response.error)
            #expect((elapsed ?? 0) >= 900, "\(response.error)")
        }
        // Every try reached the receiver: none was failed while it waited.
        #expect(receiver.requests().filter { ($0["path"] as? String) == "/hang" }.count == 6)
    }

    @Test("a receiver that hangs holds its own slots only: another host is served at once")
    func hangingHostDoesNotBlockAnother() async throws {
        let hanging = try LoopbackServer(script: "http_receiver.py", arguments: ["--log", "{folder}/requests.jsonl"])
        let healthy = try LoopbackServer(script: "http_receiver.py", arguments: ["--log", "{folder}/requests.jsonl"])
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 2)
        let stuck = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { _ = await engine.perform(Self.post(hanging, "/hang", timeout: 3)) } }
            }
        }
        // Let the hanging host take its two slots and queue two more.
        let deadline = Date().addingTimeInterval(5)
        while hanging.requests().count < 2, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let started = ContinuousClock.now
        let answer = await engine.perform(Self.post(healthy, "/ok", timeout: 3))
        let waited = ContinuousClock.now - started
        #expect(answer.succeeded && answer.responseCode == 204, "\(answer.error)")
        #expect(waited < .seconds(2), "the healthy host waited \(waited) behind the hanging one")
        await stuck.value
        await engine.shutdown()
    }

    final class Waiting: SlotHolder {
        let hostKey: String
        var isFinished = false
        init(_ url: String) { hostKey = Transfer.hostKey(url) }
    }

    @Test("slots: at most the per-host and total limits run at once; the rest wait in order")
    func slotAccounting() {
        var slots = TransferSlots<Waiting>(total: 3, perHost: 2)
        let a1 = Waiting("http://a:1/x"), a2 = Waiting("http://a:1/y"), a3 = Waiting("http://A:1/z")
        let b1 = Waiting("http://b:1/x"), b2 = Waiting("http://b:1/y"), c1 = Waiting("http://a:2/x")
        for item in [a1, a2, a3, b1, b2, c1] { slots.enqueue(item) }
        #expect(slots.next() === a1)
        #expect(slots.next() === a2)
        #expect(slots.next() === b1)  // host a is full; b takes the last of the three slots
        #expect(slots.next() == nil)  // all three taken, though b and a:2 have room of their own
        #expect(slots.waiting == 3)
        slots.release(a1.hostKey)
        #expect(slots.next() === a3)  // "A" is the same host as "a"
        b2.isFinished = true  // abandoned while it waited
        slots.release(b1.hostKey)
        #expect(slots.next() === c1)  // b2 is skipped; another port is another host
        #expect(slots.waiting == 0)
        #expect(slots.next() == nil)
    }
}

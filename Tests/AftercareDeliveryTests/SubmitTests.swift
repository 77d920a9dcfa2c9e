import AftercareCore
@testable import AftercareDelivery
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// Completions as they arrive, each with the key it was submitted under.
final class Completions: Sendable {
    private let state = Mutex<[(key: String, result: SendResult)]>([])

    func record(_ key: String) -> @Sendable (SendResult) -> Void {
        { result in self.state.withLock { $0.append((key, result)) } }
    }

    var all: [(key: String, result: SendResult)] { state.withLock { $0 } }

    func results(_ key: String) -> [SendResult] { all.filter { $0.key == key }.map(\.result) }

    /// Waits until `count` completions have come, at most `seconds`.
    func wait(for count: Int, seconds: Double = 10) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while all.count < count, Date() < deadline { try await Task.sleep(for: .milliseconds(5)) }
    }
}

/// Whether an outcome is the one an abandoned transfer gets: a retry for `CURLE_ABORTED_BY_CALLBACK`.
func isAbandoned(_ result: SendResult?) -> Bool {
    guard case .retry(nil, let reason) = result?.outcome else { return false }
    return reason.hasSuffix("(curl 42)")
}

let fixedClock: @Sendable () -> Date = { Date(timeIntervalSince1970: 1_764_100_000) }

func webhookSender(_ server: LoopbackServer, _ path: String, engine: CurlEngine, timeout: Double = 5) throws
    -> WebhookSender
{
    let settings = WebhookSettings(
        url: "http://127.0.0.1:\(server.port)\(path)", secret: .file(path: "unused"), allowInsecureHTTP: true,
        transport: TransportSettings(
            connectTimeout: 2, totalTimeout: timeout, lowSpeedBytes: 1, lowSpeedSeconds: 30, caFile: nil))
    return try WebhookSender(name: "gateway", settings: settings, secret: testSecret, engine: engine, clock: fixedClock)
}

func signedReceiver() throws -> LoopbackServer {
    try LoopbackServer(
        script: "http_receiver.py", arguments: ["--log", "{folder}/requests.jsonl", "--secret", testSecret])
}

@Suite("Callback sends on the curl engine: submit, cancel, shutdown", .serialized, .timeLimit(.minutes(1)))
struct SubmitTests {
    @Test("submit completes each message exactly once, with the result, signature and body send gives")
    func submitMatchesSend() async throws {
        let server = try signedReceiver()
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 8)
        let paths = ["/ok", "/status/503?retry_after=7", "/status/404", "/status/302", "/flaky/1"]
        let completions = Completions()
        for (index, path) in paths.enumerated() {
            let sender = try webhookSender(server, path, engine: engine)
            _ = sender.submit(message("P-\(index).submitted"), completion: completions.record(path))
        }
        try await completions.wait(for: paths.count)
        var sent: [String: SendResult] = [:]
        for (index, path) in paths.enumerated() {
            sent[path] = try await webhookSender(server, path, engine: engine).send(message("P-\(index).sent"))
        }
        await engine.shutdown()
        // Nothing more arrives once every transfer has ended: one completion per submit.
        #expect(completions.all.count == paths.count)
        for path in paths {
            #expect(completions.results(path).count == 1, "\(path)")
            #expect(completions.results(path).first == sent[path], "\(path)")
        }
        #expect(completions.results("/ok").first == SendResult(.delivered(detail: "HTTP 204"), responseCode: 204))
        #expect(completions.results("/status/503?retry_after=7").first?.outcome == .retry(after: 7, reason: "HTTP 503"))
        // The same message (same clock) goes out byte for byte the same either way.
        let requests = server.requests()
        #expect(requests.count == 2 * paths.count)
        for request in requests { #expect(request["signature_valid"] as? Bool == true) }
        for (index, path) in paths.enumerated() {
            func request(_ id: String) -> [String: Any]? {
                requests.first { ($0["body"] as? String)?.contains("\"\(id)\"") == true }
            }
            let submitted = try #require(request("P-\(index).submitted"))
            let viaSend = try #require(request("P-\(index).sent"))
            let expected = WebhookSender.body(for: message("P-\(index).submitted"))
            #expect(submitted["body"] as? String == String(decoding: expected, as: UTF8.self), "\(path)")
            let headers = try #require(submitted["headers"] as? [String: String])
            #expect(headers["webhook-signature"] == WebhookSender.signature(
                id: "P-\(index).submitted", timestamp: 1_764_100_000, body: expected, key: try WebhookSender.signingKey(
                    testSecret, sender: "t")))
            #expect(headers["webhook-timestamp"] == (viaSend["headers"] as? [String: String])?["webhook-timestamp"])
        }
    }

    @Test("cancel: a queued transfer never reaches the receiver, a running one is abandoned at once")
    func cancelQueuedAndRunning() async throws {
        let server = try signedReceiver()
        // One transfer per host at a time: the second waits in the engine behind the first.
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 1)
        let hanging = try webhookSender(server, "/hang", engine: engine, timeout: 20)
        let healthy = try webhookSender(server, "/ok", engine: engine)
        let completions = Completions()
        let running = hanging.submit(message("P-1.running"), completion: completions.record("running"))
        let deadline = Date().addingTimeInterval(10)
        while server.requests().isEmpty, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(server.requests().count == 1)

        let queued = healthy.submit(message("P-1.queued"), completion: completions.record("queued"))
        queued.cancel()
        try await completions.wait(for: 1)
        #expect(isAbandoned(completions.results("queued").first), "\(completions.all)")

        let started = ContinuousClock.now
        running.cancel()
        try await completions.wait(for: 2)
        #expect(ContinuousClock.now - started < .seconds(5), "the hanging transfer was not abandoned")
        #expect(isAbandoned(completions.results("running").first), "\(completions.all)")

        // The slot is free again; cancelling a finished send does nothing.
        let later = healthy.submit(message("P-1.later"), completion: completions.record("later"))
        try await completions.wait(for: 3)
        later.cancel()
        queued.cancel()
        running.cancel()
        await engine.shutdown()
        #expect(completions.results("later") == [SendResult(.delivered(detail: "HTTP 204"), responseCode: 204)])
        #expect(completions.all.count == 3)
        #expect(server.requests().compactMap { $0["body"] as? String }.filter { $0.contains("P-1.queued") }.isEmpty)
    }

    @Test("cancelled before the engine thread sees it: never sent, completed once")
    func cancelBeforeStart() async throws {
        let server = try signedReceiver()
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 8)
        let sender = try webhookSender(server, "/ok", engine: engine)
        let completions = Completions()
        for index in 0..<50 {
            sender.submit(message("P-\(index).x"), completion: completions.record("\(index)")).cancel()
        }
        await engine.shutdown()
        #expect(completions.all.count == 50)
        for index in 0..<50 { #expect(completions.results("\(index)").count == 1) }
        // Each one is either abandoned or went out whole before the cancel reached it.
        let abandoned = completions.all.filter { isAbandoned($0.result) }.count
        let delivered = completions.all.filter { $0.result.outcome == .delivered(detail: "HTTP 204") }.count
        #expect(abandoned + delivered == 50)
        #expect(server.requests().count >= delivered)
    }

    @Test("shutdown lets queued transfers run and finish; after it, a submit is refused at once")
    func shutdownDrainsQueue() async throws {
        let server = try signedReceiver()
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 1)
        let sender = try webhookSender(server, "/slow/150", engine: engine)
        let completions = Completions()
        for index in 0..<4 { _ = sender.submit(message("P-\(index).x"), completion: completions.record("\(index)")) }
        await engine.shutdown()
        #expect(completions.all.count == 4)
        for index in 0..<4 {
            #expect(completions.results("\(index)") == [SendResult(.delivered(detail: "HTTP 204"), responseCode: 204)])
        }
        #expect(server.requests().count == 4)

        let refused = Completions()
        _ = sender.submit(message("P-9.late"), completion: refused.record("late"))
        // Called before submit returned.
        #expect(refused.all.count == 1)
        #expect(isAbandoned(refused.results("late").first))
        #expect(await sender.send(message("P-9.late")).outcome == refused.results("late").first?.outcome)
        await engine.shutdown()  // a second shutdown returns at once
        #expect(server.requests().count == 4)
    }

    @Test("perform in a cancelled task comes back abandoned")
    func performCancelled() async throws {
        let server = try signedReceiver()
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 8)
        let sender = try webhookSender(server, "/hang", engine: engine, timeout: 20)
        let task = Task { await sender.send(message("P-1.x")) }
        let deadline = Date().addingTimeInterval(10)
        while server.requests().isEmpty, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        task.cancel()
        #expect(isAbandoned(await task.value))
        await engine.shutdown()
    }
}

/// A service that sends through the engine while it drains: one send in flight when shutdown
/// begins, one more started during its own graceful shutdown.
struct DrainingService: Service {
    let sender: WebhookSender
    let completions: Completions

    func run() async throws {
        _ = sender.submit(message("P-1.inflight"), completion: completions.record("inflight"))
        try? await gracefulShutdown()
        let late = await sender.send(message("P-1.late"))
        completions.record("late")(late)
    }
}

@Suite("The curl engine as a service: it stops last, after those that send through it", .serialized,
       .timeLimit(.minutes(1)))
struct CurlEngineServiceTests {
    static let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func run(engineFirst: Bool) async throws -> (Completions, LoopbackServer) {
        let server = try signedReceiver()
        let engine = CurlEngine(maxConnections: 8, maxPerHost: 8)
        let completions = Completions()
        let drainer = DrainingService(
            sender: try webhookSender(server, "/slow/200", engine: engine), completions: completions)
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = engineFirst
            ? [.init(service: engine), .init(service: drainer)]
            : [.init(service: drainer), .init(service: engine)]
        let group = ServiceGroup(configuration: .init(services: services, logger: Self.logger))
        let running = Task { try await group.run() }
        let deadline = Date().addingTimeInterval(10)
        while server.requests().isEmpty, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        await group.triggerGracefulShutdown()
        try await running.value
        // The group has ended, and so has the engine: nothing it accepts from here on.
        let after = Completions()
        _ = try webhookSender(server, "/ok", engine: engine).submit(message("P-1.after"), completion: after.record("x"))
        #expect(isAbandoned(after.results("x").first))
        return (completions, server)
    }

    @Test("listed first, the engine outlives the draining service: its late send goes out")
    func engineStopsLast() async throws {
        let (completions, server) = try await run(engineFirst: true)
        let delivered = SendResult(.delivered(detail: "HTTP 204"), responseCode: 204)
        #expect(completions.results("inflight") == [delivered])
        #expect(completions.results("late") == [delivered])
        #expect(server.requests().count == 2)
    }

    @Test("listed last, it stops first: the in-flight send finishes, the late one is refused")
    func engineStoppedFirstRefusesLateSends() async throws {
        let (completions, server) = try await run(engineFirst: false)
        #expect(completions.results("inflight") == [SendResult(.delivered(detail: "HTTP 204"), responseCode: 204)])
        #expect(isAbandoned(completions.results("late").first), "\(completions.all)")
        #expect(server.requests().count == 1)
    }
}

@Suite("Response header lines, read as bytes")
struct HeaderLineTests {
    func parse(_ lines: [String]) -> Transfer {
        let request = CurlRequest(
            url: "http://127.0.0.1:1/", kind: .httpPost(headers: [], body: Data()), protocols: "http",
            transport: TransportSettings(connectTimeout: 1, totalTimeout: 1, lowSpeedBytes: 1, lowSpeedSeconds: 1,
                                         caFile: nil))
        let transfer = Transfer(request: request) { _ in }
        for line in lines {
            Array(line.utf8).withUnsafeBytes { transfer.header($0) }
        }
        return transfer
    }

    @Test("names lower-cased, values trimmed of spaces, tabs and Unicode white space; a new status line starts over")
    func headers() {
        let transfer = parse([
            "HTTP/1.1 100 Continue\r\n", "X-Early: gone\r\n", "HTTP/1.1 503 Service Unavailable\r\n",
            "Retry-After: \t 7 \t\r\n", "Location:https://elsewhere.example/a:b\r\n", "X-Empty:   \r\n",
            "X-Wide: \u{A0}value with  inner  spaces\u{2003}\r\n", "Content-Type: text/plain; charset=utf-8\r\n", "\r\n",
        ])
        #expect(transfer.headers == [
            "retry-after": "7", "location": "https://elsewhere.example/a:b", "x-empty": "",
            "x-wide": "value with  inner  spaces", "content-type": "text/plain; charset=utf-8",
        ])
        #expect(transfer.replies.isEmpty)
    }

    @Test("SMTP reply lines are kept, trimmed, the last eight")
    func replies() {
        let transfer = parse((1...10).map { "250-line \($0)\r\n" } + ["550 5.1.1 No such user\r\n"])
        #expect(transfer.replies.count == 8)
        #expect(transfer.replies.last == "550 5.1.1 No such user")
        #expect(transfer.replies.first == "250-line 4")
        #expect(transfer.headers.isEmpty)
    }
}

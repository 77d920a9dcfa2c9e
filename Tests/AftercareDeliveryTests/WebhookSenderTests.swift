import AftercareCore
@testable import AftercareDelivery
import Foundation
import Testing

let testSecret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"

func message(_ id: String = "P-1.ice", to address: String = "+15551234567", channel: String = "sms", attempt: Int = 1,
             subject: String = "Your aftercare from Riverside", body: String = "Hi Ana,\nice the area.") -> OutboundMessage
{
    let parts = id.split(separator: ".").map(String.init)
    return OutboundMessage(
        reminderID: id, procedureID: parts[0], patientID: "MRN-1", stepID: parts[1], channel: channel, address: address,
        subject: subject, body: body, dueAt: Timestamp.parse("2026-11-25T19:30:00Z")!, attempt: attempt,
        clinicName: "Riverside Pain Clinic")
}

@Suite("Signed webhooks over libcurl to a real loopback receiver", .serialized)
struct WebhookSenderTests {
    static let engine = CurlEngine(maxConnections: 32, maxPerHost: 32)

    func sender(_ server: LoopbackServer, path: String, timeout: Double = 3, ca: String? = nil, https: Bool = false)
        throws -> WebhookSender
    {
        let settings = WebhookSettings(
            url: "\(https ? "https" : "http")://127.0.0.1:\(server.port)\(path)", secret: .file(path: "unused"),
            allowInsecureHTTP: !https,
            transport: TransportSettings(connectTimeout: 2, totalTimeout: timeout, lowSpeedBytes: 10, lowSpeedSeconds: 2, caFile: ca))
        return try WebhookSender(name: "gateway", settings: settings, secret: testSecret, engine: Self.engine)
    }

    func receiver(https: TestCertificates? = nil) throws -> LoopbackServer {
        var arguments = ["--log", "{folder}/requests.jsonl", "--secret", testSecret]
        if let https { arguments += ["--cert", https.certFile, "--key", https.keyFile] }
        return try LoopbackServer(script: "http_receiver.py", arguments: arguments)
    }

    @Test("the Standard Webhooks test vector")
    func testVector() throws {
        let key = try WebhookSender.signingKey(testSecret, sender: "t")
        let body = Data(#"{"email":"test@example.com","username":"test_user"}"#.utf8)
        #expect(WebhookSender.signature(id: "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", timestamp: 1_649_367_553, body: body, key: key)
            == "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=")
        #expect(throws: DeliveryError.self) { try WebhookSender.signingKey("C2FVsBQIhrscChlQIMV", sender: "t") }
    }

    @Test("the body carries the documented fields and parses as JSON")
    func body() throws {
        let data = WebhookSender.body(for: message(body: "Line one\n\"quoted\" \\ tab\tend"))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["type"] as? String == "aftercare.reminder")
        #expect(object["reminder_id"] as? String == "P-1.ice")
        #expect(object["procedure_id"] as? String == "P-1")
        #expect(object["patient_id"] as? String == "MRN-1")
        #expect(object["step"] as? String == "ice")
        #expect(object["to"] as? String == "+15551234567")
        #expect(object["text"] as? String == "Line one\n\"quoted\" \\ tab\tend")
        #expect(object["due_at"] as? String == "2026-11-25T19:30:00Z")
        #expect(object["attempt"] as? Int == 1)
    }

    @Test("a reminder reaches the receiver signed and verifiable, with the same webhook-id on every try")
    func deliveredSigned() async throws {
        let server = try receiver()
        let sender = try sender(server, path: "/ok")
        let first = await sender.send(message(attempt: 1))
        let second = await sender.send(message(attempt: 2))
        #expect(first == SendResult(.delivered(detail: "HTTP 204"), responseCode: 204))
        #expect(second.outcome == .delivered(detail: "HTTP 204"))
        let requests = server.requests()
        #expect(requests.count == 2)
        for request in requests {
            #expect(request["signature_valid"] as? Bool == true)
            let headers = try #require(request["headers"] as? [String: String])
            #expect(headers["webhook-id"] == "P-1.ice")
            #expect(headers["content-type"] == "application/json")
            let timestamp = try #require(Int(headers["webhook-timestamp"] ?? ""))
            #expect(abs(Double(timestamp) - Date().timeIntervalSince1970) < 60)
        }
    }

    @Test("the fault matrix: each answer ends in the designed outcome")
    func faultMatrix() async throws {
        let server = try receiver()
        func outcome(_ path: String, timeout: Double = 3) async throws -> SendResult {
            await (try sender(server, path: path, timeout: timeout)).send(message())
        }
        #expect(try await outcome("/status/500") == SendResult(.retry(after: nil, reason: "HTTP 500"), responseCode: 500))
        #expect(try await outcome("/status/503?retry_after=7") == SendResult(.retry(after: 7, reason: "HTTP 503"), responseCode: 503))
        #expect(try await outcome("/status/429") == SendResult(.retry(after: nil, reason: "HTTP 429"), responseCode: 429))
        #expect(try await outcome("/status/408").outcome == .retry(after: nil, reason: "HTTP 408"))
        #expect(try await outcome("/status/410") == SendResult(.failed(reason: "HTTP 410"), responseCode: 410))
        #expect(try await outcome("/status/400").outcome == .failed(reason: "HTTP 400"))
        let redirect = try await outcome("/status/302")
        #expect(redirect == SendResult(.failed(reason: "HTTP 302: redirect to https://elsewhere.example/hook not followed"), responseCode: 302))
        let reset = try await outcome("/reset")
        guard case .retry(nil, let resetReason) = reset.outcome else { Issue.record("reset: \(reset)"); return }
        #expect(resetReason.hasPrefix("network:"))
        let started = Date()
        let hang = try await outcome("/hang", timeout: 2)
        guard case .retry(nil, let hangReason) = hang.outcome else { Issue.record("hang: \(hang)"); return }
        #expect(hangReason.contains("curl 28"))
        #expect(Date().timeIntervalSince(started) < 6)
        let drip = try await outcome("/drip", timeout: 4)
        guard case .retry(nil, let dripReason) = drip.outcome else { Issue.record("drip: \(drip)"); return }
        #expect(dripReason.contains("curl 28"))
        // Nothing listening at all.
        let closed = WebhookSettings(url: "http://127.0.0.1:1/hook", secret: .file(path: "x"), allowInsecureHTTP: true,
                                     transport: TransportSettings(connectTimeout: 2, totalTimeout: 3))
        let refused = await (try WebhookSender(name: "g", settings: closed, secret: testSecret, engine: Self.engine)).send(message())
        guard case .retry(nil, let refusedReason) = refused.outcome else { Issue.record("refused: \(refused)"); return }
        #expect(refusedReason.contains("curl 7"))
        // Every request that reached the receiver was correctly signed.
        #expect(server.requests().allSatisfy { $0["signature_valid"] as? Bool == true })
    }

    @Test("TLS: verification fails without the test CA and succeeds with it")
    func tls() async throws {
        let certificates = try TestCertificates()
        let server = try receiver(https: certificates)
        let untrusted = await (try sender(server, path: "/ok", https: true)).send(message())
        guard case .failed(let reason) = untrusted.outcome else { Issue.record("expected a TLS failure: \(untrusted)"); return }
        #expect(reason.contains("curl 60"))
        let trusted = await (try sender(server, path: "/ok", ca: certificates.caFile, https: true)).send(message())
        #expect(trusted.outcome == .delivered(detail: "HTTP 204"))
        #expect(server.requests().count == 1)
    }

    @Test("plain http is refused unless the config allows it")
    func httpNeedsFlag() {
        let settings = WebhookSettings(url: "http://127.0.0.1:9/hook", secret: .file(path: "x"), allowInsecureHTTP: false,
                                       transport: TransportSettings())
        #expect(throws: DeliveryError.self) { try WebhookSender(name: "g", settings: settings, secret: testSecret, engine: Self.engine) }
    }

    @Test("200 sends at once are each delivered exactly once over reused connections")
    func concurrency() async throws {
        let server = try receiver()
        let sender = try sender(server, path: "/ok")
        let results = await withTaskGroup(of: SendResult.self) { group in
            for index in 0..<200 { group.addTask { await sender.send(message("P-\(index).ice")) } }
            var all: [SendResult] = []
            for await result in group { all.append(result) }
            return all
        }
        #expect(results.count == 200)
        let failures = results.filter { $0.outcome != .delivered(detail: "HTTP 204") }
        #expect(failures.isEmpty, "\(failures.prefix(3))")
        let ids = server.requests().compactMap { ($0["headers"] as? [String: String])?["webhook-id"] }
        #expect(ids.count == 200)
        #expect(Set(ids).count == 200)
    }
}

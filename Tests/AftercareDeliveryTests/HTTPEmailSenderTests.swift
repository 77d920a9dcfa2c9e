import AftercareCore
@testable import AftercareDelivery
import Foundation
import Testing

@Suite("The HTTP email gateway sender", .serialized)
struct HTTPEmailSenderTests {
    @Test("posts the send-mail JSON with a bearer token and the reminder id as idempotency key")
    func shape() async throws {
        let server = try LoopbackServer(script: "http_receiver.py", arguments: ["--log", "{folder}/requests.jsonl"])
        let settings = HTTPEmailSettings(
            url: "http://127.0.0.1:\(server.port)/ok", token: .file(path: "x"), fromAddress: "aftercare@clinic.example",
            fromName: nil, allowInsecureHTTP: true, transport: TransportSettings(connectTimeout: 2, totalTimeout: 5))
        let sender = try HTTPEmailSender(name: "api", settings: settings, token: "tok_123", clinicName: "Riverside Pain Clinic",
                                         engine: WebhookSenderTests.engine)
        let result = await sender.send(message("P-9.ice", to: "ana@example.org", channel: "email"))
        #expect(result.outcome == .delivered(detail: "HTTP 204"))
        let request = try #require(server.requests().first)
        let headers = try #require(request["headers"] as? [String: String])
        #expect(headers["authorization"] == "Bearer tok_123")
        #expect(headers["idempotency-key"] == "P-9.ice")
        let body = try #require(try JSONSerialization.jsonObject(with: Data((request["body"] as? String ?? "").utf8)) as? [String: Any])
        #expect((body["from"] as? [String: String]) == ["email": "aftercare@clinic.example", "name": "Riverside Pain Clinic"])
        #expect((body["to"] as? [[String: String]]) == [["email": "ana@example.org"]])
        #expect(body["subject"] as? String == "Your aftercare from Riverside")
        let retry = HTTPEmailSettings(url: "http://127.0.0.1:\(server.port)/status/503?retry_after=30", token: .file(path: "x"),
                                      fromAddress: "a@clinic.example", fromName: nil, allowInsecureHTTP: true,
                                      transport: TransportSettings(connectTimeout: 2, totalTimeout: 5))
        let busy = await (try HTTPEmailSender(name: "api", settings: retry, token: "t", clinicName: "C", engine: WebhookSenderTests.engine))
            .send(message("P-9.ice", to: "ana@example.org", channel: "email"))
        #expect(busy.outcome == .retry(after: 30, reason: "HTTP 503"))
        let sms = await sender.send(message("P-9.ice", to: "+15551234567", channel: "sms"))
        guard case .failed = sms.outcome else { Issue.record("\(sms)"); return }
    }
}

import AftercareCore
@testable import AftercareDelivery
import Foundation
import Testing

@Suite("Email through a real SMTP server on loopback", .serialized)
struct SMTPSenderTests {
    static let engine = CurlEngine(maxConnections: 8, maxPerHost: 8)

    func smtp(_ server: LoopbackServer, tls: TestCertificates? = nil, insecure: Bool = true) throws -> SMTPSender {
        let settings = SMTPSettings(
            url: "smtp://127.0.0.1:\(server.port)", fromAddress: "aftercare@clinic.example", fromName: nil, username: nil,
            password: nil, allowInsecure: insecure,
            transport: TransportSettings(connectTimeout: 2, totalTimeout: 5, caFile: tls?.caFile))
        return try SMTPSender(name: "mail", settings: settings, password: nil, clinicName: "Clínica Zoë", engine: Self.engine)
    }

    func server(tls: TestCertificates? = nil) throws -> LoopbackServer {
        var arguments = ["--out", "{folder}/mail"]
        if let tls { arguments += ["--cert", tls.certFile, "--key", tls.keyFile] }
        return try LoopbackServer(script: "smtp_server.py", arguments: arguments)
    }

    @Test("a well-formed RFC 5322 message arrives, header by header, with a UTF-8 body intact")
    func wellFormed() async throws {
        let server = try server()
        let body = "Hi Zoë,\n.this line starts with a dot\n..and this with two\nCall +1 555-010-2030."
        let result = await (try smtp(server)).send(
            message("P-7.checkin-24h", to: "zoe@example.org", channel: "email", subject: "Your check-in — Clínica Zoë", body: body))
        #expect(result.outcome == .delivered(detail: "SMTP 250"))
        #expect(result.responseCode == 250)
        let mail = try #require(server.messages().first)
        #expect(mail["mail_from"] as? String == "aftercare@clinic.example")
        #expect(mail["rcpt_tos"] as? [String] == ["zoe@example.org"])
        #expect((mail["defects"] as? [String])?.isEmpty == true)
        let headers = try #require(mail["headers"] as? [String: String])
        #expect(headers["Message-ID"] == "<P-7.checkin-24h@aftercare.clinic.example>")
        #expect(headers["From"] == "Clínica Zoë <aftercare@clinic.example>")
        #expect(headers["To"] == "zoe@example.org")
        #expect(headers["Subject"] == "Your check-in — Clínica Zoë")
        #expect(headers["MIME-Version"] == "1.0")
        #expect(headers["Auto-Submitted"] == "auto-generated")
        #expect(mail["content_type"] as? String == "text/plain")
        #expect(mail["charset"] as? String == "utf-8")
        let date = try #require(headers["Date"])
        #expect(date.range(of: #"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$"#, options: .regularExpression) != nil)
        #expect((mail["text"] as? String)?.replacingOccurrences(of: "\r\n", with: "\n").trimmingCharacters(in: .newlines) == body)
    }

    @Test("SMTP faults: 451 and 421 retry, 550 fails quoting the relay, a connection dropped after the message retries")
    func faults() async throws {
        let server = try server()
        let sender = try smtp(server)
        let tempfail = await sender.send(message(to: "tempfail@example.org", channel: "email"))
        guard case .retry(nil, let tempReason) = tempfail.outcome else { Issue.record("451: \(tempfail)"); return }
        #expect(tempfail.responseCode == 451)
        #expect(tempReason.hasPrefix("SMTP 451"))
        let closing = await sender.send(message(to: "closing@example.org", channel: "email"))
        guard case .retry = closing.outcome else { Issue.record("421: \(closing)"); return }
        #expect(closing.responseCode == 421)
        let rejected = await sender.send(message(to: "reject@example.org", channel: "email"))
        guard case .failed(let rejectReason) = rejected.outcome else { Issue.record("550: \(rejected)"); return }
        #expect(rejected.responseCode == 550)
        #expect(rejectReason.hasPrefix("SMTP 550 5.1.1 No such user here"))
        #expect(tempReason.contains("451 4.7.1 Greylisted, try again later"))
        let dropped = await sender.send(message(to: "drop@example.org", channel: "email"))
        guard case .retry = dropped.outcome else { Issue.record("drop: \(dropped)"); return }
        #expect(server.messages().isEmpty)
        let nobody = SMTPSettings(url: "smtp://127.0.0.1:1", fromAddress: "a@clinic.example", fromName: nil, username: nil,
                                  password: nil, allowInsecure: true, transport: TransportSettings(connectTimeout: 2, totalTimeout: 3))
        let refused = await (try SMTPSender(name: "m", settings: nobody, password: nil, clinicName: "C", engine: Self.engine))
            .send(message(to: "a@example.org", channel: "email"))
        guard case .retry = refused.outcome else { Issue.record("connection refused: \(refused)"); return }
    }

    @Test("control characters in an address or header value are refused before anything is sent")
    func headerInjection() async throws {
        let server = try server()
        let sender = try smtp(server)
        let subject = await sender.send(message(to: "ana@example.org", channel: "email", subject: "Hello\r\nBcc: victim@example.org"))
        guard case .failed(let reason) = subject.outcome else { Issue.record("\(subject)"); return }
        #expect(reason.contains("control character"))
        let address = await sender.send(message(to: "ana@example.org>\r\nRCPT TO:<x@evil.example", channel: "email"))
        guard case .failed = address.outcome else { Issue.record("\(address)"); return }
        let phone = await sender.send(message(to: "+15551234567", channel: "sms"))
        guard case .failed = phone.outcome else { Issue.record("\(phone)"); return }
        #expect(server.messages().isEmpty)
        let badFrom = SMTPSettings(url: "smtp://127.0.0.1:25", fromAddress: "a@clinic.example", fromName: "Clinic\nBcc: x",
                                   username: nil, password: nil, allowInsecure: true, transport: TransportSettings())
        #expect(throws: DeliveryError.self) {
            try SMTPSender(name: "m", settings: badFrom, password: nil, clinicName: "C", engine: Self.engine)
        }
    }

    @Test("smtp:// requires STARTTLS: refused by a plain relay, verified against the test CA on a TLS one")
    func startTLS() async throws {
        let plain = try server()
        let required = await (try smtp(plain, insecure: false)).send(message(to: "ana@example.org", channel: "email"))
        guard case .failed(let reason) = required.outcome else { Issue.record("\(required)"); return }
        #expect(reason.contains("curl 64"))
        #expect(reason.hasPrefix("cannot secure the connection to the relay"))
        #expect(!reason.contains("250"))
        #expect(required.responseCode == nil)
        let certificates = try TestCertificates()
        let secure = try server(tls: certificates)
        let result = await (try smtp(secure, tls: certificates, insecure: false)).send(message(to: "ana@example.org", channel: "email"))
        #expect(result.outcome == .delivered(detail: "SMTP 250"))
        #expect(secure.messages().first?["tls"] as? Bool == true)
    }
}

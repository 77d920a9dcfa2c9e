import AftercareCore
@testable import AftercareDelivery
import AftercareTestKit
import Crypto
import Foundation
import Testing

/// The body and signature as they were built before they went straight into bytes (through
/// `JSONText` Strings and `Data`): the reference the wire must still match exactly.
enum LegacyWebhook {
    static func body(for message: OutboundMessage) -> Data {
        var json = JSONText()
        json.field("type", "aftercare.reminder")
        json.field("reminder_id", message.reminderID)
        json.field("procedure_id", message.procedureID)
        json.field("patient_id", message.patientID)
        json.field("step", message.stepID)
        json.field("channel", message.channel)
        json.field("to", message.address)
        json.field("subject", message.subject)
        json.field("text", message.body)
        json.field("due_at", Timestamp.format(message.dueAt, in: .gmt).replacingOccurrences(of: "+00:00", with: "Z"))
        json.field("attempt", message.attempt)
        return Data(json.finished().utf8)
    }

    static func signature(id: String, timestamp: Int, body: Data, key: Data) -> String {
        var signed = Data("\(id).\(timestamp).".utf8)
        signed.append(body)
        let code = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: key))
        return "v1," + Data(code).base64EncodedString()
    }
}

@Suite("Webhook bodies and signatures built in bytes are the bytes built through Strings")
struct WebhookBytesTests {
    /// Characters that take every path of the escaper: quotes, backslashes, every control
    /// character, DEL, U+2028/U+2029 and their E2-led neighbours, accents, CJK, emoji, combining marks.
    static let alphabet: [String] = {
        var pieces = ["a", "Z", "0", " ", "\"", "\\", "/", "{", "}", ":", ",", "\u{7F}", "é", "ß", "日本", "😀",
                      "👩🏽‍⚕️", "e\u{301}", "\u{2028}", "\u{2029}", "\u{2027}", "\u{202A}", "–", "€", "\u{E000}",
                      "\u{FEFF}", "\u{10FFFF}", "<script>", "\r\n"]
        for scalar in 0..<0x20 { pieces.append(String(UnicodeScalar(UInt8(scalar)))) }
        return pieces
    }()

    static func text(_ generator: inout SeededGenerator, maxPieces: Int) -> String {
        let count = Int.random(in: 0...maxPieces, using: &generator)
        return (0..<count).map { _ in alphabet.randomElement(using: &generator)! }.joined()
    }

    static func messages(_ count: Int) -> [OutboundMessage] {
        var generator = SeededGenerator(seed: 11)
        return (0..<count).map { index in
            // Dates from 1900 to 2200, with and without fractions of a second.
            let seconds = Double.random(in: -2_208_988_800...7_258_118_400, using: &generator)
            return OutboundMessage(
                reminderID: "P-\(index).\(text(&generator, maxPieces: 3))", procedureID: text(&generator, maxPieces: 4),
                patientID: text(&generator, maxPieces: 4), stepID: text(&generator, maxPieces: 3),
                channel: index % 2 == 0 ? "sms" : "email", address: text(&generator, maxPieces: 5),
                subject: text(&generator, maxPieces: 20), body: text(&generator, maxPieces: 400),
                dueAt: Date(timeIntervalSince1970: index % 3 == 0 ? seconds.rounded(.down) : seconds),
                attempt: Int.random(in: -3...1_000_000, using: &generator), clinicName: "Riverside")
        }
    }

    @Test("3,000 messages with escapes, unicode and odd dates: the same body and signature")
    func sameBytesAsStrings() throws {
        let key = try WebhookSender.signingKey(testSecret, sender: "t")
        let sender = try WebhookSender(
            name: "t",
            settings: WebhookSettings(
                url: "https://127.0.0.1:9/hook", secret: .file(path: "unused"), allowInsecureHTTP: false,
                transport: TransportSettings(
                    connectTimeout: 1, totalTimeout: 1, lowSpeedBytes: 1, lowSpeedSeconds: 1, caFile: nil)),
            secret: testSecret, engine: WebhookSenderTests.engine, clock: fixedClock)
        let timestamp = Int(fixedClock().timeIntervalSince1970)
        var mismatches = 0
        for message in Self.messages(3_000) {
            let expected = LegacyWebhook.body(for: message)
            let body = WebhookSender.body(for: message)
            let request = sender.request(for: message)
            guard case .httpPost(let headers, let sentBody) = request.kind else {
                Issue.record("not a POST")
                return
            }
            let signature = LegacyWebhook.signature(
                id: message.reminderID, timestamp: timestamp, body: expected, key: key)
            let same = body == expected && sentBody == expected
                && WebhookSender.signature(id: message.reminderID, timestamp: timestamp, body: expected, key: key)
                    == signature
                && headers == [
                    "Content-Type: application/json", "User-Agent: aftercare/1", "webhook-id: \(message.reminderID)",
                    "webhook-timestamp: \(timestamp)", "webhook-signature: \(signature)",
                ]
            if !same {
                mismatches += 1
                if mismatches <= 3 {
                    let text = String(decoding: body, as: UTF8.self)
                    Issue.record("\(String(reflecting: message.body.prefix(80))): \(text)")
                }
            }
        }
        #expect(mismatches == 0)
    }

    @Test("a golden body: every escape, spelled out")
    func goldenBody() throws {
        let body = "a\"b\\c\nd\re\tf\u{1}g\u{1F}h\u{2028}i\u{2029}j–é😀\u{7F}"
        let data = WebhookSender.body(for: message(attempt: 12, body: body))
        #expect(String(decoding: data, as: UTF8.self) == #"""
            {"type":"aftercare.reminder","reminder_id":"P-1.ice","procedure_id":"P-1","patient_id":"MRN-1",\#
            "step":"ice","channel":"sms","to":"+15551234567","subject":"Your aftercare from Riverside",\#
            "text":"a\"b\\c\nd\re\tf\u0001g\u001fh\u2028i\u2029j–é😀\#u{7F}","due_at":"2026-11-25T19:30:00Z",\#
            "attempt":12}
            """#)
        let key = try WebhookSender.signingKey(testSecret, sender: "t")
        let signature = WebhookSender.signature(id: "P-1.ice", timestamp: 1_764_100_000, body: data, key: key)
        #expect(signature == LegacyWebhook.signature(id: "P-1.ice", timestamp: 1_764_100_000, body: data, key: key))
        // The same key signs many messages: a shared keyed state is never disturbed by one of them.
        let mac = KeyedMAC(key: key)
        let first = mac.signature(of: Array("x.1.{}".utf8))
        _ = mac.signature(of: Array("y.2.[]".utf8))
        #expect(mac.signature(of: Array("x.1.{}".utf8)) == first)
        #expect(first == LegacyWebhook.signature(id: "x", timestamp: 1, body: Data("{}".utf8), key: key))
    }
}

import AftercareCore
import AftercareTestKit
import Foundation
import Testing

@Suite("Spool parser under random and mutated input")
struct IntakeFuzzTests {
    static let valid: [String] = [
        IntakeValidationTests.procedure,
        #"{"kind":"cancel","procedure_id":"P-1","reason":"patient declined"}"#,
        #"{"kind":"reschedule","procedure_id":"P-1","performed_at":"2026-11-25T15:10:00-05:00"}"#,
        #"{"kind":"reschedule","procedure_id":"P-1","time_zone":"Europe/Paris"}"#,
        #"{"kind":"replay","reminder_id":"P-1.checkin-24h","requested_by":"ana"}"#,
        #"{"kind":"replay","procedure_id":"P-1"}"#,
        #"{"kind":"replay","dead_since":"2026-11-25T08:00:00Z"}"#,
    ]

    /// Interesting bytes: JSON structure, controls, DEL, C1 and bidi as UTF-8, invalid UTF-8.
    static let tokens: [[UInt8]] = [
        Array("{".utf8), Array("}".utf8), Array("[".utf8), Array("]".utf8), Array("\"".utf8), Array(":".utf8),
        Array(",".utf8), Array("\\".utf8), Array("\\u0000".utf8), Array("\\u202e".utf8), Array("\n".utf8),
        Array("\r".utf8), [0x00], [0x1B], [0x7F], [0xC2, 0x85], [0xE2, 0x80, 0xAE], [0xE2, 0x81, 0xA6], [0xFF],
        [0xC0, 0x80], [0xED, 0xA0, 0x80], Array("null".utf8), Array("1e999".utf8), Array(".".utf8),
        Array("\"kind\":\"cancel\"".utf8), Array("\"procedure_id\":".utf8), Array("\"reminder_id\":\"a.b\"".utf8),
    ]

    /// Every request that decodes passes validation (so every id in it is safe to store and log);
    /// every refusal is one printable line.
    static func checkOutcome(_ data: Data, seed: UInt64) {
        do {
            for request in try IntakeCodec.decode(data) {
                #expect(throws: Never.self, "seed \(seed)") { try request.validate() }
                if let id = request.procedureID {
                    #expect(throws: Never.self, "seed \(seed)") { try InputRules.checkIdentifier(id, field: "id") }
                }
            }
        } catch {
            let line = error.description
            #expect(!line.isEmpty, "seed \(seed)")
            #expect(!line.unicodeScalars.contains(where: InputRules.isUnsafe), "seed \(seed): \(line.debugDescription)")
            #expect(line.unicodeScalars.count <= 600, "seed \(seed)")
        }
    }

    static func mutate(_ bytes: [UInt8], using random: inout SeededGenerator) -> [UInt8] {
        var out = bytes
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            let position = out.isEmpty ? 0 : Int.random(in: 0..<out.count, using: &random)
            switch Int.random(in: 0..<5, using: &random) {
            case 0 where !out.isEmpty: out.remove(at: position)
            case 1: out.insert(contentsOf: tokens.randomElement(using: &random)!, at: position)
            case 2 where !out.isEmpty: out[position] = UInt8.random(in: 0...255, using: &random)
            case 3: out = Array(out.prefix(position))
            default:
                let length = Int.random(in: 0...min(16, out.count - position), using: &random)
                out.insert(contentsOf: out[position..<position + length], at: position)
            }
        }
        return out
    }

    @Test("mutated valid requests never crash the decoder, and whatever decodes is valid (bounded, seeded)")
    func mutatedRequests() {
        let deadline = Date().addingTimeInterval(3)
        var cases = 0
        for seed in UInt64(1)...5_000 where Date() < deadline {
            var random = SeededGenerator(seed: seed)
            var lines: [[UInt8]] = []
            for _ in 0..<Int.random(in: 1...3, using: &random) {
                lines.append(Self.mutate(Array(Self.valid.randomElement(using: &random)!.utf8), using: &random))
            }
            Self.checkOutcome(Data(lines.joined(separator: [0x0A])), seed: seed)
            cases += 1
        }
        #expect(cases >= 500, "ran \(cases) cases")
    }

    @Test("arbitrary bytes never crash the decoder (bounded, seeded)")
    func arbitraryBytes() {
        let deadline = Date().addingTimeInterval(2)
        var cases = 0
        for seed in UInt64(10_001)...15_000 where Date() < deadline {
            var random = SeededGenerator(seed: seed)
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 0...24, using: &random) {
                if Bool.random(using: &random) {
                    bytes += Self.tokens.randomElement(using: &random)!
                } else {
                    bytes.append(UInt8.random(in: 0...255, using: &random))
                }
            }
            Self.checkOutcome(Data(bytes), seed: seed)
            cases += 1
        }
        #expect(cases >= 500, "ran \(cases) cases")
    }

    @Test("deep nesting and huge fields are refused, not a crash")
    func pathological() {
        let arrays = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        Self.checkOutcome(Data(arrays.utf8), seed: 0)
        let objects = String(repeating: #"{"a":"#, count: 10_000) + "1" + String(repeating: "}", count: 10_000)
        Self.checkOutcome(Data(objects.utf8), seed: 0)
        let nuls = String(repeating: "\\u0000", count: 100_000)
        Self.checkOutcome(Data(#"{"kind":"cancel","procedure_id":"\#(nuls)"}"#.utf8), seed: 0)
    }

    @Test("valid requests of every kind survive encode then decode unchanged (random ids and times)")
    func roundTrip() throws {
        var random = SeededGenerator(seed: 42)
        let idCharacters = Array("abcXYZ019._:-")
        func id() -> String {
            let length = Int.random(in: 0...40, using: &random)
            return "P" + String((0..<length).map { _ in idCharacters.randomElement(using: &random)! })
        }
        let zones = ["America/New_York", "Europe/Paris", "Asia/Kolkata", "UTC", "Pacific/Chatham"]
        for _ in 0..<300 {
            let when = Date(timeIntervalSince1970: Double(Int.random(in: 946_684_800...4_000_000_000, using: &random)))
            let zone = zones.randomElement(using: &random)!
            let requests: [IntakeRequest] = [
                .procedure(
                    Procedure(
                        id: id(), protocolID: "trigger-point-injection", performedAt: when,
                        patient: Patient(
                            id: id(), firstName: Bool.random(using: &random) ? "Zoë Ann" : nil, timeZone: zone,
                            routes: [
                                ContactRoute(channel: "sms", address: "+1555\(Int.random(in: 1_000_000...9_999_999, using: &random))"),
                                ContactRoute(channel: "email", address: "a.b@example.org", optedOut: true),
                            ]))),
                .cancel(procedureID: id(), reason: Bool.random(using: &random) ? "declined \u{1F600}" : nil),
                .reschedule(procedureID: id(), performedAt: when, timeZone: Bool.random(using: &random) ? zone : nil),
                .replay(.reminder(id() + ".checkin-24h")),
                .replay(.procedure(id())),
                .replay(.deadSince(when)),
            ]
            for request in requests {
                try request.validate()
                let decoded = try IntakeCodec.decode(IntakeCodec.encode(request, requestedBy: "staff.user"))
                #expect(decoded == [request])
            }
        }
    }
}

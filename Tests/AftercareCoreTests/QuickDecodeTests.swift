@testable import AftercareCore
import AftercareTestKit
import Foundation
import Testing

/// The quick path for procedure lines reads exactly what the general (`JSONSerialization`) path
/// reads, and leaves everything else to it.
@Suite("Quick intake decoding")
struct QuickDecodeTests {
    static func quick(_ text: String) -> IntakeRequest? {
        Array(text.utf8).withUnsafeBytes { IntakeCodec.decodeQuick($0) }
    }

    static func general(_ text: String) -> IntakeRequest? {
        try? IntakeCodec.decodeGeneral(Data(text.utf8), line: nil)
    }

    static let base = IntakeValidationTests.procedure

    /// Lines the quick path takes, each read the same both ways.
    static let taken: [String] = [
        base,
        base.replacingOccurrences(of: #"{"procedure_id""#, with: #"{"kind":"procedure","procedure_id""#),
        base.replacingOccurrences(of: #"{"procedure_id""#, with: #"{"force":true,"procedure_id""#),
        base.replacingOccurrences(of: #"{"procedure_id""#, with: #"{"force":false,"requested_by":"ana","procedure_id""#),
        base.replacingOccurrences(of: #""Ana""#, with: #""José 🙂 Ångström""#),
        base.replacingOccurrences(of: #""+15551234567"}"#, with: #""+15551234567","opted_out":true}"#),
        base.replacingOccurrences(of: #","first_name":"Ana""#, with: ""),
        " " + base.replacingOccurrences(of: "\":", with: "\" :\t").replacingOccurrences(of: ",\"", with: " ,\r\n \"")
            + "  \r",
        base.replacingOccurrences(of: #"}]}}"#, with: #"},{"channel":"email","to":"ana@example.org"}]}}"#),
    ]

    /// Lines the quick path leaves to the general one: other kinds, numbers, null, escapes,
    /// duplicate or non-ASCII keys, a byte-order mark, trailing bytes, a failed check.
    static let left: [String] = [
        #"{"kind":"cancel","procedure_id":"P-1","reason":"patient declined"}"#,
        base.replacingOccurrences(of: #"{"procedure_id""#, with: #"{"force":1,"procedure_id""#),
        base.replacingOccurrences(of: #""Ana""#, with: "null"),
        base.replacingOccurrences(of: #""P-1""#, with: #""P\u002d1""#),
        base.replacingOccurrences(of: #""P-1""#, with: #""P\/1""#),
        base.replacingOccurrences(of: #"{"procedure_id":"P-1","#, with: #"{"procedure_id":"P-1","procedure_id":"P-2","#),
        base.replacingOccurrences(of: #"{"procedure_id""#, with: "{\"\u{212A}ind\":\"procedure\",\"procedure_id\""),
        "\u{FEFF}" + base,
        base + "x",
        base.replacingOccurrences(of: #"}]}}"#, with: #"}]}} {}"#),
        base.replacingOccurrences(of: #"{"procedure_id""#, with: #"{"force":truex,"procedure_id""#),
        base.replacingOccurrences(of: "America/New_York", with: "EST"),
        base.replacingOccurrences(of: #""P-1""#, with: "\"P\u{202E}1\""),
        base.replacingOccurrences(of: #""to":"+15551234567""#, with: #""to":"+15551234567","extra":"x""#),
        "[" + base + "]",
    ]

    @Test("the common shapes are read quickly, and exactly as the general path reads them")
    func takenAgree() throws {
        for line in Self.taken {
            let quick = try #require(Self.quick(line), "\(line)")
            #expect(quick == Self.general(line), "\(line)")
        }
    }

    @Test("anything else is left to the general path, which words the refusals")
    func leftAlone() {
        for line in Self.left {
            #expect(Self.quick(line) == nil, "\(line)")
        }
        // The same refusal words as ever, whichever path a line first went to.
        #expect(throws: IntakeError(line: 2, procedureID: "P-1", problem: "unknown field 'patient.routes[0].extra'")) {
            try IntakeCodec.decode(Data((Self.base + "\n" + Self.left[13]).utf8))
        }
    }

    @Test("mutated procedure lines: whatever the quick path takes, the general path reads the same (seeded)")
    func mutatedAgree() {
        var taken = 0
        for seed in UInt64(20_001)...24_000 {
            var random = SeededGenerator(seed: seed)
            let source = Self.taken.randomElement(using: &random)!
            let bytes = IntakeFuzzTests.mutate(Array(source.utf8), using: &random)
            guard let quick = bytes.withUnsafeBytes({ IntakeCodec.decodeQuick($0) }) else { continue }
            taken += 1
            #expect(quick == (try? IntakeCodec.decodeGeneral(Data(bytes), line: nil)), "seed \(seed)")
        }
        #expect(taken >= 50, "the quick path took \(taken) mutated lines")
    }
}

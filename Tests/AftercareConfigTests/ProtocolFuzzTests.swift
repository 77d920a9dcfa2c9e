import AftercareConfig
import AftercareCore
import AftercareTestKit
import Foundation
import Testing

@Suite("Protocol loader under random TOML mutations")
struct ProtocolFuzzTests {
    static let fragments: [String] = [
        "[[steps]]", "[steps]", "id = \"x\"", "at = \"+99999h\"", "valid_for = \"0s\"", "urgent = \"yes\"",
        "channels = [1, 2]", "body = \"\"\"", "\"\"\"", "subject = \"{first_name\"", "{clinic_fax}", "=", "[",
        "]", "\"", "'''", "\\u0000", "\u{0}", "\u{1B}[2J", "\u{202E}", "\u{85}", "# comment", "id = \"A\u{0}\"",
        "title = 1", "at = \"day 99999 25:61\"", "x.y.z = 1", "[[steps]]\nid = \"ice\"",
    ]

    static func mutate(_ text: String, using random: inout SeededGenerator) -> [UInt8] {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for _ in 0..<Int.random(in: 1...3, using: &random) {
            let index = Int.random(in: 0..<lines.count, using: &random)
            switch Int.random(in: 0..<5, using: &random) {
            case 0: lines.remove(at: index)
            case 1: lines.insert(fragments.randomElement(using: &random)!, at: index)
            case 2: lines[index] += fragments.randomElement(using: &random)!
            case 3: lines.swapAt(index, Int.random(in: 0..<lines.count, using: &random))
            default:
                var scalars = Array(lines[index].unicodeScalars)
                if !scalars.isEmpty {
                    scalars.remove(at: Int.random(in: 0..<scalars.count, using: &random))
                }
                lines[index] = String(String.UnicodeScalarView(scalars))
            }
            if lines.isEmpty { lines = [""] }
        }
        var bytes = Array(lines.joined(separator: "\n").utf8)
        if Int.random(in: 0..<8, using: &random) == 0, !bytes.isEmpty {
            bytes[Int.random(in: 0..<bytes.count, using: &random)] = [0xFF, 0xC0, 0x80, 0xED].randomElement(using: &random)!
        }
        return bytes
    }

    @Test("random mutations of the default protocol never crash the loader; every error has file:line")
    func mutations() throws {
        let text = try String(contentsOfFile: ConfigTests.defaultProtocol, encoding: .utf8)
        let folder = NSTemporaryDirectory() + "aftercare-protocol-fuzz-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/protocol.toml"
        let deadline = Date().addingTimeInterval(3)
        var cases = 0
        var refused = 0
        for seed in UInt64(1)...3_000 where Date() < deadline {
            var random = SeededGenerator(seed: seed)
            try Data(Self.mutate(text, using: &random)).write(to: URL(fileURLWithPath: path))
            cases += 1
            do {
                let careProtocol = try ProtocolFile.load(path: path)
                for step in careProtocol.steps {
                    #expect(throws: Never.self, "seed \(seed)") { try InputRules.checkName(step.id, field: "id") }
                }
            } catch {
                refused += 1
                #expect(error.file == path, "seed \(seed)")
                #expect(error.line != nil, "seed \(seed): \(error)")
                #expect(!error.description.contains("\n"), "seed \(seed): \(error.description.debugDescription)")
                #expect(!error.description.unicodeScalars.contains(where: InputRules.isUnsafe),
                        "seed \(seed): \(error.description.debugDescription)")
            }
        }
        #expect(cases >= 200, "ran \(cases) cases")
        #expect(refused > cases / 4, "the mutations reach the checks: \(refused) of \(cases) refused")
    }
}

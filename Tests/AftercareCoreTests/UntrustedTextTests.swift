import AftercareCore
import Testing

@Suite("Untrusted text escaped and bounded")
struct UntrustedTextTests {
    @Test("line breaks, NUL, ESC, DEL, C1, bidi and other format controls are shown as escapes")
    func exactEscapes() {
        #expect(UntrustedText.escaped("a\nb\rc\td\0e") == #"a\nb\rc\td\0e"#)
        #expect(UntrustedText.escaped("\u{1B}[2J\u{07}\u{7F}\u{85}\u{9B}") == #"\u{1B}[2J\u{07}\u{7F}\u{85}\u{9B}"#)
        #expect(UntrustedText.escaped("id\u{202E}txt.exe\u{202C}") == #"id\u{202E}txt.exe\u{202C}"#)
        #expect(UntrustedText.escaped("\u{2066}\u{2067}\u{2068}\u{2069}\u{202A}\u{202B}\u{202D}")
            == #"\u{2066}\u{2067}\u{2068}\u{2069}\u{202A}\u{202B}\u{202D}"#)
        #expect(UntrustedText.escaped("zero\u{200B}width\u{FEFF}\u{2028}\u{2029}")
            == #"zero\u{200B}width\u{FEFF}\u{2028}\u{2029}"#)
    }

    @Test("printable text, accents, symbols, emoji and backslashes pass unchanged", arguments: [
        "P-2026-0001", "José Ñúñez ☎ 555 · 🧊", "C:\\path\\n is not a newline", "",
        "procedure P-1: unknown field 'diagnosis'",
    ])
    func printableUnchanged(_ text: String) {
        #expect(UntrustedText.escaped(text, limit: 1_000) == text)
    }

    @Test("nothing that could break a line or steer a terminal survives")
    func nothingDangerousSurvives() {
        var everything = ""
        for value in 0..<0x3000 { if let scalar = Unicode.Scalar(value) { everything.unicodeScalars.append(scalar) } }
        let escaped = UntrustedText.escaped(everything, limit: 100_000)
        #expect(!escaped.unicodeScalars.contains { UntrustedText.needsEscape($0) })
        #expect(!escaped.contains("\n") && !escaped.contains("\r"))
    }

    @Test("a 10,000-character id is cut to 200 characters and says how much was left out")
    func bounded() {
        let id = String(repeating: "A", count: 10_000)
        #expect(UntrustedText.escaped(id) == String(repeating: "A", count: 200) + "…(+9800 chars)")
        // The bound counts Unicode scalars: a run of combining marks (one Character) cannot slip past it.
        let zalgo = "e" + String(repeating: "\u{0301}", count: 10_000)
        #expect(UntrustedText.escaped(zalgo).unicodeScalars.count == 200 + "…(+9800 chars)".unicodeScalars.count)
    }

    @Test("escaping escaped text changes nothing")
    func idempotent() {
        for text in ["a\nb\u{1B}c\u{202E}", "plain", "\u{0}\u{7F}\u{85}"] {
            let once = UntrustedText.escaped(text, limit: 1_000)
            #expect(UntrustedText.escaped(once, limit: 1_000) == once)
        }
    }

    @Test("bytes that are not UTF-8 are shown one by one; the valid ones as text")
    func bytes() {
        let raw: [UInt8] = [0x61, 0xFF, 0x0A, 0xC3, 0xA9, 0xE2, 0x82, 0x1B]
        #expect(UntrustedText.escaped(bytes: raw) == #"a\x{FF}\né\x{E2}\x{82}\u{1B}"#)
        #expect(UntrustedText.escaped(bytes: Array("fine.json".utf8)) == "fine.json")
        #expect(UntrustedText.escaped(bytes: [UInt8](repeating: 0xFF, count: 300), limit: 2)
            == #"\x{FF}\x{FF}…(+298 chars)"#)
    }
}

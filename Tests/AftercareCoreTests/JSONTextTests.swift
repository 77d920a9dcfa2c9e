import AftercareCore
import Foundation
import Testing

@Suite("Hand-written JSON text")
struct JSONTextTests {
    @Test(
        "strings are escaped per RFC 8259 and read back unchanged",
        arguments: [
            "plain", "", "quote \" and backslash \\", "line\nbreak\r\ttab", "bell \u{07} nul \u{00} unit \u{1F}",
            "José ☎ 555 · 🧊 ice", "separators \u{2028} and \u{2029} end", "\u{2028}", "trailing é",
            "e2 but not a separator: \u{2020} \u{20AC}",
        ])
    func roundTrip(_ value: String) throws {
        let literal = JSONText.string(value)
        let decoded = try JSONSerialization.jsonObject(with: Data("[\(literal)]".utf8)) as? [String]
        #expect(decoded == [value])
        // Nothing below U+0020 and no raw line or paragraph separator survives unescaped.
        #expect(!literal.unicodeScalars.contains { $0.value < 0x20 || $0 == "\u{2028}" || $0 == "\u{2029}" })
    }

    @Test("exact escapes for the characters that need them")
    func exactEscapes() {
        #expect(JSONText.string("a\"b\\c\nd") == #""a\"b\\c\nd""#)
        #expect(JSONText.string("\u{01}\u{1F}") == #""\u0001\u001f""#)
        #expect(JSONText.string("x\u{2028}y\u{2029}") == #""x\u2028y\u2029""#)
    }

    @Test("objects keep their key order")
    func object() {
        var json = JSONText()
        json.field("b", "two")
        json.field("a", 1)
        json.raw("c", "[true]")
        #expect(json.finished() == #"{"b":"two","a":1,"c":[true]}"#)
    }
}

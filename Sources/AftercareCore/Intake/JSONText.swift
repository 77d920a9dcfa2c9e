/// JSON text written by hand: deterministic key order, strings escaped per RFC 8259, and no
/// Foundation bridging on hot paths (webhook bodies, stored patients).
public struct JSONText {
    private(set) var text = "{"
    private var first = true

    public init() {}

    public mutating func field(_ name: String, _ value: String) {
        key(name)
        Self.appendString(value, to: &text)
    }

    public mutating func field(_ name: String, _ value: Int) {
        key(name)
        text += String(value)
    }

    public mutating func field(_ name: String, _ value: Bool) {
        key(name)
        text += value ? "true" : "false"
    }

    /// A field whose value is already JSON.
    public mutating func raw(_ name: String, _ json: String) {
        key(name)
        text += json
    }

    private mutating func key(_ name: String) {
        if !first { text += "," }
        first = false
        Self.appendString(name, to: &text)
        text += ":"
    }

    /// The object, closed.
    public func finished() -> String { text + "}" }

    public static func appendString(_ value: String, to out: inout String) {
        out += "\""
        // Runs that need no escaping are copied whole; only the bytes that must be escaped are
        // looked at one by one (all ASCII, or the three-byte U+2028/U+2029, which start with E2).
        let utf8 = value.utf8
        let end = utf8.endIndex
        var runStart = utf8.startIndex
        var index = runStart
        while index != end {
            let byte = utf8[index]
            var next = utf8.index(after: index)
            var escape: String?
            switch byte {
            case 0x22: escape = "\\\""
            case 0x5C: escape = "\\\\"
            case 0x0A: escape = "\\n"
            case 0x0D: escape = "\\r"
            case 0x09: escape = "\\t"
            case 0x00..<0x20:
                let hex = String(byte, radix: 16)
                escape = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            case 0xE2:
                if next != end, utf8[next] == 0x80 {
                    let third = utf8.index(after: next)
                    if third != end, utf8[third] == 0xA8 || utf8[third] == 0xA9 {
                        escape = utf8[third] == 0xA8 ? "\\u2028" : "\\u2029"
                        next = utf8.index(after: third)
                    }
                }
            default: break
            }
            if let escape {
                out += value[runStart..<index]
                out += escape
                runStart = next
            }
            index = next
        }
        out += value[runStart..<end]
        out += "\""
    }

    /// A JSON string literal.
    public static func string(_ value: String) -> String {
        var out = ""
        appendString(value, to: &out)
        return out
    }
}

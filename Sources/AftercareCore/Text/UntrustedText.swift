/// Text from outside the daemon (file names, ids, reasons, receivers' error text) made safe for a log
/// line, an `.error` file or a terminal.
///
/// Every control (C0, DEL, C1), every format control (bidi overrides and isolates, zero-width
/// characters, the byte order mark) and the line and paragraph separators are written as escapes
/// (`\n`, `\r`, `\t`, `\0`, otherwise `\u{1B}`), so one event stays one line and nothing can move the
/// cursor, recolour the terminal or reorder what follows. The result is cut to a bound, counted in
/// Unicode scalars so that no run of combining marks can slip past it, and says how much was left out.
///
/// Escaping is idempotent: the output holds only printable characters, so escaping it again (a
/// reason built from escaped names, then written to the journal) changes nothing.
public enum UntrustedText {
    /// The bound for an id or a name: enough to recognise it, never a screenful.
    public static let idLimit = 200
    /// The bound for a reason or an error text, which may quote a few ids.
    public static let reasonLimit = 1_000

    /// `text` escaped and cut to `limit` Unicode scalars, with `…(+N chars)` saying how many more there were.
    public static func escaped(_ text: String, limit: Int = idLimit) -> String {
        let scalars = text.unicodeScalars
        if scalars.count <= limit && !scalars.contains(where: needsEscape) { return text }
        var result = ""
        var kept = 0
        for scalar in scalars {
            if kept == limit { break }
            append(scalar, to: &result)
            kept += 1
        }
        let rest = scalars.count - kept
        if rest > 0 { result += "…(+\(rest) chars)" }
        return result
    }

    /// Raw bytes (a file name, say) shown as text: valid UTF-8 is escaped as by ``escaped(_:limit:)``,
    /// each byte that is not part of valid UTF-8 is shown as `\x{FF}`.
    public static func escaped(bytes: some Collection<UInt8>, limit: Int = idLimit) -> String {
        let bytes = Array(bytes)
        var result = ""
        var kept = 0
        var total = 0
        var index = 0
        while index < bytes.count {
            // UTF-8 is prefix-free: at most one length from 1 to 4 decodes to exactly one scalar here.
            var step = 1
            var scalar: Unicode.Scalar?
            for length in 1...4 where index + length <= bytes.count {
                if let text = String(validating: bytes[index..<index + length], as: UTF8.self),
                    text.unicodeScalars.count == 1
                {
                    scalar = text.unicodeScalars.first
                    step = length
                    break
                }
            }
            total += 1
            if kept < limit {
                if let scalar {
                    append(scalar, to: &result)
                } else {
                    result += "\\x{" + hex(UInt32(bytes[index]), width: 2) + "}"
                }
                kept += 1
            }
            index += step
        }
        if total > kept { result += "…(+\(total - kept) chars)" }
        return result
    }

    /// Whether a scalar must be shown as an escape.
    public static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate: return true
        default: return false
        }
    }

    private static func append(_ scalar: Unicode.Scalar, to result: inout String) {
        guard needsEscape(scalar) else {
            result.unicodeScalars.append(scalar)
            return
        }
        switch scalar {
        case "\n": result += "\\n"
        case "\r": result += "\\r"
        case "\t": result += "\\t"
        case "\0": result += "\\0"
        default: result += "\\u{" + hex(scalar.value, width: 2) + "}"
        }
    }

    private static func hex(_ value: UInt32, width: Int) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

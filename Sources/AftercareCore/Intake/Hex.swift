import Foundation

/// Lower-case hexadecimal, without Foundation's format machinery (it sits on hot paths: every
/// delivery-log row's hash, every ingested procedure's fingerprint).
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    public static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A delivery-log head hash kept outside the database (`aftercare audit head` prints one) and given
/// back to `audit verify --expect-head`.
public enum AuditAnchor {
    /// The hash, lower-cased, if `text` is one: 64 hexadecimal digits (SHA-256), surrounding spaces
    /// ignored. Otherwise a one-line reason that shows the text escaped and cut short.
    public static func parse(_ text: String) throws(ValidationError) -> String {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let isHex = trimmed.utf8.allSatisfy { byte in
            (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f"))
                || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "F"))
        }
        guard trimmed.utf8.count == 64, isHex else {
            throw ValidationError(
                field: "--expect-head", value: text,
                problem: "is not a head hash: 64 hexadecimal digits, as 'aftercare audit head' prints")
        }
        return trimmed.lowercased()
    }
}

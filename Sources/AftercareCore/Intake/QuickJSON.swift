import Foundation

/// A strict reader for the plain JSON that intake lines almost always are: objects, arrays, strings
/// without escapes, `true` and `false`. It gives up (returns nil) on anything else (numbers, `null`,
/// escapes, control characters, bytes that are not UTF-8, duplicate keys, keys that are not ASCII,
/// deep nesting), and the caller then takes the general path through `JSONSerialization`, which
/// reads the rest and words every refusal. So what it does accept, it reads exactly as that path
/// would, at a fraction of the cost (no `NSDictionary`, no bridging).
enum QuickJSON {
    indirect enum Value: Equatable {
        case string(String)
        case bool(Bool)
        case array([Value])
        case object([Member])
    }

    struct Member: Equatable {
        var key: String
        var value: Value
    }

    /// The one top-level object in `bytes`, or nil if this reader does not take it.
    static func parseObject(_ bytes: UnsafeRawBufferPointer) -> [Member]? {
        var reader = Reader(bytes: bytes)
        reader.skipSpace()
        guard reader.peek == UInt8(ascii: "{"), case .object(let members)? = reader.value(depth: 0) else {
            return nil
        }
        reader.skipSpace()
        return reader.atEnd ? members : nil
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var index = 0

        static let maxDepth = 8

        var atEnd: Bool { index >= bytes.count }
        var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipSpace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x09, 0x0A, 0x0D: index += 1
                default: return
                }
            }
        }

        mutating func value(depth: Int) -> Value? {
            guard depth <= Self.maxDepth, let byte = peek else { return nil }
            switch byte {
            case UInt8(ascii: "\""):
                return string().map(Value.string)
            case UInt8(ascii: "{"):
                return object(depth: depth)
            case UInt8(ascii: "["):
                return array(depth: depth)
            case UInt8(ascii: "t"):
                return literal("true") ? .bool(true) : nil
            case UInt8(ascii: "f"):
                return literal("false") ? .bool(false) : nil
            default:
                return nil
            }
        }

        mutating func literal(_ word: StaticString) -> Bool {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { return false }
            let matches = word.withUTF8Buffer { expected in
                (0..<count).allSatisfy { bytes[index + $0] == expected[$0] }
            }
            guard matches else { return false }
            index += count
            // A literal runs into nothing that could continue a token (`truex` is not JSON).
            if let next = peek, Self.isWordByte(next) { return false }
            return true
        }

        static func isWordByte(_ byte: UInt8) -> Bool {
            InputRules.isAlnum(byte) || byte >= 0x80
        }

        /// A string without escapes or control characters, valid UTF-8.
        mutating func string() -> String? {
            index += 1
            let start = index
            var ascii = true
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
                    index += 1
                    if ascii { return String(decoding: slice, as: UTF8.self) }
                    return String(validating: slice, as: UTF8.self)
                }
                if byte == UInt8(ascii: "\\") || byte < 0x20 { return nil }
                if byte >= 0x80 { ascii = false }
                index += 1
            }
            return nil
        }

        mutating func object(depth: Int) -> Value? {
            index += 1
            var members: [Member] = []
            skipSpace()
            if peek == UInt8(ascii: "}") {
                index += 1
                return .object(members)
            }
            while true {
                skipSpace()
                guard peek == UInt8(ascii: "\""), let key = string(), key.utf8.allSatisfy({ $0 < 0x80 }),
                    !members.contains(where: { $0.key == key })
                else { return nil }
                skipSpace()
                guard peek == UInt8(ascii: ":") else { return nil }
                index += 1
                skipSpace()
                guard let parsed = value(depth: depth + 1) else { return nil }
                members.append(Member(key: key, value: parsed))
                skipSpace()
                switch peek {
                case UInt8(ascii: ","): index += 1
                case UInt8(ascii: "}"):
                    index += 1
                    return .object(members)
                default: return nil
                }
            }
        }

        mutating func array(depth: Int) -> Value? {
            index += 1
            var items: [Value] = []
            skipSpace()
            if peek == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            }
            while true {
                skipSpace()
                guard let item = value(depth: depth + 1) else { return nil }
                items.append(item)
                skipSpace()
                switch peek {
                case UInt8(ascii: ","): index += 1
                case UInt8(ascii: "]"):
                    index += 1
                    return .array(items)
                default: return nil
                }
            }
        }
    }
}

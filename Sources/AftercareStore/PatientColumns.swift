import AftercareCore
import Foundation

/// A patient's contact details as the procedure row keeps them in columns of their own
/// (`first_name`, `time_zone`, `routes`), beside `patient_json`, so a claim reads columns instead of
/// decoding JSON. Every statement that writes `patient_json` writes these in the same statement.
///
/// `routes` is a blob: for each route in order, the channel and the address each as its decimal
/// UTF-8 byte length, `:`, and its bytes, then `1` if the patient opted out of it or `0`. Lengths
/// make it unambiguous whatever bytes (`:`, digits, NUL, line breaks) an address holds.
enum PatientColumns {
    static func routes(_ routes: [ContactRoute]) -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(routes.reduce(0) { $0 + $1.channel.utf8.count + $1.address.utf8.count + 8 })
        for route in routes {
            put(route.channel, into: &out)
            put(route.address, into: &out)
            out.append(route.optedOut ? UInt8(ascii: "1") : UInt8(ascii: "0"))
        }
        return Data(out)
    }

    private static func put(_ text: String, into out: inout [UInt8]) {
        CanonicalBytes.appendDecimal(UInt64(text.utf8.count), to: &out)
        out.append(UInt8(ascii: ":"))
        out.append(contentsOf: text.utf8)
    }

    /// The routes in `bytes`, or `nil` if they are not in the encoding above.
    static func decodeRoutes(_ bytes: UnsafeRawBufferPointer) -> [ContactRoute]? {
        var routes: [ContactRoute] = []
        var index = 0
        func field() -> String? {
            var length = 0
            var digits = 0
            while index < bytes.count, bytes[index] != UInt8(ascii: ":") {
                let byte = bytes[index]
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < 12 else { return nil }
                length = length * 10 + Int(byte - UInt8(ascii: "0"))
                digits += 1
                index += 1
            }
            guard digits > 0, index < bytes.count, bytes.count - index - 1 >= length else { return nil }
            index += 1
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[index..<index + length]), as: UTF8.self)
            index += length
            return text
        }
        while index < bytes.count {
            guard let channel = field(), let address = field(), index < bytes.count else { return nil }
            let flag = bytes[index]
            guard flag == UInt8(ascii: "0") || flag == UInt8(ascii: "1") else { return nil }
            index += 1
            routes.append(ContactRoute(channel: channel, address: address, optedOut: flag == UInt8(ascii: "1")))
        }
        return routes
    }
}

import AftercareCore
import Crypto
import Foundation

/// Delivers reminders as Standard Webhooks: an HTTPS POST of a JSON body, signed.
///
/// The body (keys in this order, `due_at` in UTC):
/// ```json
/// {"type":"aftercare.reminder","reminder_id":"P-1001.checkin-24h","procedure_id":"P-1001",
///  "patient_id":"MRN-77","step":"checkin-24h","channel":"sms","to":"+15551234567",
///  "subject":"…","text":"…","due_at":"2026-11-26T19:30:00Z","attempt":1}
/// ```
/// Headers: `webhook-id` (the reminder id, the same on every retry), `webhook-timestamp` (Unix
/// seconds), `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed with the
/// base64 part of the `whsec_` secret. 2xx is delivered; 408, 429, 5xx and network errors retry
/// (honouring `Retry-After`); 3xx (never followed) and other 4xx fail.
public struct WebhookSender: CurlTransferSender {
    public let name: String
    let settings: WebhookSettings
    /// The raw HMAC key (SymmetricKey itself is not Sendable).
    let keyBytes: Data
    /// HMAC-SHA256 with the key already absorbed: each message copies it instead of keying anew.
    let keyedMAC: KeyedMAC
    let engine: CurlEngine
    let clock: @Sendable () -> Date

    /// - Parameter secret: the `whsec_…` signing secret, already read from its file or credential.
    public init(name: String, settings: WebhookSettings, secret: String, engine: CurlEngine,
                clock: @escaping @Sendable () -> Date = { Date() }) throws(DeliveryError)
    {
        guard settings.url.lowercased().hasPrefix("https://")
            || (settings.allowInsecureHTTP && settings.url.lowercased().hasPrefix("http://"))
        else {
            throw DeliveryError(sender: name, "webhook URL must be https:// (http:// only with allow_insecure_http)")
        }
        self.name = name
        self.settings = settings
        self.keyBytes = try Self.signingKey(secret, sender: name)
        self.keyedMAC = KeyedMAC(key: keyBytes)
        self.engine = engine
        self.clock = clock
    }

    /// The HMAC key inside a `whsec_` secret, checked by the rule `config check` also applies.
    static func signingKey(_ secret: String, sender: String) throws(DeliveryError) -> Data {
        do {
            return try SecretRules.webhookSigningKey(secret)
        } catch {
            throw DeliveryError(sender: sender, "\(error)")
        }
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    public static func signature(id: String, timestamp: Int, body: Data, key: Data) -> String {
        var signed: [UInt8] = []
        signed.reserveCapacity(id.utf8.count + 24 + body.count)
        appendSignedPrefix(id: id, timestamp: timestamp, to: &signed)
        signed.append(contentsOf: body)
        return KeyedMAC(key: key).signature(of: signed)
    }

    /// The JSON body for a message.
    public static func body(for message: OutboundMessage) -> Data {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(estimatedBodySize(message))
        appendBody(message, to: &bytes)
        return Data(bytes)
    }

    func transfer(for message: OutboundMessage) -> Result<CurlRequest, Refusal> { .success(request(for: message)) }

    func classify(_ response: CurlResponse) -> SendResult { Classification.http(response) }

    public func shutdown() async {}

    /// The signed POST for a message: `id.timestamp.body` is built once, in one buffer, signed,
    /// and its tail is the body sent.
    func request(for message: OutboundMessage) -> CurlRequest {
        let timestamp = Int(clock().timeIntervalSince1970)
        var signed: [UInt8] = []
        signed.reserveCapacity(message.reminderID.utf8.count + 24 + Self.estimatedBodySize(message))
        Self.appendSignedPrefix(id: message.reminderID, timestamp: timestamp, to: &signed)
        let bodyStart = signed.count
        Self.appendBody(message, to: &signed)
        let headers = [
            "Content-Type: application/json",
            "User-Agent: aftercare/1",
            "webhook-id: " + message.reminderID,
            "webhook-timestamp: " + String(timestamp),
            "webhook-signature: " + keyedMAC.signature(of: signed),
        ]
        return CurlRequest(
            url: settings.url, kind: .httpPost(headers: headers, body: Data(signed[bodyStart...])),
            protocols: settings.allowInsecureHTTP ? "http,https" : "https", transport: settings.transport)
    }

    /// `id.timestamp.`, the part of the signed content before the body.
    static func appendSignedPrefix(id: String, timestamp: Int, to out: inout [UInt8]) {
        out.append(contentsOf: id.utf8)
        out.append(UInt8(ascii: "."))
        out.append(contentsOf: String(timestamp).utf8)
        out.append(UInt8(ascii: "."))
    }

    /// Room for the body without growing, unless many characters need escaping.
    static func estimatedBodySize(_ message: OutboundMessage) -> Int {
        192 + message.reminderID.utf8.count + message.procedureID.utf8.count + message.patientID.utf8.count
            + message.stepID.utf8.count + message.channel.utf8.count + message.address.utf8.count
            + message.subject.utf8.count + message.body.utf8.count * 9 / 8
    }

    /// The body's JSON, byte for byte what ``JSONText`` writes for the same fields in this order.
    static func appendBody(_ message: OutboundMessage, to out: inout [UInt8]) {
        var json = JSONBytes(opening: &out)
        json.field("type", "aftercare.reminder", to: &out)
        json.field("reminder_id", message.reminderID, to: &out)
        json.field("procedure_id", message.procedureID, to: &out)
        json.field("patient_id", message.patientID, to: &out)
        json.field("step", message.stepID, to: &out)
        json.field("channel", message.channel, to: &out)
        json.field("to", message.address, to: &out)
        json.field("subject", message.subject, to: &out)
        json.field("text", message.body, to: &out)
        json.key("due_at", to: &out)
        JSONBytes.appendUTCTimestamp(message.dueAt, to: &out)
        json.key("attempt", to: &out)
        out.append(contentsOf: String(message.attempt).utf8)
        out.append(UInt8(ascii: "}"))
    }
}

/// HMAC-SHA256 keyed once. A copy per message is cheap (the digest state is copied on write), and
/// the original is never written, so sharing it between threads is safe.
struct KeyedMAC: @unchecked Sendable {
    private let keyed: HMAC<SHA256>

    init(key: Data) {
        keyed = HMAC<SHA256>(key: SymmetricKey(data: key))
    }

    /// `v1,<base64 HMAC-SHA256 of content>`.
    func signature(of content: [UInt8]) -> String {
        var mac = keyed
        mac.update(data: content)
        return "v1," + Data(mac.finalize()).base64EncodedString()
    }
}

/// A JSON object written straight into bytes: the same text as ``JSONText``, without Strings.
/// The caller owns the buffer (reserved once) and closes the object.
struct JSONBytes {
    private var first = true

    init(opening out: inout [UInt8]) {
        out.append(UInt8(ascii: "{"))
    }

    mutating func key(_ name: StaticString, to out: inout [UInt8]) {
        if !first { out.append(UInt8(ascii: ",")) }
        first = false
        out.append(UInt8(ascii: "\""))
        // Keys are plain ASCII names: nothing to escape.
        out.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        out.append(UInt8(ascii: "\""))
        out.append(UInt8(ascii: ":"))
    }

    mutating func field(_ name: StaticString, _ value: String, to out: inout [UInt8]) {
        key(name, to: &out)
        Self.appendString(value, to: &out)
    }

    /// A JSON string literal, escaped exactly as ``JSONText/appendString(_:to:)`` does.
    static func appendString(_ value: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { appendEscaped($0, to: &out) }
        out.append(UInt8(ascii: "\""))
    }

    private static func appendEscaped(_ bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        let count = bytes.count
        var runStart = 0
        var index = 0
        while index < count {
            let byte = bytes[index]
            // The common case: a byte that is copied as it is, with the rest of its run.
            if byte >= 0x20 && byte != 0x22 && byte != 0x5C && byte != 0xE2 {
                index += 1
                continue
            }
            var next = index + 1
            let escape: StaticString
            var control: UInt8?
            switch byte {
            case 0x22: escape = #"\""#
            case 0x5C: escape = #"\\"#
            case 0x0A: escape = #"\n"#
            case 0x0D: escape = #"\r"#
            case 0x09: escape = #"\t"#
            case 0xE2:
                guard index + 2 < count, bytes[index + 1] == 0x80, bytes[index + 2] == 0xA8 || bytes[index + 2] == 0xA9
                else {
                    index += 1
                    continue
                }
                escape = bytes[index + 2] == 0xA8 ? #"\u2028"# : #"\u2029"#
                next = index + 3
            default:
                escape = #"\u00"#
                control = byte
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<index]))
            out.append(contentsOf: UnsafeBufferPointer(start: escape.utf8Start, count: escape.utf8CodeUnitCount))
            if let control {
                out.append(hexDigit(control >> 4))
                out.append(hexDigit(control & 0x0F))
            }
            runStart = next
            index = next
        }
        out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<count]))
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }

    /// `"2026-11-25T19:30:00Z"`: ``Timestamp/format(_:in:)`` in UTC with `Z` for `+00:00`.
    static func appendUTCTimestamp(_ date: Date, to out: inout [UInt8]) {
        let seconds = Int(date.timeIntervalSince1970.rounded(.down))
        let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        let secondOfDay = seconds - days * 86400
        let (year, month, day) = Timestamp.civilFromDays(days)
        guard (0...9999).contains(year) else {
            // Far outside any reminder's lifetime: the general formatter's padding rules apply.
            appendString(Timestamp.format(date, in: .gmt).replacingOccurrences(of: "+00:00", with: "Z"), to: &out)
            return
        }
        func digits(_ value: Int, _ width: Int) {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var rest = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(rest / divisor))
                rest %= divisor
                divisor /= 10
            }
        }
        out.append(UInt8(ascii: "\""))
        digits(year, 4)
        out.append(UInt8(ascii: "-"))
        digits(month, 2)
        out.append(UInt8(ascii: "-"))
        digits(day, 2)
        out.append(UInt8(ascii: "T"))
        digits(secondOfDay / 3600, 2)
        out.append(UInt8(ascii: ":"))
        digits(secondOfDay % 3600 / 60, 2)
        out.append(UInt8(ascii: ":"))
        digits(secondOfDay % 60, 2)
        out.append(UInt8(ascii: "Z"))
        out.append(UInt8(ascii: "\""))
    }
}

/// A sender that cannot be built as configured, as one line.
public struct DeliveryError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(sender: String, _ message: String) { self.message = "sender '\(sender)': \(message)" }
    public var description: String { message }
}

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
public struct WebhookSender: Sender {
    public let name: String
    let settings: WebhookSettings
    /// The raw HMAC key (SymmetricKey itself is not Sendable).
    let keyBytes: Data
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
        var signed = Data("\(id).\(timestamp).".utf8)
        signed.append(body)
        let code = HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: key))
        return "v1," + Data(code).base64EncodedString()
    }

    /// The JSON body for a message.
    public static func body(for message: OutboundMessage) -> Data {
        var json = JSONText()
        json.field("type", "aftercare.reminder")
        json.field("reminder_id", message.reminderID)
        json.field("procedure_id", message.procedureID)
        json.field("patient_id", message.patientID)
        json.field("step", message.stepID)
        json.field("channel", message.channel)
        json.field("to", message.address)
        json.field("subject", message.subject)
        json.field("text", message.body)
        json.field("due_at", Timestamp.format(message.dueAt, in: .gmt).replacingOccurrences(of: "+00:00", with: "Z"))
        json.field("attempt", message.attempt)
        return Data(json.finished().utf8)
    }

    public func send(_ message: OutboundMessage) async -> SendResult {
        let body = Self.body(for: message)
        let timestamp = Int(clock().timeIntervalSince1970)
        let headers = [
            "Content-Type: application/json",
            "User-Agent: aftercare/1",
            "webhook-id: \(message.reminderID)",
            "webhook-timestamp: \(timestamp)",
            "webhook-signature: \(Self.signature(id: message.reminderID, timestamp: timestamp, body: body, key: keyBytes))",
        ]
        let response = await engine.perform(
            CurlRequest(
                url: settings.url, kind: .httpPost(headers: headers, body: body),
                protocols: settings.allowInsecureHTTP ? "http,https" : "https", transport: settings.transport))
        return Classification.http(response)
    }

    public func shutdown() async {}
}

/// A sender that cannot be built as configured, as one line.
public struct DeliveryError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(sender: String, _ message: String) { self.message = "sender '\(sender)': \(message)" }
    public var description: String { message }
}

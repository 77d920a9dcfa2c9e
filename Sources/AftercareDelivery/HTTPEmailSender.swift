import AftercareCore
import Foundation

/// Delivers reminders through an HTTP "send mail" API of the common JSON shape:
///
/// ```json
/// {"from":{"email":"aftercare@clinic.example","name":"Riverside Pain Clinic"},
///  "to":[{"email":"ana@example.org"}],"subject":"…","text":"…"}
/// ```
/// with `Authorization: Bearer <token>` and `Idempotency-Key: <reminder id>` (the same on every
/// retry). Responses are classified as for webhooks.
public struct HTTPEmailSender: CurlTransferSender {
    public let name: String
    let settings: HTTPEmailSettings
    let token: String
    let displayName: String
    let engine: CurlEngine

    /// - Parameter token: the API token, already read from its file or credential.
    public init(name: String, settings: HTTPEmailSettings, token: String, clinicName: String, engine: CurlEngine)
        throws(DeliveryError)
    {
        guard settings.url.lowercased().hasPrefix("https://")
            || (settings.allowInsecureHTTP && settings.url.lowercased().hasPrefix("http://"))
        else {
            throw DeliveryError(sender: name, "email API URL must be https:// (http:// only with allow_insecure_http)")
        }
        guard !token.isEmpty, token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw DeliveryError(sender: name, "the API token must be printable ASCII without spaces")
        }
        self.name = name
        self.settings = settings
        self.token = token
        self.displayName = settings.fromName ?? clinicName
        self.engine = engine
    }

    func transfer(for message: OutboundMessage) -> Result<CurlRequest, Refusal> { request(for: message) }

    func classify(_ response: CurlResponse) -> SendResult { Classification.http(response) }

    /// The API call for a message, or why it is refused before sending.
    func request(for message: OutboundMessage) -> Result<CurlRequest, Refusal> {
        do {
            try InputRules.checkEmail(message.address, field: "to")
        } catch {
            return .failure(Refusal(reason: "refused before sending: \(error)"))
        }
        var from = JSONText()
        from.field("email", settings.fromAddress)
        from.field("name", displayName)
        var to = JSONText()
        to.field("email", message.address)
        var json = JSONText()
        json.raw("from", from.finished())
        json.raw("to", "[" + to.finished() + "]")
        json.field("subject", message.subject)
        json.field("text", message.body)
        let headers = [
            "Content-Type: application/json",
            "User-Agent: aftercare/1",
            "Authorization: Bearer \(token)",
            "Idempotency-Key: \(message.reminderID)",
        ]
        return .success(CurlRequest(
            url: settings.url, kind: .httpPost(headers: headers, body: Data(json.finished().utf8)),
            protocols: settings.allowInsecureHTTP ? "http,https" : "https", transport: settings.transport))
    }

    public func shutdown() async {}
}

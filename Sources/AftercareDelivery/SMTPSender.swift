import AftercareCore
import Foundation

/// Delivers reminders as email through the clinic's SMTP relay, over libcurl.
///
/// Each message is a complete RFC 5322 message: `Date`, a `Message-ID` made from the reminder id
/// (the same on every retry, so a duplicate is recognisable), `From` (the clinic's name as display
/// name), `To`, `Subject` (RFC 2047 encoded when not ASCII), MIME 1.0 with a UTF-8 `text/plain`
/// body in base64, and `Auto-Submitted: auto-generated`. `smtp://` requires STARTTLS unless the
/// config explicitly allows plain text (loopback relays); `smtps://` is TLS from the start.
/// 2xx is delivered; 4xx replies and connection failures retry; 5xx replies fail.
public struct SMTPSender: CurlTransferSender {
    public let name: String
    let settings: SMTPSettings
    let password: String?
    let displayName: String
    let engine: CurlEngine
    let clock: @Sendable () -> Date

    /// - Parameter password: the relay password, already read from its file or credential.
    public init(name: String, settings: SMTPSettings, password: String?, clinicName: String, engine: CurlEngine,
                clock: @escaping @Sendable () -> Date = { Date() }) throws(DeliveryError)
    {
        let url = settings.url.lowercased()
        guard url.hasPrefix("smtp://") || url.hasPrefix("smtps://") else {
            throw DeliveryError(sender: name, "SMTP URL must be smtp:// or smtps://")
        }
        do {
            try InputRules.checkEmail(settings.fromAddress, field: "from")
            try InputRules.checkText(settings.fromName ?? clinicName, field: "from_name")
            if let username = settings.username { try InputRules.checkText(username, field: "username") }
        } catch {
            throw DeliveryError(sender: name, "\(error)")
        }
        if settings.username != nil && password == nil {
            throw DeliveryError(sender: name, "a username needs a password")
        }
        self.name = name
        self.settings = settings
        self.password = password
        self.displayName = settings.fromName ?? clinicName
        self.engine = engine
        self.clock = clock
    }

    func transfer(for message: OutboundMessage) -> Result<CurlRequest, Refusal> { request(for: message) }

    func classify(_ response: CurlResponse) -> SendResult { Classification.smtp(response) }

    /// The SMTP submission for a message, or why it is refused before sending.
    func request(for message: OutboundMessage) -> Result<CurlRequest, Refusal> {
        // Addresses and header values reach the wire verbatim through libcurl: refuse anything that
        // could end a header line or smuggle a command.
        do {
            try InputRules.checkEmail(message.address, field: "to")
            try InputRules.checkText(message.subject, field: "subject")
            try InputRules.checkIdentifier(message.procedureID, field: "procedure_id")
        } catch {
            return .failure(Refusal(reason: "refused before sending: \(error)"))
        }
        let data = Self.compose(
            message, from: settings.fromAddress, displayName: displayName, date: clock())
        return .success(CurlRequest(
            url: settings.url,
            kind: .smtp(
                from: settings.fromAddress, recipients: [message.address], message: data,
                username: settings.username, password: password, requireTLS: !settings.allowInsecure),
            protocols: "smtp,smtps", transport: settings.transport))
    }

    public func shutdown() async {}

    /// The RFC 5322 message, CRLF line ends.
    static func compose(_ message: OutboundMessage, from: String, displayName: String, date: Date) -> Data {
        let domain = from.split(separator: "@").last.map(String.init) ?? "localhost"
        let messageID = "<\(message.reminderID)@aftercare.\(domain)>"
        var lines = [
            "Date: \(rfc5322Date(date))",
            "From: \(encodedPhrase(displayName)) <\(from)>",
            "To: <\(message.address)>",
            "Subject: \(encodedText(message.subject))",
            "Message-ID: \(messageID)",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: base64",
            "Auto-Submitted: auto-generated",
            "X-Aftercare-Reminder: \(message.reminderID)",
            "",
        ]
        let body = Data(message.body.replacingOccurrences(of: "\r\n", with: "\n")
            .replacingOccurrences(of: "\n", with: "\r\n").utf8).base64EncodedString()
        var index = body.startIndex
        while index < body.endIndex {
            let end = body.index(index, offsetBy: 76, limitedBy: body.endIndex) ?? body.endIndex
            lines.append(String(body[index..<end]))
            index = end
        }
        return Data((lines.joined(separator: "\r\n") + "\r\n").utf8)
    }

    /// `Wed, 25 Nov 2026 19:30:00 +0000`.
    static func rfc5322Date(_ date: Date) -> String {
        let local = LocalTime(date, in: .gmt)
        let (year, month, day) = local.date
        let weekday = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][local.weekday]
        let monthName = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][month - 1]
        return String(
            format: "%@, %02d %@ %04d %02d:%02d:%02d +0000", weekday, day, monthName, year, local.hour, local.minute,
            local.secondOfDay % 60)
    }

    /// A display name: a quoted string if ASCII, else an RFC 2047 encoded word.
    static func encodedPhrase(_ text: String) -> String {
        if text.unicodeScalars.allSatisfy({ $0.isASCII }) {
            return "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        return "=?UTF-8?B?" + Data(text.utf8).base64EncodedString() + "?="
    }

    /// Unstructured header text: as is if ASCII, else RFC 2047 encoded words of at most 75 characters.
    static func encodedText(_ text: String) -> String {
        if text.unicodeScalars.allSatisfy({ $0.isASCII }) { return text }
        var words: [String] = []
        var chunk = ""
        for character in text {
            let candidate = chunk + String(character)
            if Data(candidate.utf8).base64EncodedString().count > 60 {
                words.append("=?UTF-8?B?" + Data(chunk.utf8).base64EncodedString() + "?=")
                chunk = String(character)
            } else {
                chunk = candidate
            }
        }
        if !chunk.isEmpty { words.append("=?UTF-8?B?" + Data(chunk.utf8).base64EncodedString() + "?=") }
        return words.joined(separator: "\r\n ")
    }
}

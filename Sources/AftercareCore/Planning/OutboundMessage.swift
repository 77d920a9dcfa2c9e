import Foundation

/// A reminder rendered and addressed, ready for a sender. Everything in it has passed input
/// validation, so no field carries a control character except the body's own line breaks.
public struct OutboundMessage: Sendable, Hashable {
    /// The reminder's stable id; senders use it as their idempotency key on every retry.
    public var reminderID: String
    public var procedureID: String
    public var patientID: String
    public var stepID: String
    /// The channel of the route chosen (`sms`, `email`, …).
    public var channel: String
    /// The address on that channel (phone, email, recipient id), unmasked.
    public var address: String
    /// The subject line (email senders use it; others may ignore it).
    public var subject: String
    /// The message text, UTF-8, lines separated by `\n`.
    public var body: String
    /// When the reminder was due.
    public var dueAt: Date
    /// 1 for the first try, 2 for the first retry, and so on.
    public var attempt: Int
    /// The clinic's name, for a From display name or a signature.
    public var clinicName: String

    public init(
        reminderID: String,
        procedureID: String,
        patientID: String,
        stepID: String,
        channel: String,
        address: String,
        subject: String,
        body: String,
        dueAt: Date,
        attempt: Int,
        clinicName: String
    ) {
        self.reminderID = reminderID
        self.procedureID = procedureID
        self.patientID = patientID
        self.stepID = stepID
        self.channel = channel
        self.address = address
        self.subject = subject
        self.body = body
        self.dueAt = dueAt
        self.attempt = attempt
        self.clinicName = clinicName
    }
}

/// What one delivery attempt came to, as a sender reports it.
public enum DeliveryOutcome: Sendable, Hashable {
    /// The receiver accepted the message; `detail` says how (e.g. `HTTP 204`, `250 2.0.0 queued`).
    case delivered(detail: String)
    /// A passing failure (timeout, 5xx, 429, SMTP 4xx): try again, no sooner than `after` seconds
    /// if the receiver said so.
    case retry(after: TimeInterval?, reason: String)
    /// A permanent failure (4xx, SMTP 5xx, a redirect, a bad address): do not try again.
    case failed(reason: String)
}

/// A sender's full report of one attempt: the outcome and the receiver's own status code.
public struct SendResult: Sendable, Hashable {
    public var outcome: DeliveryOutcome
    /// The HTTP status or SMTP reply code, when the receiver gave one.
    public var responseCode: Int?

    public init(_ outcome: DeliveryOutcome, responseCode: Int? = nil) {
        self.outcome = outcome
        self.responseCode = responseCode
    }
}

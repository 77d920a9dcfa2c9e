import Foundation

/// A patient's contact route: one way to reach them, such as a phone number for the clinic's SMS
/// gateway or an email address.
///
/// The channel names what kind of address this is (`sms`, `email`, or a clinic-defined name such as
/// `portal`); the clinic's configuration maps each channel to the sender that delivers on it.
public struct ContactRoute: Codable, Sendable, Hashable {
    /// The channel, lower-case: `sms`, `email`, or another configured channel name.
    public var channel: String
    /// The address on that channel: an E.164 phone number for `sms`, an email address for `email`,
    /// a recipient id for any other channel.
    public var address: String
    /// The patient asked not to be contacted on this route; reminders skip it and the skip is logged.
    public var optedOut: Bool

    public init(channel: String, address: String, optedOut: Bool = false) {
        self.channel = channel
        self.address = address
        self.optedOut = optedOut
    }

    enum CodingKeys: String, CodingKey {
        case channel
        case address = "to"
        case optedOut = "opted_out"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.channel = try container.decode(String.self, forKey: .channel)
        self.address = try container.decode(String.self, forKey: .address)
        self.optedOut = try container.decodeIfPresent(Bool.self, forKey: .optedOut) ?? false
    }
}

/// The patient as aftercare needs them: an id, how to greet them, where they are, how to reach them.
///
/// Minimum necessary: no diagnosis, no medication, no surname.
public struct Patient: Codable, Sendable, Hashable {
    /// The clinic's patient identifier (for example an MRN). Shown in the delivery log.
    public var id: String
    /// The first name used in greetings, if the clinic chooses to include it.
    public var firstName: String?
    /// The patient's IANA time zone, such as `America/New_York`. Wall-clock steps and quiet hours
    /// are reckoned in it.
    public var timeZone: String
    /// Contact routes in the patient's order of preference; the first usable one is tried.
    public var routes: [ContactRoute]

    public init(id: String, firstName: String?, timeZone: String, routes: [ContactRoute]) {
        self.id = id
        self.firstName = firstName
        self.timeZone = timeZone
        self.routes = routes
    }

    enum CodingKeys: String, CodingKey {
        case id
        case firstName = "first_name"
        case timeZone = "time_zone"
        case routes
    }
}

/// One procedure performed on a patient, the thing a reminder plan hangs from.
public struct Procedure: Codable, Sendable, Hashable {
    /// The clinic's id for this procedure; ingest is idempotent by it.
    public var id: String
    /// The id of the protocol whose steps make the plan, e.g. `trigger-point-injection`.
    public var protocolID: String
    /// When the procedure was performed (an instant; the patient's zone says how to show it).
    public var performedAt: Date
    /// The patient it was performed on.
    public var patient: Patient

    public init(id: String, protocolID: String, performedAt: Date, patient: Patient) {
        self.id = id
        self.protocolID = protocolID
        self.performedAt = performedAt
        self.patient = patient
    }

    enum CodingKeys: String, CodingKey {
        case id = "procedure_id"
        case protocolID = "protocol"
        case performedAt = "performed_at"
        case patient
    }

    /// The patient's time zone. Valid procedures always have one (see ``validate()``).
    public var patientTimeZone: TimeZone {
        TimeZone(identifier: patient.timeZone) ?? TimeZone(identifier: "UTC")!
    }
}

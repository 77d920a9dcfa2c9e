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

/// A correction to a patient's contact details, applied to their open procedures (booked or
/// active), or only to `procedureID` when it is given. Fields left `nil` or empty stay as they are.
public struct PatientUpdate: Sendable, Hashable {
    /// The patient whose details change.
    public var patientID: String
    /// Only this procedure of theirs; every open one when `nil`.
    public var procedureID: String?
    /// The new first name for greetings.
    public var firstName: String?
    /// The new contact routes, replacing the old ones, in order of preference.
    public var routes: [ContactRoute]?
    /// Channels the patient has opted out of (a gateway's STOP): every route on them is marked so.
    public var optOut: [String]
    /// Channels the patient has opted back in to.
    public var optIn: [String]

    public init(
        patientID: String, procedureID: String? = nil, firstName: String? = nil, routes: [ContactRoute]? = nil,
        optOut: [String] = [], optIn: [String] = []
    ) {
        self.patientID = patientID
        self.procedureID = procedureID
        self.firstName = firstName
        self.routes = routes
        self.optOut = optOut
        self.optIn = optIn
    }

    /// The patient's details after this update.
    public func applied(to patient: Patient) -> Patient {
        var patient = patient
        if let firstName { patient.firstName = firstName }
        if let routes { patient.routes = routes }
        for index in patient.routes.indices {
            if optOut.contains(patient.routes[index].channel) { patient.routes[index].optedOut = true }
            if optIn.contains(patient.routes[index].channel) { patient.routes[index].optedOut = false }
        }
        return patient
    }

    /// Checks every field with the same rules as a new procedure's.
    public func validate() throws(ValidationError) {
        try InputRules.checkIdentifier(patientID, field: "patient_id")
        if let procedureID { try InputRules.checkIdentifier(procedureID, field: "procedure_id") }
        if let firstName { try InputRules.checkText(firstName, field: "first_name", maxLength: 64) }
        if let routes {
            guard !routes.isEmpty else {
                throw ValidationError(field: "routes", problem: "at least one contact route is needed")
            }
            guard routes.count <= 8 else { throw ValidationError(field: "routes", problem: "at most 8 contact routes") }
            for (index, route) in routes.enumerated() { try route.validate(field: "routes[\(index)]") }
        }
        for channel in optOut { try InputRules.checkName(channel, field: "opt_out") }
        for channel in optIn { try InputRules.checkName(channel, field: "opt_in") }
        if let channel = optOut.first(where: optIn.contains) {
            throw ValidationError(field: "opt_in", value: channel, problem: "is also in opt_out")
        }
        guard firstName != nil || routes != nil || !optOut.isEmpty || !optIn.isEmpty else {
            throw ValidationError(field: "update", problem: "needs first_name, routes, opt_out or opt_in")
        }
    }
}

/// The rules on when a procedure may be recorded as performed.
public enum PerformedTime {
    /// How far ahead of now a performed time may lie (clocks differ a little); later is a booking.
    public static let aheadTolerance: TimeInterval = 300

    /// Why `performedAt` cannot be recorded as performed at `now` with this plan, or `nil` if it can.
    /// A time ahead is an appointment to book; one so far back that every step's window has closed
    /// sends nothing and needs `force`.
    public static func problem(performedAt: Date, now: Date, plan: [PlannedReminder], force: Bool) -> String? {
        if performedAt.timeIntervalSince(now) > aheadTolerance {
            return "performed_at \(Timestamp.format(performedAt, in: .gmt)) is more than 5 minutes ahead: "
                + "book it as an appointment instead (aftercare book, or kind \"book\")"
        }
        if !force, !plan.isEmpty, plan.allSatisfy({ $0.state == .expired }) {
            return "performed_at \(Timestamp.format(performedAt, in: .gmt)) is so far back that every step's "
                + "window has closed and nothing would be sent (force it to record it anyway)"
        }
        return nil
    }
}

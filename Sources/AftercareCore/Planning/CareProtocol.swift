import Foundation

/// When a step falls due, relative to the procedure.
public enum StepOffset: Sendable, Hashable, CustomStringConvertible {
    /// Elapsed real time after the procedure: `+24h` is 86,400 seconds later, across any DST change.
    case elapsed(seconds: Int)
    /// A wall-clock time in the patient's zone on the procedure's local day plus `days`:
    /// `next day 09:00` is `days: 1, hour: 9, minute: 0`, and is 09:00 local whatever DST does.
    case wallClock(days: Int, hour: Int, minute: Int)

    /// The offset written back in the protocol file's syntax.
    public var description: String {
        switch self {
        case .elapsed(let seconds): return "+" + DurationText.format(seconds: seconds)
        case .wallClock(let days, let hour, let minute):
            let clock = String(format: "%02d:%02d", hour, minute)
            switch days {
            case 0: return "same day \(clock)"
            case 1: return "next day \(clock)"
            default: return "day \(days) \(clock)"
            }
        }
    }
}

/// A daily window, in a patient's local time, during which reminders wait rather than go out.
public struct QuietHours: Sendable, Hashable, CustomStringConvertible {
    /// Minutes after local midnight at which quiet begins (21:00 is 1260).
    public var startMinute: Int
    /// Minutes after local midnight at which quiet ends (08:00 is 480). Smaller than
    /// `startMinute` when the window spans midnight.
    public var endMinute: Int

    public init(startMinute: Int, endMinute: Int) {
        self.startMinute = startMinute
        self.endMinute = endMinute
    }

    public var description: String {
        String(format: "%02d:%02d-%02d:%02d", startMinute / 60, startMinute % 60, endMinute / 60, endMinute % 60)
    }

    /// Whether the local time of day `secondOfDay` is inside the window.
    public func contains(secondOfDay second: Int) -> Bool {
        let start = startMinute * 60
        let end = endMinute * 60
        if start == end { return false }
        return start < end ? second >= start && second < end : second >= start || second < end
    }
}

/// The clinic-wide settings the planner and the templates need.
public struct ClinicPolicy: Sendable, Hashable {
    /// The clinic's name, in every message.
    public var clinicName: String
    /// The clinic's phone number as patients should dial it, in every message.
    public var clinicPhone: String
    /// The clinic's own time zone (used when a patient has none of their own to show).
    public var clinicTimeZone: String
    /// Quiet hours for ordinary steps, in the patient's zone; `nil` means none.
    public var quietHours: QuietHours?
    /// Quiet hours for steps marked `urgent`; `nil` means urgent steps ignore quiet hours.
    public var urgentQuietHours: QuietHours?

    public init(
        clinicName: String,
        clinicPhone: String,
        clinicTimeZone: String,
        quietHours: QuietHours?,
        urgentQuietHours: QuietHours?
    ) {
        self.clinicName = clinicName
        self.clinicPhone = clinicPhone
        self.clinicTimeZone = clinicTimeZone
        self.quietHours = quietHours
        self.urgentQuietHours = urgentQuietHours
    }
}

/// One step of a protocol: what to tell the patient, when, and for how long it stays worth sending.
public struct Step: Sendable, Hashable {
    /// The step's id, unique in its protocol (`ice`, `checkin-24h`).
    public var id: String
    /// When it falls due.
    public var offset: StepOffset
    /// How long after its nominal time the step may still go out; after that it expires unsent.
    public var validForSeconds: Int
    /// Safety content: follows the clinic's urgent quiet-hours rule instead of the ordinary one.
    public var urgent: Bool
    /// The channels this step may use, in no particular order; empty means any channel. The
    /// patient's preference order decides among them.
    public var channels: [String]
    /// The subject line (for email) as a template.
    public var subject: MessageTemplate
    /// The message body as a template.
    public var body: MessageTemplate
    /// For a step sent at the procedure (`send_at_procedure = true`): the night hours, in the
    /// patient's zone, during which it waits. Outside them it goes out at once, quiet hours or not,
    /// since the patient has just been seen and is awake; and its validity window counts only the
    /// hours outside them, so a procedure late in the evening still gets it the next morning. A
    /// clinic without quiet hours holds nothing (see ``Planner/nightHours(for:policy:)``).
    /// `nil` for every other step.
    public var nightHold: QuietHours?

    /// Whether the step goes out at the procedure under the night-hold rule.
    public var sendsAtProcedure: Bool { nightHold != nil }

    public init(
        id: String,
        offset: StepOffset,
        validForSeconds: Int,
        urgent: Bool,
        channels: [String],
        subject: MessageTemplate,
        body: MessageTemplate,
        nightHold: QuietHours? = nil
    ) {
        self.id = id
        self.offset = offset
        self.validForSeconds = validForSeconds
        self.urgent = urgent
        self.channels = channels
        self.subject = subject
        self.body = body
        self.nightHold = nightHold
    }
}

/// A protocol: the ordered steps of aftercare for one kind of procedure.
public struct CareProtocol: Sendable, Hashable {
    /// The id procedures name it by (`trigger-point-injection`).
    public var id: String
    /// A human title for listings.
    public var title: String
    /// The steps, in file order.
    public var steps: [Step]

    public init(id: String, title: String, steps: [Step]) {
        self.id = id
        self.title = title
        self.steps = steps
    }

    /// The step with this id, if the protocol has it.
    public func step(_ id: String) -> Step? { steps.first { $0.id == id } }
}

/// Durations as protocol and config files write them: `90s`, `30m`, `24h`, `2d`, `1h30m`.
public enum DurationText {
    /// Parses a duration; `nil` if the text is not one.
    public static func parse(_ text: String) -> Int? {
        var total = 0
        var number: Int?
        var sawUnit = false
        for char in text {
            if let digit = char.wholeNumberValue, char.isASCII {
                number = (number ?? 0) * 10 + digit
                if number! > 10_000_000 { return nil }
            } else {
                guard let value = number else { return nil }
                switch char {
                case "s": total += value
                case "m": total += value * 60
                case "h": total += value * 3600
                case "d": total += value * 86400
                default: return nil
                }
                number = nil
                sawUnit = true
            }
        }
        return number == nil && sawUnit ? total : nil
    }

    /// Formats seconds in the largest whole units: `86400` is `24h`, `5400` is `1h30m`.
    public static func format(seconds: Int) -> String {
        if seconds == 0 { return "0h" }
        var rest = seconds
        var out = ""
        for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] where rest >= size {
            out += "\(rest / size)\(unit)"
            rest %= size
        }
        return out
    }
}

import Foundation

/// A message template: plain text with named fields in braces, parsed once when its protocol loads.
///
/// Fields:
/// - `{first_name}`: the patient's first name, or `there` when none is on file ("Hi {first_name},");
/// - `{clinic_name}`, `{clinic_phone}`;
/// - `{procedure_time}`: the procedure's local clock time, relative to when the message is sent
///   ("2:30 PM today");
/// - `{time:+24h}`: the local clock time of the procedure plus an elapsed duration, relative to when
///   the message is sent ("3:40 PM tomorrow", "9:00 AM on Thu, Nov 26").
///
/// `{{` and `}}` stand for literal braces. Times are in the patient's zone.
public struct MessageTemplate: Sendable, Hashable {
    enum Segment: Sendable, Hashable {
        case text(String)
        case firstName
        case clinicName
        case clinicPhone
        case procedureTime
        case time(afterProcedure: Int)
    }

    /// The template as written in the protocol file.
    public let source: String
    let segments: [Segment]

    /// The field names a template may use.
    public static let fieldNames = ["first_name", "clinic_name", "clinic_phone", "procedure_time", "time:+<duration>"]

    public init(parsing source: String) throws(TemplateError) {
        self.source = source
        var segments: [Segment] = []
        var text = ""
        var index = source.startIndex
        while index < source.endIndex {
            let char = source[index]
            let next = source.index(after: index)
            if char == "{" {
                if next < source.endIndex, source[next] == "{" {
                    text.append("{")
                    index = source.index(after: next)
                    continue
                }
                guard let close = source[next...].firstIndex(of: "}") else {
                    throw TemplateError(problem: "an opening brace has no closing brace (write {{ for a literal brace)")
                }
                let name = String(source[next..<close])
                if !text.isEmpty {
                    segments.append(.text(text))
                    text = ""
                }
                segments.append(try Self.field(name))
                index = source.index(after: close)
            } else if char == "}" {
                guard next < source.endIndex, source[next] == "}" else {
                    throw TemplateError(problem: "a closing brace has no opening brace (write }} for a literal brace)")
                }
                text.append("}")
                index = source.index(after: next)
            } else {
                text.append(char)
                index = next
            }
        }
        if !text.isEmpty { segments.append(.text(text)) }
        self.segments = segments
    }

    private static func field(_ name: String) throws(TemplateError) -> Segment {
        switch name {
        case "first_name": return .firstName
        case "clinic_name": return .clinicName
        case "clinic_phone": return .clinicPhone
        case "procedure_time": return .procedureTime
        default:
            if name.hasPrefix("time:+"), let seconds = DurationText.parse(String(name.dropFirst(6))) {
                return .time(afterProcedure: seconds)
            }
            throw TemplateError(
                problem: "unknown field {\(InputRules.printable(name))} (known: "
                    + fieldNames.map { "{\($0)}" }.joined(separator: ", ") + ")"
            )
        }
    }

    /// Renders the template for one reminder.
    public func render(_ context: TemplateContext) -> String {
        var out = ""
        out.reserveCapacity(source.utf8.count + 32)
        let zone = context.procedure.patientTimeZone
        for segment in segments {
            switch segment {
            case .text(let text): out += text
            case .firstName: out += context.procedure.patient.firstName ?? "there"
            case .clinicName: out += context.policy.clinicName
            case .clinicPhone: out += context.policy.clinicPhone
            case .procedureTime:
                out += Self.relative(context.procedure.performedAt, from: context.sendAt, zone: zone)
            case .time(let seconds):
                out += Self.relative(
                    context.procedure.performedAt.addingTimeInterval(Double(seconds)), from: context.sendAt, zone: zone)
            }
        }
        return out
    }

    /// `3:40 PM today`, `3:40 PM tomorrow`, `3:40 PM yesterday`, or `3:40 PM on Thu, Nov 26`.
    static func relative(_ date: Date, from reference: Date, zone: TimeZone) -> String {
        let target = LocalTime(date, in: zone)
        let today = LocalTime(reference, in: zone).day
        switch target.day - today {
        case 0: return target.clockText + " today"
        case 1: return target.clockText + " tomorrow"
        case -1: return target.clockText + " yesterday"
        default: return target.clockText + " on " + target.dateText
        }
    }
}

/// Why a template was refused when its protocol was loaded.
public struct TemplateError: Error, Sendable, Hashable, CustomStringConvertible {
    public var problem: String
    public init(problem: String) { self.problem = problem }
    public var description: String { problem }
}

/// Everything a template may draw on for one reminder.
public struct TemplateContext: Sendable {
    public var procedure: Procedure
    public var policy: ClinicPolicy
    /// When the message is being sent: relative words ("today", "tomorrow") are reckoned from it.
    public var sendAt: Date

    public init(procedure: Procedure, policy: ClinicPolicy, sendAt: Date) {
        self.procedure = procedure
        self.policy = policy
        self.sendAt = sendAt
    }
}

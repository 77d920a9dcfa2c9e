import Foundation

/// Times as staff type them (`aftercare add --performed-at`, `reschedule`, `protocol preview`): `now`,
/// an RFC 3339 time with offset, or a local `2026-11-25 14:30` (also with `T` and seconds) read in the
/// patient's zone. The one parser for every such input; spool files carry RFC 3339 with an offset
/// (``Timestamp``), which is the same first branch.
///
/// A local time that does not exist in the zone (inside a spring-forward gap) or that happens twice
/// (the fall-back hour) is refused: picking one would silently move a procedure by an hour.
public enum TimeInput {
    /// The instant `text` names, reading a local time in `zone`.
    public static func parse(_ text: String, in zone: TimeZone, now: Date) throws(TimeInputError) -> Date {
        if text == "now" { return now }
        if let date = Timestamp.parse(text) { return date }
        guard let local = localTime(text) else {
            throw TimeInputError(
                problem: "'\(InputRules.printable(text))' is not now, a time with offset (2026-11-25T14:30:00-05:00) "
                    + "or a local time (2026-11-25 14:30)")
        }
        switch local.resolve(in: zone) {
        case .unique(let date):
            return date
        case .gap(let transition, let before, _):
            throw TimeInputError(
                problem: "'\(InputRules.printable(text))' falls in \(zone.identifier)'s DST gap "
                    + "(\(change(transition, before, zone, "jump"))); that local time does not exist")
        case .repeated(let first, let second, let transition, let before, _):
            throw TimeInputError(
                problem: "'\(InputRules.printable(text))' happens twice in \(zone.identifier) "
                    + "(\(change(transition, before, zone, "go back"))); give the offset: "
                    + "\(Timestamp.format(first, in: zone)) (first) or \(Timestamp.format(second, in: zone)) (second)")
        }
    }

    /// `clocks jump from 02:00 to 03:00 on 2026-10-04`.
    static func change(_ transition: Date, _ offsetBefore: Int, _ zone: TimeZone, _ verb: String) -> String {
        let from = LocalTime(wallSeconds: Int(transition.timeIntervalSince1970) + offsetBefore)
        let to = LocalTime(transition, in: zone)
        return "clocks \(verb) from \(from.clock24Text) to \(to.clock24Text) on \(to.isoDateText)"
    }

    /// `YYYY-MM-DD HH:MM` or `YYYY-MM-DDTHH:MM`, with optional `:SS`; `nil` if not exactly that.
    static func localTime(_ text: String) -> LocalTime? {
        let bytes = Array(text.utf8)
        guard bytes.count == 16 || bytes.count == 19 else { return nil }
        func number(_ start: Int, _ width: Int) -> Int? {
            var value = 0
            for byte in bytes[start..<start + width] {
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        guard bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
            bytes[10] == UInt8(ascii: " ") || bytes[10] == UInt8(ascii: "T"), bytes[13] == UInt8(ascii: ":"),
            let year = number(0, 4), let month = number(5, 2), let day = number(8, 2), let hour = number(11, 2),
            let minute = number(14, 2), (1...12).contains(month), day >= 1,
            day <= Timestamp.daysIn(month: month, year: year), hour < 24, minute < 60
        else { return nil }
        var second = 0
        if bytes.count == 19 {
            guard bytes[16] == UInt8(ascii: ":"), let value = number(17, 2), value < 60 else { return nil }
            second = value
        }
        return LocalTime(
            day: Timestamp.daysFromCivil(year: year, month: month, day: day),
            secondOfDay: hour * 3600 + minute * 60 + second)
    }
}

/// Why a typed time was refused; one line, without the option name (the caller adds it).
public struct TimeInputError: Error, Sendable, Hashable, CustomStringConvertible {
    public var problem: String
    public init(problem: String) { self.problem = problem }
    public var description: String { problem }
}

import Foundation

/// Wall-clock arithmetic in a time zone, done on the zone's UTC offsets directly: fast, Sendable,
/// and explicit about the two DST edge cases.
///
/// - A local time that does not exist (the spring-forward gap, e.g. 02:30) resolves to the same
///   distance past the gap: 02:30 becomes 03:30.
/// - A local time that happens twice (the fall-back hour) resolves to its first occurrence.
///
/// ``resolve(in:)`` says which of the three cases a local time is, for callers (such as the time
/// parser for staff input) that must refuse the two edge cases rather than pick for the user.
public struct LocalTime: Sendable, Hashable {
    /// Days since 1970-01-01 of the local date.
    public var day: Int
    /// Seconds since local midnight.
    public var secondOfDay: Int

    public var hour: Int { secondOfDay / 3600 }
    public var minute: Int { secondOfDay % 3600 / 60 }

    /// The local date and time of an instant in `zone`.
    public init(_ date: Date, in zone: TimeZone) {
        let local = Int(date.timeIntervalSince1970.rounded(.down)) + zone.secondsFromGMT(for: date)
        day = local >= 0 ? local / 86400 : (local - 86399) / 86400
        secondOfDay = local - day * 86400
    }

    public init(day: Int, secondOfDay: Int) {
        self.day = day
        self.secondOfDay = secondOfDay
    }

    /// The wall time `seconds` after 1970-01-01T00:00 (a UTC instant plus an offset).
    public init(wallSeconds seconds: Int) {
        day = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
        secondOfDay = seconds - day * 86400
    }

    /// What a local time names in a zone.
    public enum Resolution: Sendable, Hashable {
        /// Exactly one instant.
        case unique(Date)
        /// None: clocks jumped over it at `transition`, from `offsetBefore` to `offsetAfter`.
        case gap(transition: Date, offsetBefore: Int, offsetAfter: Int)
        /// Two instants: before and after the clocks went back at `transition`.
        case repeated(first: Date, second: Date, transition: Date, offsetBefore: Int, offsetAfter: Int)
    }

    /// Seconds since 1970-01-01T00:00 of this wall time, as if it were UTC.
    var wallSeconds: Int { day * 86400 + secondOfDay }

    /// Every instant this local time names in `zone`, and the transition around it when there is one.
    ///
    /// Offsets run from UTC-12 to UTC+14, so the instant lies within a day of the wall time read as
    /// UTC; the offsets in force a day either side bracket it (every zone keeps its offset for more
    /// than two days around any transition). Sampling only half a day either side misses the
    /// transition in zones east of +12 (Pacific/Chatham, Pacific/Auckland).
    public func resolve(in zone: TimeZone) -> Resolution {
        let wall = wallSeconds
        let before = Self.offset(zone, at: wall - 86400)
        let after = Self.offset(zone, at: wall + 86400)
        var instants: [Int] = []
        for offset in Set([before, after]) {
            let candidate = wall - offset
            if Self.offset(zone, at: candidate) == offset { instants.append(candidate) }
        }
        instants.sort()
        if before == after {
            // No transition in reach; a zone with none answers the same offset everywhere.
            return .unique(Self.date(instants.first ?? wall - before))
        }
        let transition = Self.transition(zone, from: wall - 86400, to: wall + 86400, before: before)
        switch instants.count {
        case 0:
            return .gap(transition: Self.date(transition), offsetBefore: before, offsetAfter: after)
        case 1:
            return .unique(Self.date(instants[0]))
        default:
            return .repeated(
                first: Self.date(instants[0]), second: Self.date(instants[1]), transition: Self.date(transition),
                offsetBefore: before, offsetAfter: after)
        }
    }

    /// The instant this local time names in `zone` (see the type's notes for gaps and repeats).
    public func instant(in zone: TimeZone) -> Date {
        switch resolve(in: zone) {
        case .unique(let date): return date
        case .repeated(let first, _, _, _, _): return first
        case .gap(_, let offsetBefore, _):
            // Read the wall time with the offset in force before the gap: 02:30 becomes 03:30.
            return Self.date(wallSeconds - offsetBefore)
        }
    }

    /// The first second at which `zone`'s offset is no longer `before`, between `low` and `high`.
    static func transition(_ zone: TimeZone, from low: Int, to high: Int, before: Int) -> Int {
        var low = low
        var high = high
        while high - low > 1 {
            let middle = low + (high - low) / 2
            if offset(zone, at: middle) == before { low = middle } else { high = middle }
        }
        return high
    }

    static func offset(_ zone: TimeZone, at seconds: Int) -> Int {
        zone.secondsFromGMT(for: date(seconds))
    }

    static func date(_ seconds: Int) -> Date { Date(timeIntervalSince1970: Double(seconds)) }

    /// Year, month (1-12), day of month (1-31).
    public var date: (year: Int, month: Int, day: Int) { Timestamp.civilFromDays(day) }

    /// 0 for Sunday … 6 for Saturday.
    public var weekday: Int { ((day % 7) + 7 + 4) % 7 }

    /// `3:40 PM`.
    public var clockText: String {
        let hour12 = hour % 12 == 0 ? 12 : hour % 12
        return "\(hour12):\(minute < 10 ? "0" : "")\(minute) \(hour < 12 ? "AM" : "PM")"
    }

    /// `14:05`.
    public var clock24Text: String { Timestamp.pad(hour, 2) + ":" + Timestamp.pad(minute, 2) }

    /// `2026-10-04`.
    public var isoDateText: String {
        let (year, month, dayOfMonth) = date
        return Timestamp.pad(year, 4) + "-" + Timestamp.pad(month, 2) + "-" + Timestamp.pad(dayOfMonth, 2)
    }

    /// `Thu, Nov 26`.
    public var dateText: String {
        let (_, month, dayOfMonth) = date
        return "\(Self.weekdays[weekday]), \(Self.months[month - 1]) \(dayOfMonth)"
    }

    static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
}

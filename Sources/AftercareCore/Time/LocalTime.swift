import Foundation

/// Wall-clock arithmetic in a time zone, done on the zone's UTC offsets directly: fast, Sendable,
/// and explicit about the two DST edge cases.
///
/// - A local time that does not exist (the spring-forward gap, e.g. 02:30) resolves to the same
///   distance past the gap: 02:30 becomes 03:30.
/// - A local time that happens twice (the fall-back hour) resolves to its first occurrence.
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

    /// The instant this local time names in `zone` (see the type's notes for gaps and repeats).
    public func instant(in zone: TimeZone) -> Date {
        let wall = Double(day * 86400 + secondOfDay)
        let before = zone.secondsFromGMT(for: Date(timeIntervalSince1970: wall - 43200))
        let after = zone.secondsFromGMT(for: Date(timeIntervalSince1970: wall + 43200))
        // Earlier instants first, so a repeated local time takes its first occurrence.
        for offset in Set([before, after]).sorted(by: >) {
            let candidate = Date(timeIntervalSince1970: wall - Double(offset))
            if zone.secondsFromGMT(for: candidate) == offset { return candidate }
        }
        // In a gap: read the wall time with the offset in force before it.
        return Date(timeIntervalSince1970: wall - Double(before))
    }

    /// Year, month (1-12), day of month (1-31).
    public var date: (year: Int, month: Int, day: Int) { Timestamp.civilFromDays(day) }

    /// 0 for Sunday … 6 for Saturday.
    public var weekday: Int { ((day % 7) + 7 + 4) % 7 }

    /// `3:40 PM`.
    public var clockText: String {
        let hour12 = hour % 12 == 0 ? 12 : hour % 12
        return "\(hour12):\(minute < 10 ? "0" : "")\(minute) \(hour < 12 ? "AM" : "PM")"
    }

    /// `Thu, Nov 26`.
    public var dateText: String {
        let (_, month, dayOfMonth) = date
        return "\(Self.weekdays[weekday]), \(Self.months[month - 1]) \(dayOfMonth)"
    }

    static let weekdays = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
}

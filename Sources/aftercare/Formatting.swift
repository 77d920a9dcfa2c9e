import AftercareCore
import Foundation

/// How the CLI shows times and tables.
enum Show {
    /// `Wed Nov 25 14:30` in `zone`, with the year (`Wed Nov 25 2025 14:30`) when it is not the year of
    /// `now` there.
    static func local(_ date: Date, _ zone: TimeZone, now: Date = Date()) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        let sameYear = calendar.component(.year, from: date) == calendar.component(.year, from: now)
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = zone
        formatter.dateFormat = sameYear ? "EEE MMM d HH:mm" : "EEE MMM d yyyy HH:mm"
        return formatter.string(from: date)
    }

    /// `Wed Nov 25 14:30 EST`.
    static func localWithZone(_ date: Date, _ zone: TimeZone, now: Date = Date()) -> String {
        local(date, zone, now: now) + " " + zoneName(zone, at: date)
    }

    /// The zone as people read it: its usual abbreviation (EST, CET, JST) when it has a lettered one,
    /// else its name (`America/Sao_Paulo`), never a bare offset like `GMT+9`.
    static func zoneName(_ zone: TimeZone, at date: Date) -> String {
        // Foundation on Linux answers "GMT-5" where the tz database says "EST": ask the database first.
        for candidate in [ZoneAbbreviations.lookup(zone, at: date), zone.abbreviation(for: date)] {
            if let candidate, !candidate.isEmpty, candidate.allSatisfy({ $0.isASCII && $0.isLetter }) {
                return candidate
            }
        }
        return zone.identifier
    }

    /// Left-aligned columns separated by two spaces, no wider than needed.
    static func table(_ header: [String], _ rows: [[String]]) -> String {
        // Cells may quote receivers' replies and stored ids: escaped, one line each, bounded.
        let all = [header] + rows.map { $0.map { UntrustedText.escaped($0, limit: UntrustedText.idLimit) } }
        var widths = Array(repeating: 0, count: header.count)
        for row in all {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        return all.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }

    /// Parses `now`, an RFC 3339 time with offset, or a local `YYYY-MM-DD HH:MM` (also with `T`) read
    /// in `zone`, by the one rule of ``TimeInput`` (a local time in a DST gap, or one that happens
    /// twice, is refused); the error names `option`.
    static func parseTime(_ text: String, zone: TimeZone, option: String, now: Date = Date()) throws -> Date {
        do {
            return try TimeInput.parse(text, in: zone, now: now)
        } catch {
            throw CLIError("\(option): \(error)")
        }
    }

    static func stateLabel(_ reminder: PlannedReminder) -> String {
        reminder.state == .expired ? "expired" : "scheduled"
    }
}

/// The abbreviations the tz database (`/usr/share/zoneinfo`, TZif) gives a zone's local times.
enum ZoneAbbreviations {
    /// The abbreviation in force at `date`: the one of the last transition at or before it whose
    /// offset and daylight flag match the zone's at `date`; nil if the zone file cannot be read.
    static func lookup(_ zone: TimeZone, at date: Date, folder: String = "/usr/share/zoneinfo") -> String? {
        let id = zone.identifier
        guard !id.isEmpty, !id.hasPrefix("/"), !id.split(separator: "/").contains(".."),
            let data = FileManager.default.contents(atPath: folder + "/" + id)
        else { return nil }
        let bytes = [UInt8](data)
        func number(_ at: Int, _ size: Int) -> Int64? {
            guard at >= 0, at + size <= bytes.count else { return nil }
            var value: Int64 = 0
            for byte in bytes[at..<(at + size)] { value = value << 8 | Int64(byte) }
            // Sign-extend: transition times before 1970 are negative.
            let shift = Int64(64 - size * 8)
            return (value << shift) >> shift
        }
        func header(_ at: Int) -> [Int]? {
            guard at + 44 <= bytes.count, bytes[at..<(at + 4)].elementsEqual("TZif".utf8) else { return nil }
            return (0..<6).compactMap { number(at + 20 + $0 * 4, 4).map(Int.init) }
        }
        guard var counts = header(0), counts.count == 6, bytes.count > 4 else { return nil }
        var start = 44
        var timeSize = 4
        if bytes[4] >= UInt8(ascii: "2") {
            // Version 2 and later repeat the data with 64-bit times after the 32-bit block.
            let (utc, std, leaps) = (counts[0], counts[1], counts[2])
            let (times, types, chars) = (counts[3], counts[4], counts[5])
            start += times * 5 + types * 6 + chars + leaps * 8 + std + utc
            guard let second = header(start), second.count == 6 else { return nil }
            counts = second
            start += 44
            timeSize = 8
        }
        let (times, types, chars) = (counts[3], counts[4], counts[5])
        let indexes = start + times * timeSize
        let infos = indexes + times
        let names = infos + types * 6
        guard types > 0, names + chars <= bytes.count else { return nil }
        func abbreviation(type: Int) -> String? {
            guard type < types, let index = number(infos + type * 6 + 5, 1).map({ Int(UInt8(truncatingIfNeeded: $0)) }),
                index < chars
            else { return nil }
            let text = bytes[(names + index)..<(names + chars)].prefix { $0 != 0 }
            return String(decoding: text, as: UTF8.self)
        }
        func matches(type: Int) -> Bool {
            guard let offset = number(infos + type * 6, 4) else { return false }
            return Int(offset) == zone.secondsFromGMT(for: date)
                && (bytes[infos + type * 6 + 4] != 0) == zone.isDaylightSavingTime(for: date)
        }
        let now = Int64(date.timeIntervalSince1970.rounded(.down))
        var found: Int?
        for transition in 0..<times {
            guard let at = number(start + transition * timeSize, timeSize), at <= now else { break }
            let type = Int(bytes[indexes + transition])
            if matches(type: type) { found = type }
        }
        if found == nil { found = (0..<types).last(where: matches) }
        return found.flatMap(abbreviation)
    }
}

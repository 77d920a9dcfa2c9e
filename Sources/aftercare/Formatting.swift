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

    /// The zone as people read it: its usual abbreviation (EST, CET) when it has a lettered one, else
    /// its name (`Asia/Tokyo`), never a bare offset like `GMT+9`.
    static func zoneName(_ zone: TimeZone, at date: Date) -> String {
        if let abbreviation = zone.abbreviation(for: date), !abbreviation.isEmpty,
            abbreviation.allSatisfy({ $0.isASCII && $0.isLetter }) {
            return abbreviation
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

import AftercareCore
import Foundation

/// Reads a protocol file (see `Config/protocols/README.md`).
public enum ProtocolFile {
    /// Loads and checks a protocol: every step's id, offset, window, channels and templates.
    public static func load(path: String) throws(ConfigError) -> CareProtocol {
        let source = try TOMLSource(path: path)
        let root = Section(source, source.root, path: "")
        let id = try root.requiredString("id")
        do {
            try InputRules.checkName(id, field: "id")
        } catch {
            throw root.error("id", "\(error)")
        }
        let title = try root.string("title") ?? id
        var nightHours = defaultNightHours
        if let text = try root.string("night_hours") {
            guard let window = parseWindow(text) else {
                throw root.error(
                    "night_hours",
                    "'night_hours' = \"\(InputRules.printable(text))\" is not a window such as \"23:00-06:00\"")
            }
            nightHours = window
        }
        guard let stepSections = try root.tables("steps"), !stepSections.isEmpty else {
            throw root.error(nil, "a protocol needs at least one [[steps]] table")
        }
        try root.rejectUnknownKeys()
        var steps: [Step] = []
        for section in stepSections {
            let step = try readStep(section, nightHours: nightHours)
            if steps.contains(where: { $0.id == step.id }) {
                throw section.error("id", "step id '\(step.id)' appears twice")
            }
            steps.append(step)
        }
        return CareProtocol(id: id, title: title, steps: steps)
    }

    /// The night hours a step sent at the procedure waits through when the protocol names none.
    public static let defaultNightHours = QuietHours(startMinute: 23 * 60, endMinute: 6 * 60)

    private static func readStep(_ section: Section, nightHours: QuietHours) throws(ConfigError) -> Step {
        let id = try section.requiredString("id")
        do {
            try InputRules.checkName(id, field: "id")
        } catch {
            throw section.error("id", "step id: \(error)")
        }
        let atText = try section.requiredString("at")
        guard let offset = parseOffset(atText) else {
            throw section.error(
                "at", "'at' = \"\(InputRules.printable(atText))\" is not an offset such as +0h, +24h, "
                    + "same day 18:00, next day 09:00 or day 2 09:00")
        }
        guard let validFor = try section.duration("valid_for", in: 60...(30 * 86400)) else {
            throw section.error(nil, "missing key 'valid_for' in \(section.display) (how late the step may still go out)")
        }
        let urgent = try section.bool("urgent") ?? false
        let sendAtProcedure = try section.bool("send_at_procedure") ?? false
        if sendAtProcedure {
            guard offset == .elapsed(seconds: 0) else {
                throw section.error(
                    "send_at_procedure", "send_at_procedure = true needs at = \"+0h\" (the procedure itself)")
            }
            guard !urgent else {
                throw section.error(
                    "send_at_procedure", "a step is either send_at_procedure or urgent: each has its own hold rule")
            }
        }
        let channels = try section.strings("channels") ?? []
        for channel in channels {
            do {
                try InputRules.checkName(channel, field: "channels")
            } catch {
                throw section.error("channels", "\(error)")
            }
        }
        let subjectText = try section.requiredString("subject")
        let bodyText = try section.requiredString("body")
        let subject: MessageTemplate
        let body: MessageTemplate
        do {
            try InputRules.checkText(subjectText, field: "subject", maxLength: 200)
            subject = try MessageTemplate(parsing: subjectText)
        } catch let error as TemplateError {
            throw section.error("subject", "subject template: \(error)")
        } catch {
            throw section.error("subject", "\(error)")
        }
        do {
            body = try MessageTemplate(parsing: bodyText)
        } catch {
            throw section.error("body", "body template: \(error)")
        }
        try section.rejectUnknownKeys()
        return Step(
            id: id, offset: offset, validForSeconds: validFor, urgent: urgent, channels: channels, subject: subject,
            body: body, nightHold: sendAtProcedure ? nightHours : nil)
    }

    /// `+24h`, `+1h30m`, `same day 18:00`, `next day 09:00`, `day 2 09:00`.
    static func parseOffset(_ text: String) -> StepOffset? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("+") {
            return DurationText.parse(String(trimmed.dropFirst())).map { .elapsed(seconds: $0) }
        }
        let words = trimmed.split(separator: " ")
        let days: Int
        let clock: Substring
        switch (words.count, words.first) {
        case (3, "same") where words[1] == "day": (days, clock) = (0, words[2])
        case (3, "next") where words[1] == "day": (days, clock) = (1, words[2])
        case (3, "day"):
            guard let value = Int(words[1]), (0...30).contains(value) else { return nil }
            (days, clock) = (value, words[2])
        default: return nil
        }
        guard let minutes = parseClock(String(clock)) else { return nil }
        return .wallClock(days: days, hour: minutes / 60, minute: minutes % 60)
    }

    /// `23:00-06:00` as a window; start and end must differ.
    static func parseWindow(_ text: String) -> QuietHours? {
        let parts = text.trimmingCharacters(in: .whitespaces).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let start = parseClock(String(parts[0])), let end = parseClock(String(parts[1])),
            start != end
        else { return nil }
        return QuietHours(startMinute: start, endMinute: end)
    }

    /// `HH:MM` as minutes after midnight.
    static func parseClock(_ text: String) -> Int? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count == 2, parts[1].count == 2, let hour = Int(parts[0]),
            let minute = Int(parts[1]), (0..<24).contains(hour), (0..<60).contains(minute)
        else { return nil }
        return hour * 60 + minute
    }
}

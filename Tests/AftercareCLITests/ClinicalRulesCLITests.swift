import Foundation
import Testing

/// Issue 9's clinical rules as staff meet them, through the built binary.
@Suite("Clinical rules at the CLI: first-day advice, warnings, DST input, real zones, SMS length")
struct ClinicalRulesCLITests {
    static let add = ["add", "--procedure", "P-1", "--patient", "MRN-1", "--route", "sms:+15551234567", "--dry-run"]

    /// Zones covering every whole-hour offset from -10 to +14.
    static let zones = [
        "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/Chicago",
        "America/New_York", "America/Halifax", "America/Sao_Paulo", "Atlantic/South_Georgia", "Atlantic/Cape_Verde",
        "Africa/Abidjan", "Africa/Lagos", "Africa/Johannesburg", "Europe/Moscow", "Asia/Dubai", "Asia/Karachi",
        "Asia/Dhaka", "Asia/Bangkok", "Asia/Shanghai", "Asia/Tokyo", "Australia/Brisbane", "Pacific/Noumea",
        "Pacific/Fiji", "Pacific/Tongatapu", "Pacific/Kiritimati",
    ]

    /// A zone where the local hour at `date` is `hour` (add plans against the real clock, so the test
    /// picks the patient's zone to make the procedure fall in the evening or the night there).
    static func zone(whereHourIs hour: Int, at date: Date) throws -> TimeZone {
        let found = zones.compactMap(TimeZone.init(identifier:)).first { zone in
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = zone
            return calendar.component(.hour, from: date) == hour
        }
        return try #require(found)
    }

    static func shown(_ date: Date, _ zone: TimeZone) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = zone
        formatter.dateFormat = "EEE MMM d HH:mm"
        return formatter.string(from: date)
    }

    @Test(
        "a procedure in the patient's evening or night (any zone, quiet hours on) gets the first-day advice"
    )
    func firstDayAdviceEveryPatient() throws {
        let harness = try CLIHarness(quietHours: true)
        let performed = Date().addingTimeInterval(-120)
        // 21:xx where the patient lives: inside quiet hours (21:00-08:00), before the night: sent at once.
        let evening = try Self.zone(whereHourIs: 21, at: performed)
        let atOnce = try harness.run(
            Self.add + ["--time-zone", evening.identifier, "--performed-at", Self.rfc3339(performed)])
        #expect(atOnce.status == 0, "\(atOnce.stderr)")
        // Due at once: the hour it was planned in (the procedure's, or the next if planning crossed it).
        let hours = [performed, Date()].map { String(Self.shown($0, evening).dropLast(2)) }
        for step in ["ice ", "activity "] {
            let line = atOnce.stdout.split(separator: "\n").first { $0.contains("  \(step)") }
            #expect(hours.contains { line?.contains($0) == true }, "\(atOnce.stdout)")
            #expect(line?.contains("scheduled") == true && line?.contains("held") == false, "\(atOnce.stdout)")
        }
        #expect(!atOnce.stderr.contains("WARNING"), "\(atOnce.stderr)")
        // 01:xx there (a patient far from the clinic, or a late entry): held until 06:00, still sent.
        let night = try Self.zone(whereHourIs: 1, at: performed)
        let held = try harness.run(
            Self.add + ["--time-zone", night.identifier, "--performed-at", Self.rfc3339(performed)])
        #expect(held.status == 0, "\(held.stderr)")
        for step in ["ice ", "activity "] {
            let line = held.stdout.split(separator: "\n").first { $0.contains("  \(step)") }
            #expect(line?.contains(" 06:00 ") == true, "\(held.stdout)")
            #expect(
                line?.contains("scheduled") == true && line?.contains("night hours: held until 6:00 AM") == true,
                "\(held.stdout)")
        }
        #expect(!held.stderr.contains("WARNING"), "\(held.stderr)")
    }

    @Test("add names on stderr, loudly, every step that will not be sent and why")
    func warnsAboutUnsendableSteps() throws {
        let harness = try CLIHarness(quietHours: true)
        let performed = Self.rfc3339(Date().addingTimeInterval(-25 * 3600))
        let result = try harness.run(Self.add + ["--time-zone", "America/New_York", "--performed-at", performed])
        #expect(result.status == 0, "\(result.stderr)")
        let warnings = result.stderr.split(separator: "\n").filter { $0.hasPrefix("WARNING: ") }
        #expect(warnings.count == 2, "\(result.stderr)")
        #expect(warnings.contains { $0.hasPrefix("WARNING: step ice will not be sent: window closed at ") })
        #expect(warnings.contains { $0.hasPrefix("WARNING: step activity will not be sent: window closed at ") })
    }

    @Test("a local time in a DST gap, or one that happens twice, is refused in the patient's zone's words")
    func dstInput() throws {
        let harness = try CLIHarness()
        let gap = try harness.run(Self.add + ["--time-zone", "Australia/Sydney", "--performed-at", "2026-10-04 02:30"])
        #expect(gap.status != 0)
        #expect(
            gap.stderr == "Error: --performed-at: '2026-10-04 02:30' falls in Australia/Sydney's DST gap (clocks jump "
                + "from 02:00 to 03:00 on 2026-10-04); that local time does not exist\n", "\(gap.stderr)")
        let twice = try harness.run(
            Self.add + ["--time-zone", "Australia/Sydney", "--performed-at", "2026-04-05 02:30"])
        #expect(twice.status != 0)
        #expect(twice.stderr.contains("happens twice in Australia/Sydney"), "\(twice.stderr)")
        #expect(twice.stderr.contains("2026-04-05T02:30:00+11:00 (first) or 2026-04-05T02:30:00+10:00 (second)"))
        // Months ago, every window has closed: add refuses that unless forced, which is not what this tests.
        let explicit = try harness.run(
            Self.add + ["--time-zone", "Australia/Sydney", "--performed-at", "2026-04-05T02:30:00+10:00", "--force"])
        #expect(explicit.status == 0, "\(explicit.stderr)")
        #expect(explicit.stdout.contains("Sun Apr 5 02:30 "), "\(explicit.stdout)")
        // The same parser behind reschedule and protocol preview.
        let preview = try harness.run(
            ["protocol", "preview", "--time-zone", "Australia/Sydney", "--performed-at", "2026-10-04 02:30"])
        #expect(preview.status != 0)
        #expect(preview.stderr.contains("falls in Australia/Sydney's DST gap"), "\(preview.stderr)")
        let reschedule = try harness.run(
            [
                "reschedule", "P-9", "--time-zone", "Australia/Sydney", "--performed-at", "2026-04-05 02:30", "--wait",
                "0",
            ])
        #expect(reschedule.status != 0)
        #expect(reschedule.stderr.contains("happens twice in Australia/Sydney"), "\(reschedule.stderr)")
        #expect(harness.incomingFiles().isEmpty)
    }

    @Test("abbreviations and offset names are refused as zones, with a hint; links are accepted")
    func realZones() throws {
        let harness = try CLIHarness()
        for (zone, expected) in [
            ("EST", "is an abbreviation, not a time zone"), ("GMT+5", "is a fixed offset, not a time zone"),
            ("Etc/GMT+5", "it means UTC-5"),
        ] {
            let result = try harness.run(Self.add + ["--time-zone", zone, "--performed-at", "now"])
            #expect(result.status != 0)
            #expect(result.stderr.contains(expected) && result.stderr.contains("America/New_York"), "\(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1)
        }
        let link = try harness.run(Self.add + ["--time-zone", "Asia/Calcutta", "--performed-at", "now"])
        #expect(link.status == 0, "\(link.stderr)")
        // The clinic's own zone in the configuration follows the same rule.
        let config = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        try config.replacingOccurrences(of: "time_zone = \"America/New_York\"", with: "time_zone = \"EST\"")
            .write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        let check = try harness.run(["config", "check"])
        #expect(check.status != 0)
        #expect(
            check.stderr.contains("aftercare.toml:") && check.stderr.contains("is an abbreviation"), "\(check.stderr)")
    }

    @Test("protocol preview shows the warning signs in the first message and each message's SMS segments")
    func previewSegments() throws {
        let harness = try CLIHarness(quietHours: true)
        let result = try harness.run([
            "protocol", "preview", "--performed-at", "2026-11-25 23:30", "--first-name", "Ana",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let sections = result.stdout.components(separatedBy: "── ").dropFirst()
        #expect(sections.count == 6)
        for section in sections {
            #expect(
                section.range(of: #"\[SMS: \d+ SMS segments? \(GSM-7, \d+ septets\)\]"#, options: .regularExpression)
                    != nil, "\(section)")
        }
        let ice = try #require(sections.first { $0.hasPrefix("ice ") })
        #expect(ice.contains("Thu Nov 26 06:00"), "\(ice)")
        #expect(ice.contains("fever or flu-like symptoms"))
        #expect(ice.contains("sent at the procedure"))
        let activity = try #require(sections.first { $0.hasPrefix("activity ") })
        // Sent the next morning, the 24 h limit still reads right.
        #expect(activity.contains("avoid strenuous exercise until 11:30 PM today"), "\(activity)")
        #expect(result.stdout.contains("night hours 23:00-06:00"))
    }

    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}

import AftercareConfig
import AftercareCore
import Foundation
import Testing

/// The default protocol read against the patient leaflet it comes from (`../shared/seed`), and the
/// protocol keys for first-day advice.
@Suite("The default protocol's words and its first-day rule")
struct ProtocolWordsTests {
    /// The leaflet's "When to Call Your Provider" list, word for word (lower-cased).
    static let warningSigns = [
        "severe pain that worsens instead of improving",
        "redness, swelling, or drainage at the injection site",
        "fever or flu-like symptoms",
        "numbness or tingling that doesn't go away",
    ]
    /// Words that would name the diagnosis, the procedure or a medication.
    static let forbidden = [
        "trigger", "tpi", "anesthetic", "anaesthetic", "corticosteroid", "steroid", "lidocaine", "medication",
        "diagnos", "myofascial", "knot",
    ]

    static func defaultProtocol() throws -> CareProtocol { try ProtocolFile.load(path: ConfigTests.defaultProtocol) }

    static let policy = ClinicPolicy(
        clinicName: "Riverside Pain Clinic", clinicPhone: "+1 555-010-2030", clinicTimeZone: "America/New_York",
        quietHours: nil, urgentQuietHours: nil)

    @Test("the quoted leaflet lines are the leaflet's own, where the leaflet is at hand")
    func quotesAreTheSeeds() throws {
        let seed = ConfigTests.repository.deletingLastPathComponent().appendingPathComponent(
            "shared/seed/"
                + "trigger-point-injections.txt")
        guard let text = try? String(contentsOf: seed, encoding: .utf8) else { return }
        let lower = text.lowercased().replacingOccurrences(of: "’", with: "'")
        for sign in Self.warningSigns { #expect(lower.contains(sign), "\(sign)") }
        #expect(
            lower.contains("avoid strenuous exercise for the first 24 hours, but resume light activity as tolerated"))
    }

    @Test(
        "every warning sign from the first message on; the 24 h limit said right; no diagnosis words; phone everywhere")
    func wordsMatchTheSeed() throws {
        let careProtocol = try Self.defaultProtocol()
        func body(_ id: String) throws -> String { try #require(careProtocol.step(id)).body.source.lowercased() }
        for id in ["ice", "checkin-24h", "checkin-48h", "checkin-72h"] {
            for sign in Self.warningSigns { #expect(try body(id).contains(sign), "\(id): \(sign)") }
        }
        #expect(try body("activity").contains("avoid strenuous exercise until {time:+24h}"))
        #expect(try body("activity").contains("light activity is fine"))
        // What ends at 24 h is the strenuous-exercise limit; light activity was fine all along.
        #expect(try body("resume-activity").contains("the 24-hour limit on strenuous exercise is over"))
        #expect(try !body("resume-activity").contains("resume light activity"))
        // Sent the next morning after an evening procedure, the first-day words must still read right.
        for id in ["ice", "activity"] {
            for word in ["today", "tonight", "this evening"] { #expect(try !body(id).contains(word), "\(id): \(word)") }
        }
        for step in careProtocol.steps {
            #expect(step.body.source.contains("{clinic_phone}"), "\(step.id)")
            let words = (step.subject.source + " " + step.body.source).lowercased()
            for word in Self.forbidden { #expect(!words.contains(word), "\(step.id): \(word)") }
        }
    }

    @Test("the first-day steps are sent at the procedure under 23:00-06:00 night hours; every message stays GSM-7")
    func firstDayRule() throws {
        let careProtocol = try Self.defaultProtocol()
        #expect(careProtocol.steps.filter(\.sendsAtProcedure).map(\.id) == ["ice", "activity"])
        #expect(careProtocol.step("ice")?.nightHold == QuietHours(startMinute: 23 * 60, endMinute: 6 * 60))
        let procedure = Procedure(
            id: "P-1", protocolID: careProtocol.id, performedAt: Timestamp.parse("2026-11-25T23:30:00-05:00")!,
            patient: Patient(
                id: "M-1", firstName: "Alexandria", timeZone: "America/New_York",
                routes: [ContactRoute(channel: "sms", address: "+15551234567")]))
        for step in careProtocol.steps {
            let text = step.body.render(
                TemplateContext(
                    procedure: procedure, policy: Self.policy,
                    sendAt: procedure.performedAt.addingTimeInterval(6.5 * 3600)))
            let length = SMSLength(text)
            #expect(length.encoding == .gsm7, "\(step.id): \(length)")
            #expect(length.segments <= 4, "\(step.id): \(length)")
        }
    }

    func loadError(_ protocolText: String) throws -> String? {
        let path = NSTemporaryDirectory() + "aftercare-protocol-" + UUID().uuidString + ".toml"
        try protocolText.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try ProtocolFile.load(path: path)
            return nil
        } catch {
            return "\(error)"
        }
    }

    static func file(night: String? = nil, step: String) -> String {
        (night.map { "night_hours = \"\($0)\"\n" } ?? "") + """
            id = "p"
            [[steps]]
            id = "s"
            valid_for = "6h"
            subject = "s"
            body = "b"
            \(step)
            """
    }

    @Test("send_at_procedure needs at = +0h and no urgent; night_hours must be a window")
    func sendAtProcedureKeys() throws {
        #expect(try loadError(Self.file(step: "at = \"+0h\"\nsend_at_procedure = true")) == nil)
        #expect(
            try loadError(Self.file(step: "at = \"+24h\"\nsend_at_procedure = true"))?
                .contains("send_at_procedure = true needs at = \"+0h\"") == true)
        #expect(
            try loadError(Self.file(step: "at = \"+0h\"\nsend_at_procedure = true\nurgent = true"))?
                .contains("either send_at_procedure or urgent") == true)
        for bad in ["23:00", "23:00-23:00", "25:00-06:00", "11pm-6am"] {
            let error = try loadError(Self.file(night: bad, step: "at = \"+0h\"\nsend_at_procedure = true"))
            #expect(error?.contains("is not a window such as \"23:00-06:00\"") == true, "\(bad)")
            #expect(error?.contains(":1") == true, "\(bad): \(error ?? "")")
        }
        let path = NSTemporaryDirectory() + "aftercare-protocol-" + UUID().uuidString + ".toml"
        try Self.file(night: "22:30-07:00", step: "at = \"+0h\"\nsend_at_procedure = true")
            .write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(
            try ProtocolFile.load(path: path).steps[0].nightHold
                == QuietHours(startMinute: 22 * 60 + 30, endMinute: 420))
    }
}

import AftercareCore
import Foundation
import Testing

/// A small protocol with one step of each kind the planner must handle.
///
/// Its `now` step is an ordinary 0 h step (no `send_at_procedure`), so the quiet-hours tests below
/// still prove the ordinary rule; since issue 9 the default protocol's first-day steps follow the
/// night-hold rule instead, proved in `FirstDayAdviceTests`.
enum PlanFixture {
    static func step(_ id: String, _ offset: StepOffset, validFor: Int = 6 * 3600, urgent: Bool = false) -> Step {
        Step(
            id: id, offset: offset, validForSeconds: validFor, urgent: urgent, channels: [],
            subject: try! MessageTemplate(parsing: "s"), body: try! MessageTemplate(parsing: "b"))
    }

    static let careProtocol = CareProtocol(
        id: "test", title: "test",
        steps: [
            step("now", .elapsed(seconds: 0)),
            step("plus24", .elapsed(seconds: 86400), validFor: 12 * 3600),
            step("nextday9", .wallClock(days: 1, hour: 9, minute: 0), validFor: 12 * 3600),
            step("urgent24", .elapsed(seconds: 86400), validFor: 12 * 3600, urgent: true),
        ])

    static func policy(quiet: QuietHours? = nil, urgent: QuietHours? = nil) -> ClinicPolicy {
        ClinicPolicy(
            clinicName: "Riverside Pain Clinic", clinicPhone: "+1 555-010-2030", clinicTimeZone: "America/New_York",
            quietHours: quiet, urgentQuietHours: urgent)
    }

    static func procedure(at text: String, zone: String) -> Procedure {
        Procedure(
            id: "P-1", protocolID: "test", performedAt: Timestamp.parse(text)!,
            patient: Patient(id: "MRN-1", firstName: "Ana", timeZone: zone, routes: [ContactRoute(channel: "sms", address: "+15551234567")]))
    }

    static func plan(_ procedure: Procedure, policy: ClinicPolicy = policy(), now: Date? = nil) -> [String: PlannedReminder] {
        let reminders = Planner.plan(procedure, protocol: careProtocol, policy: policy, now: now ?? procedure.performedAt)
        return Dictionary(uniqueKeysWithValues: reminders.map { ($0.stepID, $0) })
    }

    static func local(_ date: Date, _ zone: String) -> String { Timestamp.format(date, in: TimeZone(identifier: zone)!) }
}

@Suite("The planner across DST, zones, quiet hours and expiry")
struct PlannerTests {
    @Test("New York springs forward (Mar 8 2026): +24h is 24 real hours, next day 09:00 is 09:00 local")
    func newYorkSpring() {
        let procedure = PlanFixture.procedure(at: "2026-03-07T10:00:00-05:00", zone: "America/New_York")
        let plan = PlanFixture.plan(procedure)
        #expect(plan["plus24"]!.dueAt.timeIntervalSince(procedure.performedAt) == 86400)
        #expect(PlanFixture.local(plan["plus24"]!.dueAt, "America/New_York") == "2026-03-08T11:00:00-04:00")
        #expect(PlanFixture.local(plan["nextday9"]!.dueAt, "America/New_York") == "2026-03-08T09:00:00-04:00")
    }

    @Test("New York falls back (Nov 1 2026)")
    func newYorkFall() {
        let procedure = PlanFixture.procedure(at: "2026-10-31T10:00:00-04:00", zone: "America/New_York")
        let plan = PlanFixture.plan(procedure)
        #expect(plan["plus24"]!.dueAt.timeIntervalSince(procedure.performedAt) == 86400)
        #expect(PlanFixture.local(plan["plus24"]!.dueAt, "America/New_York") == "2026-11-01T09:00:00-05:00")
        #expect(PlanFixture.local(plan["nextday9"]!.dueAt, "America/New_York") == "2026-11-01T09:00:00-05:00")
        #expect(plan["nextday9"]!.dueAt.timeIntervalSince(procedure.performedAt) == 24 * 3600 - 3600 + 3600)
    }

    @Test("Berlin springs forward (Mar 29 2026) and falls back (Oct 25 2026)")
    func berlin() {
        let spring = PlanFixture.plan(PlanFixture.procedure(at: "2026-03-28T14:30:00+01:00", zone: "Europe/Berlin"))
        #expect(PlanFixture.local(spring["plus24"]!.dueAt, "Europe/Berlin") == "2026-03-29T15:30:00+02:00")
        #expect(PlanFixture.local(spring["nextday9"]!.dueAt, "Europe/Berlin") == "2026-03-29T09:00:00+02:00")
        let fall = PlanFixture.plan(PlanFixture.procedure(at: "2026-10-24T14:30:00+02:00", zone: "Europe/Berlin"))
        #expect(PlanFixture.local(fall["plus24"]!.dueAt, "Europe/Berlin") == "2026-10-25T13:30:00+01:00")
        #expect(PlanFixture.local(fall["nextday9"]!.dueAt, "Europe/Berlin") == "2026-10-25T09:00:00+01:00")
    }

    @Test("a wall-clock time inside the spring-forward gap moves past it; a repeated one takes its first occurrence")
    func gapAndRepeat() {
        let zone = TimeZone(identifier: "America/New_York")!
        let gapDay = LocalTime(Timestamp.parse("2026-03-08T12:00:00-04:00")!, in: zone).day
        #expect(PlanFixture.local(LocalTime(day: gapDay, secondOfDay: 2 * 3600 + 1800).instant(in: zone), "America/New_York")
            == "2026-03-08T03:30:00-04:00")
        let repeatDay = LocalTime(Timestamp.parse("2026-11-01T12:00:00-05:00")!, in: zone).day
        #expect(PlanFixture.local(LocalTime(day: repeatDay, secondOfDay: 1 * 3600 + 1800).instant(in: zone), "America/New_York")
            == "2026-11-01T01:30:00-04:00")
    }

    @Test("wall-clock steps and quiet hours use the patient's zone, not the clinic's")
    func patientZone() {
        // The clinic is in New York; this patient is in Tokyo.
        let procedure = PlanFixture.procedure(at: "2026-11-25T10:00:00+09:00", zone: "Asia/Tokyo")
        let quiet = QuietHours(startMinute: 21 * 60, endMinute: 8 * 60)
        let plan = PlanFixture.plan(procedure, policy: PlanFixture.policy(quiet: quiet))
        #expect(PlanFixture.local(plan["nextday9"]!.dueAt, "Asia/Tokyo") == "2026-11-26T09:00:00+09:00")
        // 10:00 in Tokyo is 20:00 in New York, inside the clinic's evening; it is not held.
        #expect(plan["now"]!.dueAt == procedure.performedAt)
        #expect(plan["now"]!.note == nil)
    }

    @Test("a reminder due in quiet hours waits until they end; urgent steps follow the urgent rule")
    func quietHoursDefer() {
        let quiet = QuietHours(startMinute: 21 * 60, endMinute: 8 * 60)
        let procedure = PlanFixture.procedure(at: "2026-11-25T22:30:00-05:00", zone: "America/New_York")
        var steps = PlanFixture.careProtocol
        steps.steps[0].validForSeconds = 12 * 3600
        let plan = Dictionary(uniqueKeysWithValues: Planner.plan(
            procedure, protocol: steps, policy: PlanFixture.policy(quiet: quiet), now: procedure.performedAt).map { ($0.stepID, $0) })
        #expect(PlanFixture.local(plan["now"]!.dueAt, "America/New_York") == "2026-11-26T08:00:00-05:00")
        #expect(plan["now"]!.state == .scheduled)
        #expect(plan["now"]!.note == "quiet hours: held until 8:00 AM")
        // +24 h lands at 22:30 again: the ordinary step waits, the urgent one (no urgent rule) does not.
        #expect(PlanFixture.local(plan["plus24"]!.dueAt, "America/New_York") == "2026-11-27T08:00:00-05:00")
        #expect(plan["urgent24"]!.dueAt == procedure.performedAt.addingTimeInterval(86400))
        // With an urgent window of 22:00-07:00 the urgent step waits until 07:00.
        let urgentPlan = PlanFixture.plan(
            procedure, policy: PlanFixture.policy(quiet: quiet, urgent: QuietHours(startMinute: 22 * 60, endMinute: 7 * 60)))
        #expect(PlanFixture.local(urgentPlan["urgent24"]!.dueAt, "America/New_York") == "2026-11-27T07:00:00-05:00")
        // A window that does not wrap midnight.
        let lunch = QuietHours(startMinute: 12 * 60, endMinute: 13 * 60)
        let step = PlanFixture.step("x", .elapsed(seconds: 0))
        let noon = Timestamp.parse("2026-11-25T12:15:00-05:00")!
        let zone = TimeZone(identifier: "America/New_York")!
        #expect(Planner.allowedTime(for: step, at: noon, zone: zone, policy: PlanFixture.policy(quiet: lunch))
            == Timestamp.parse("2026-11-25T13:00:00-05:00")!)
        #expect(Planner.allowedTime(for: step, at: noon.addingTimeInterval(3600), zone: zone, policy: PlanFixture.policy(quiet: lunch))
            == noon.addingTimeInterval(3600))
    }

    @Test("a step whose window closes inside quiet hours expires rather than go out stale")
    func quietHoursOutlastWindow() {
        let quiet = QuietHours(startMinute: 21 * 60, endMinute: 8 * 60)
        let procedure = PlanFixture.procedure(at: "2026-11-25T22:30:00-05:00", zone: "America/New_York")
        let plan = PlanFixture.plan(procedure, policy: PlanFixture.policy(quiet: quiet))
        #expect(plan["now"]!.state == .expired)
        #expect(plan["now"]!.note?.hasPrefix("quiet hours last until 2026-11-26T08:00:00-05:00") == true)
    }

    @Test("a procedure entered 25 hours late: 0 h steps expired, 24 h steps due now")
    func lateEntry() {
        let procedure = PlanFixture.procedure(at: "2026-11-24T09:00:00-05:00", zone: "America/New_York")
        let now = procedure.performedAt.addingTimeInterval(25 * 3600)
        let plan = PlanFixture.plan(procedure, now: now)
        #expect(plan["now"]!.state == .expired)
        #expect(plan["now"]!.note == "window closed at 2026-11-24T15:00:00-05:00 before it could be sent")
        // Shown at the time it was due, beside the window it missed, not at the time it was entered.
        #expect(plan["now"]!.dueAt == procedure.performedAt)
        #expect(plan["plus24"]!.state == .scheduled)
        #expect(plan["plus24"]!.dueAt == now)
        #expect(plan["plus24"]!.expiresAt == procedure.performedAt.addingTimeInterval(36 * 3600))
    }

    @Test("durations and retry delays")
    func durationsAndRetries() {
        #expect(DurationText.parse("24h") == 86400)
        #expect(DurationText.parse("1h30m") == 5400)
        #expect(DurationText.parse("2d") == 172_800)
        #expect(DurationText.parse("90s") == 90)
        for bad in ["", "h", "24", "1.5h", "-1h", "24 h", "1y"] { #expect(DurationText.parse(bad) == nil, "\(bad)") }
        #expect(DurationText.format(seconds: 5400) == "1h30m")
        let retry = RetryPolicy(initialDelay: 30, multiplier: 2, maxDelay: 600, maxAttempts: 8, jitter: 0.2)
        #expect((1...6).map { retry.baseDelay(afterAttempt: $0) } == [30, 60, 120, 240, 480, 600])
        #expect(retry.delay(afterAttempt: 1, retryAfter: nil, unit: 0) == 24)
        #expect(retry.delay(afterAttempt: 1, retryAfter: nil, unit: 0.9999).rounded() == 36)
        #expect(retry.delay(afterAttempt: 1, retryAfter: 120, unit: 0.5) == 120)
    }
}

@Suite("Message templates")
struct TemplateTests {
    static let policy = PlanFixture.policy()

    func render(_ template: String, firstName: String? = "Ana", at: String = "2026-11-25T15:40:00-05:00",
                sendAt: String? = nil) throws -> String
    {
        var procedure = PlanFixture.procedure(at: at, zone: "America/New_York")
        procedure.patient.firstName = firstName
        let context = TemplateContext(procedure: procedure, policy: Self.policy, sendAt: Timestamp.parse(sendAt ?? at)!)
        return try MessageTemplate(parsing: template).render(context)
    }

    @Test("every field renders, with relative local times")
    func fields() throws {
        #expect(try render("Hi {first_name}, {clinic_name} {clinic_phone}") == "Hi Ana, Riverside Pain Clinic +1 555-010-2030")
        #expect(try render("Hi {first_name}", firstName: nil) == "Hi there")
        #expect(try render("until {time:+24h}") == "until 3:40 PM tomorrow")
        #expect(try render("at {procedure_time}") == "at 3:40 PM today")
        #expect(try render("at {procedure_time}", sendAt: "2026-11-26T09:00:00-05:00") == "at 3:40 PM yesterday")
        #expect(try render("{time:+72h}") == "3:40 PM on Sat, Nov 28")
        #expect(try render("{time:+20m}", at: "2026-11-25T11:45:00-05:00") == "12:05 PM today")
        #expect(try render("{time:+12h}", at: "2026-11-25T12:30:00-05:00") == "12:30 AM tomorrow")
        #expect(try render("{{literal}} braces }}") == "{literal} braces }")
    }

    @Test("unknown fields and unbalanced braces are refused at load")
    func refusals() {
        #expect(throws: TemplateError.self) { try MessageTemplate(parsing: "Dear {surname}") }
        #expect(throws: TemplateError.self) { try MessageTemplate(parsing: "Dear {first_name") }
        #expect(throws: TemplateError.self) { try MessageTemplate(parsing: "a } b") }
        #expect(throws: TemplateError.self) { try MessageTemplate(parsing: "{time:+soon}") }
        do {
            _ = try MessageTemplate(parsing: "{diagnosis}")
        } catch {
            #expect(error.problem.hasPrefix("unknown field {diagnosis}"))
        }
    }
}

@Suite("Input rules for procedures")
struct ValidationTests {
    func problem(_ change: (inout Procedure) -> Void) -> String? {
        var procedure = PlanFixture.procedure(at: "2026-11-25T10:00:00-05:00", zone: "America/New_York")
        change(&procedure)
        do {
            try procedure.validate()
            return nil
        } catch {
            return error.description
        }
    }

    @Test("a valid procedure passes; each bad field is named")
    func rules() {
        #expect(problem { _ in } == nil)
        #expect(problem { $0.id = "" } == "procedure_id: must not be empty")
        #expect(problem { $0.id = "P 1" }?.hasPrefix("procedure_id 'P 1': may hold only") == true)
        #expect(problem { $0.patient.id = "-x" } == "patient.id '-x': must start with a letter or digit")
        #expect(problem { $0.patient.firstName = "Ana\nBcc: x" }?.contains("control character (U+000A)") == true)
        #expect(problem { $0.patient.timeZone = "Mars/Base" }?.contains("is not a known IANA time zone") == true)
        #expect(problem { $0.patient.routes = [] } == "patient.routes: at least one contact route is needed")
        #expect(problem { $0.patient.routes[0].address = "+0123" }?.contains("is not an E.164 phone number") == true)
        #expect(problem { $0.patient.routes = [ContactRoute(channel: "email", address: "a@b")] }?.contains("is not an email address") == true)
        #expect(problem { $0.patient.routes = [ContactRoute(channel: "email", address: "a b@c.org")] }?.contains("is not an email address") == true)
        #expect(problem { $0.patient.routes = [ContactRoute(channel: "Email", address: "a@c.org")] }?.hasPrefix("patient.routes[0].channel") == true)
        #expect(problem { $0.performedAt = Date(timeIntervalSince1970: 0) } == "performed_at: year 1970 is outside 2000-2100")
    }
}

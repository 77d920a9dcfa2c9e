import AftercareCore
import Foundation
import Testing

/// The default protocol's shape: two steps sent at the procedure, an ordinary +24 h step and an urgent check-in.
enum FirstDayFixture {
    static let night = QuietHours(startMinute: 23 * 60, endMinute: 6 * 60)
    static let quiet = QuietHours(startMinute: 21 * 60, endMinute: 8 * 60)
    static let urgentQuiet = QuietHours(startMinute: 22 * 60, endMinute: 7 * 60)

    static let careProtocol = CareProtocol(
        id: "test", title: "test",
        steps: [
            withNight(PlanFixture.step("ice", .elapsed(seconds: 0))),
            withNight(PlanFixture.step("activity", .elapsed(seconds: 0))),
            PlanFixture.step("resume", .elapsed(seconds: 86400), validFor: 12 * 3600),
            PlanFixture.step("checkin", .elapsed(seconds: 86400), validFor: 12 * 3600, urgent: true),
        ])

    static func withNight(_ step: Step) -> Step {
        var step = step
        step.nightHold = night
        return step
    }

    static let policy = PlanFixture.policy(quiet: quiet, urgent: urgentQuiet)

    static func plan(_ procedure: Procedure, now: Date? = nil) -> [String: PlannedReminder] {
        let reminders = Planner.plan(
            procedure, protocol: careProtocol, policy: policy, now: now ?? procedure.performedAt)
        return Dictionary(uniqueKeysWithValues: reminders.map { ($0.stepID, $0) })
    }
}

@Suite("First-day advice reaches every patient")
struct FirstDayAdviceTests {
    @Test("inside the clinic's quiet hours but before the night, the first-day advice goes out at once")
    func eveningGoesAtOnce() {
        // Before this rule, 22:30 was inside quiet hours (21:00-08:00) and the 6 h window closed at 04:30: expired.
        let procedure = PlanFixture.procedure(at: "2026-11-25T22:30:00-05:00", zone: "America/New_York")
        let plan = FirstDayFixture.plan(procedure)
        for step in ["ice", "activity"] {
            #expect(plan[step]!.state == .scheduled)
            #expect(plan[step]!.dueAt == procedure.performedAt)
            #expect(plan[step]!.note == nil)
        }
        // The +24 h ordinary step still keeps the clinic's quiet hours.
        #expect(PlanFixture.local(plan["resume"]!.dueAt, "America/New_York") == "2026-11-27T08:00:00-05:00")
    }

    @Test("inside the night it waits until 06:00, and its window counts only hours outside the night")
    func nightWaitsUntilMorning() {
        let procedure = PlanFixture.procedure(at: "2026-11-25T23:30:00-05:00", zone: "America/New_York")
        let plan = FirstDayFixture.plan(procedure)
        #expect(plan["ice"]!.state == .scheduled)
        #expect(PlanFixture.local(plan["ice"]!.dueAt, "America/New_York") == "2026-11-26T06:00:00-05:00")
        #expect(PlanFixture.local(plan["ice"]!.expiresAt, "America/New_York") == "2026-11-26T12:00:00-05:00")
        #expect(plan["ice"]!.note == "night hours: held until 6:00 AM")
        // 22:50, entered at 23:05: ten minutes of its window were before the night, 5 h 50 after it.
        let late = PlanFixture.procedure(at: "2026-11-25T22:50:00-05:00", zone: "America/New_York")
        let latePlan = FirstDayFixture.plan(late, now: late.performedAt.addingTimeInterval(15 * 60))
        #expect(latePlan["ice"]!.state == .scheduled)
        #expect(PlanFixture.local(latePlan["ice"]!.dueAt, "America/New_York") == "2026-11-26T06:00:00-05:00")
        #expect(PlanFixture.local(latePlan["ice"]!.expiresAt, "America/New_York") == "2026-11-26T11:50:00-05:00")
    }

    @Test("a clinic that keeps no quiet hours holds nothing, the first-day advice included")
    func noQuietHoursNoNight() {
        let procedure = PlanFixture.procedure(at: "2026-11-25T23:30:00-05:00", zone: "America/New_York")
        let plan = Planner.plan(
            procedure, protocol: FirstDayFixture.careProtocol, policy: PlanFixture.policy(),
            now: procedure.performedAt)
        #expect(plan[0].dueAt == procedure.performedAt)
        #expect(plan[0].expiresAt == procedure.performedAt.addingTimeInterval(6 * 3600))
        #expect(plan[0].note == nil)
    }

    @Test("treated at 14:00 in New York, living in Kolkata (00:30 there): the first-day advice goes at 06:00 IST")
    func farZone() {
        let procedure = PlanFixture.procedure(at: "2026-11-25T14:00:00-05:00", zone: "Asia/Kolkata")
        let plan = FirstDayFixture.plan(procedure)
        #expect(PlanFixture.local(procedure.performedAt, "Asia/Kolkata") == "2026-11-26T00:30:00+05:30")
        for step in ["ice", "activity"] {
            #expect(plan[step]!.state == .scheduled)
            #expect(PlanFixture.local(plan[step]!.dueAt, "Asia/Kolkata") == "2026-11-26T06:00:00+05:30")
            #expect(PlanFixture.local(plan[step]!.expiresAt, "Asia/Kolkata") == "2026-11-26T12:00:00+05:30")
        }
        #expect(
            Planner.unsendableSteps(
                Array(plan.values), protocol: FirstDayFixture.careProtocol, procedure: procedure, channels: ["sms"]
            ).isEmpty)
    }

    @Test("every procedure time of a day, in nine zones and on DST days: the first-day advice is always planned")
    func everyTimeOfDay() async throws {
        let failures = await OwnThread.run { Self.checkEveryTimeOfDay() }
        #expect(failures.isEmpty, "\(failures.count) wrong, first: \(failures.prefix(5).joined(separator: "; "))")
    }

    static func checkEveryTimeOfDay() -> [String] {
        let zones = [
            "America/New_York", "America/Los_Angeles", "Europe/Berlin", "Asia/Kolkata", "Asia/Tokyo",
            "Australia/Sydney", "Pacific/Auckland", "Pacific/Chatham", "America/Sao_Paulo",
        ]
        // Days around 2026's DST changes in the north and the south, and an ordinary day.
        let days = ["2026-03-08", "2026-03-29", "2026-04-05", "2026-09-27", "2026-10-04", "2026-11-01", "2026-11-25"]
        var failures: [String] = []
        for zoneID in zones {
            let zone = TimeZone(identifier: zoneID)!
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = zone
            for day in days {
                let midnight = Timestamp.parse(day + "T00:00:00Z")!
                for slot in stride(from: 0, to: 48 * 3600, by: 30 * 60) {
                    let performed = midnight.addingTimeInterval(Double(slot))
                    let procedure = PlanFixture.procedure(at: Timestamp.format(performed, in: zone), zone: zoneID)
                    let ice = FirstDayFixture.plan(procedure)["ice"]!
                    // Computed with Foundation's calendar, not the planner's LocalTime.
                    let hour = calendar.component(.hour, from: performed)
                    let right: Bool
                    if hour >= 6 && hour < 23 {
                        right = ice.dueAt == performed
                    } else {
                        right = calendar.component(.hour, from: ice.dueAt) == 6
                            && calendar.component(.minute, from: ice.dueAt) == 0 && ice.dueAt > performed
                            && ice.dueAt.timeIntervalSince(performed) <= 8 * 3600
                    }
                    if ice.state != .scheduled || !right || ice.expiresAt < ice.dueAt {
                        failures.append("\(zoneID) \(Timestamp.format(performed, in: zone)): \(ice)")
                    }
                }
            }
        }
        return failures
    }

    @Test("steps that will not be sent are named with the reason; sendable ones are not")
    func unsendableSteps() {
        let procedure = PlanFixture.procedure(at: "2026-11-24T09:00:00-05:00", zone: "America/New_York")
        // Entered 25 hours late: the first-day advice's window (09:00-15:00) is long gone.
        let plan = Planner.plan(
            procedure, protocol: FirstDayFixture.careProtocol, policy: FirstDayFixture.policy,
            now: procedure.performedAt.addingTimeInterval(25 * 3600))
        let warnings = Planner.unsendableSteps(
            plan, protocol: FirstDayFixture.careProtocol, procedure: procedure, channels: ["sms"])
        #expect(warnings.map(\.stepID) == ["ice", "activity"])
        #expect(
            warnings[0].description
                == "step ice will not be sent: window closed at 2026-11-24T15:00:00-05:00 before it could be sent")

        // No route on a channel with a sender, and every usable route opted out.
        var careProtocol = FirstDayFixture.careProtocol
        careProtocol.steps[1].channels = ["email"]
        let fresh = Planner.plan(
            procedure, protocol: careProtocol, policy: FirstDayFixture.policy, now: procedure.performedAt)
        let noEmail = Planner.unsendableSteps(
            fresh, protocol: careProtocol, procedure: procedure, channels: ["sms", "email"])
        #expect(
            noEmail == [PlanWarning(stepID: "activity", reason: "no contact route on a channel it may use (email)")])
        var optedOut = procedure
        optedOut.patient.routes[0].optedOut = true
        let none = Planner.unsendableSteps(fresh, protocol: careProtocol, procedure: optedOut, channels: ["sms"])
        #expect(none.count == 4)
        #expect(none[0].reason == "the patient opted out of every route it may use (sms)")
    }
}

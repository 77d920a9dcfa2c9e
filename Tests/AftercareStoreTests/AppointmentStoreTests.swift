import AftercareCore
import AftercareStore
import Foundation
import Testing

@Suite("Appointments, performed-time rules and contact corrections in the store")
struct AppointmentStoreTests {
    static let hour: TimeInterval = 3600
    let stores = TestStores()

    private func events(_ store: any ReminderQueue, _ procedureID: String? = nil) async throws -> [LogEvent] {
        try await store.auditLog(AuditFilter(procedureID: procedureID)).map(\.entry.event)
    }

    @Test(
        "a booked appointment has no reminders until performed; then they are planned from the actual time",
        arguments: StoreKind.allCases)
    func bookThenPerform(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        let planned = Fixture.base.addingTimeInterval(3 * 86400)
        let booking = Fixture.procedure("A-1", at: planned)
        let outcome = try await store.ingest([Fixture.file("b.json", [.book(booking)])], now: Fixture.base, plan: Fixture.plan)
        #expect(outcome == [.applied(summary: "1 appointment(s) booked")])
        let (view, reminders) = try #require(try await store.procedure("A-1"))
        #expect(view.status == "booked")
        #expect(reminders.isEmpty)
        #expect(try await store.status(now: Fixture.base).booked == 1)
        #expect(try await store.nextDueTime() == nil)

        // The same booking again is already known; a different one under the same id is refused.
        let again = try await store.ingest([Fixture.file("b2.json", [.book(booking)])], now: Fixture.base, plan: Fixture.plan)
        #expect(again == [.applied(summary: "1 already known")])

        // Performed 20 minutes late: every step hangs from the actual time.
        let actual = planned.addingTimeInterval(20 * 60)
        let done = try await store.ingest(
            [Fixture.file("p.json", [.performed(procedureID: "A-1", at: actual, force: false)])], now: actual,
            plan: Fixture.plan)
        guard case .applied = done[0] else { Issue.record("refused: \(done)"); return }
        let (after, planTimes) = try #require(try await store.procedure("A-1"))
        #expect(after.status == "active")
        #expect(after.plannedAt == planned)
        #expect(after.procedure.performedAt == actual)
        #expect(planTimes.map(\.nominalAt) == [actual, actual + 86400, actual + 2 * 86400])
        #expect(planTimes.allSatisfy { $0.state == .scheduled })
        #expect(try await events(store, "A-1") == [.booked, .performed])
        // The scheduling system resending its booking afterwards changes nothing.
        let resent = try await store.ingest([Fixture.file("b3.json", [.book(booking)])], now: actual, plan: Fixture.plan)
        #expect(resent == [.applied(summary: "1 already known")])
        #expect(try await store.procedure("A-1")?.0.status == "active")
    }

    @Test(
        "an appointment never confirmed is closed as not performed after 12 h, logged, and never planned",
        arguments: StoreKind.allCases)
    func unconfirmedIsClosed(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        let planned = Fixture.base.addingTimeInterval(2 * Self.hour)
        _ = try await store.ingest(
            [Fixture.file("b.json", [.book(Fixture.procedure("A-2", at: planned))])], now: Fixture.base, plan: Fixture.plan)
        let early = try await store.closeUnconfirmedAppointments(
            now: planned.addingTimeInterval(12 * Self.hour - 1), closeAfter: 12 * Self.hour)
        #expect(early.closed.isEmpty)
        #expect(early.nextClosing == planned.addingTimeInterval(12 * Self.hour))
        let sweep = try await store.closeUnconfirmedAppointments(
            now: planned.addingTimeInterval(12 * Self.hour), closeAfter: 12 * Self.hour)
        #expect(sweep.closed == ["A-2"])
        #expect(sweep.nextClosing == nil)
        let (view, reminders) = try #require(try await store.procedure("A-2"))
        #expect(view.status == "not_performed")
        #expect(reminders.isEmpty)
        #expect(try await events(store, "A-2") == [.booked, .notPerformed])
        #expect(try await store.status(now: planned).notPerformed == 1)
        // A plain procedure record under its id is not taken as the confirmation.
        let plain = try await store.ingest(
            [Fixture.file("x.json", [.procedure(Fixture.procedure("A-2", at: planned))])],
            now: planned.addingTimeInterval(13 * Self.hour), plan: Fixture.plan)
        guard case .rejected(let error) = plain[0] else { Issue.record("accepted"); return }
        #expect(error.problem.contains("aftercare performed"))
    }

    @Test("a performed time more than 5 minutes ahead is refused and points to booking", arguments: StoreKind.allCases)
    func futurePerformedRefused(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        let ahead = Fixture.base.addingTimeInterval(301)
        let outcome = try await store.ingest(
            [Fixture.file("f.json", [.procedure(Fixture.procedure("P-f", at: ahead))])], now: Fixture.base,
            plan: Fixture.plan)
        guard case .rejected(let error) = outcome[0] else { Issue.record("accepted"); return }
        #expect(error.problem.contains("book it as an appointment"))
        #expect(try await store.procedure("P-f") == nil)
        // Within the tolerance (clocks differ a little) it is taken.
        let near = try await store.ingest(
            [Fixture.file("n.json", [.procedure(Fixture.procedure("P-n", at: Fixture.base.addingTimeInterval(240)))])],
            now: Fixture.base, plan: Fixture.plan)
        guard case .applied = near[0] else { Issue.record("refused: \(near)"); return }
    }

    @Test(
        "a performed time so far back that nothing would be sent is refused unless forced",
        arguments: StoreKind.allCases)
    func nothingToSendNeedsForce(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        let old = Fixture.base.addingTimeInterval(-365 * 86400)
        let refused = try await store.ingest(
            [Fixture.file("o.json", [.procedure(Fixture.procedure("P-o", at: old))])], now: Fixture.base,
            plan: Fixture.plan)
        guard case .rejected(let error) = refused[0] else { Issue.record("accepted"); return }
        #expect(error.problem.contains("nothing would be sent"))
        let forced = try await store.ingest(
            [Fixture.file("o.json", [.procedure(Fixture.procedure("P-o", at: old), force: true)])], now: Fixture.base,
            plan: Fixture.plan)
        guard case .applied = forced[0] else { Issue.record("refused: \(forced)"); return }
        let (_, reminders) = try #require(try await store.procedure("P-o"))
        #expect(reminders.allSatisfy { $0.state == .expired })
    }

    @Test(
        "an appointment can be moved; a performed procedure cannot; a booked one can be cancelled with a log row",
        arguments: StoreKind.allCases)
    func moveAndCancel(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        let planned = Fixture.base.addingTimeInterval(86400)
        _ = try await store.ingest(
            [Fixture.file("b.json", [.book(Fixture.procedure("A-3", at: planned))]),
             Fixture.file("p.json", [.procedure(Fixture.procedure("P-3"))])],
            now: Fixture.base, plan: Fixture.plan)
        let later = planned.addingTimeInterval(2 * 86400)
        let moved = try await store.ingest(
            [Fixture.file("m.json", [.move(procedureID: "A-3", plannedAt: later, timeZone: "Europe/Berlin")])],
            now: Fixture.base, plan: Fixture.plan)
        guard case .applied = moved[0] else { Issue.record("refused: \(moved)"); return }
        let (view, _) = try #require(try await store.procedure("A-3"))
        #expect(view.procedure.performedAt == later)
        #expect(view.procedure.patient.timeZone == "Europe/Berlin")
        let wrong = try await store.ingest(
            [Fixture.file("m2.json", [.move(procedureID: "P-3", plannedAt: later, timeZone: nil)])], now: Fixture.base,
            plan: Fixture.plan)
        guard case .rejected(let error) = wrong[0] else { Issue.record("accepted"); return }
        #expect(error.problem.contains("not a booked appointment"))
        _ = try await store.ingest(
            [Fixture.file("c.json", [.cancel(procedureID: "A-3", reason: "patient called")])], now: Fixture.base,
            plan: Fixture.plan)
        #expect(try await store.procedure("A-3")?.0.status == "cancelled")
        #expect(try await events(store, "A-3") == [.booked, .moved, .cancelled])
        // Closing never touches a cancelled appointment.
        let sweep = try await store.closeUnconfirmedAppointments(now: later.addingTimeInterval(86400), closeAfter: 3600)
        #expect(sweep.closed.isEmpty)
        let late = try await store.ingest(
            [Fixture.file("p2.json", [.performed(procedureID: "A-3", at: nil, force: false)])], now: later,
            plan: Fixture.plan)
        guard case .rejected = late[0] else { Issue.record("a cancelled appointment was performed"); return }
    }

    @Test(
        "an update reaches every open procedure of the patient, masked in the log; opt-out stops pending sends",
        arguments: StoreKind.allCases)
    func updateAndOptOut(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Fixture.procedure("P-1")), .procedure(Fixture.procedure("P-2")),
                                     .procedure(Fixture.procedure("P-other", patient: "MRN-2"))])],
            now: Fixture.base, plan: Fixture.plan)
        let routes = [ContactRoute(channel: "sms", address: "+15557654321"),
                      ContactRoute(channel: "email", address: "ana@example.org")]
        let outcome = try await store.ingest(
            [Fixture.file("u.json", [.update(PatientUpdate(patientID: "MRN-1", firstName: "Anna", routes: routes))])],
            now: Fixture.base, plan: Fixture.plan)
        #expect(outcome == [.applied(summary: "2 procedure(s) updated")])
        for id in ["P-1", "P-2"] {
            let (view, _) = try #require(try await store.procedure(id))
            #expect(view.procedure.patient.routes == routes)
            #expect(view.procedure.patient.firstName == "Anna")
        }
        #expect(try await store.procedure("P-other")?.0.procedure.patient.routes.first?.address == "+15551234567")
        let rows = try await store.auditLog(AuditFilter(procedureID: "P-1", outcome: "updated"))
        let detail = try #require(rows.first?.entry.detail)
        #expect(rows.first?.entry.actor == "tester")
        #expect(detail.contains("+1******4321") && detail.contains("a***@example.org"))
        #expect(!detail.contains("7654321") && !detail.contains("ana@"))

        _ = try await store.ingest(
            [Fixture.file("s.json", [.update(PatientUpdate(patientID: "MRN-1", optOut: ["sms"]))])], now: Fixture.base,
            plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60)
        let mine = claimed.filter { $0.procedure.patient.id == "MRN-1" }
        #expect(mine.count == 2)
        #expect(mine.allSatisfy { $0.procedure.patient.routes.first { $0.channel == "sms" }?.optedOut == true })
        #expect(try await store.auditLog(AuditFilter(patientID: "MRN-1", outcome: "updated")).count == 4)

        // Opting out of a channel the patient has no route on is refused, and changes nothing.
        let none = try await store.ingest(
            [Fixture.file("t.json", [.update(PatientUpdate(patientID: "MRN-1", optOut: ["portal"]))])],
            now: Fixture.base, plan: Fixture.plan)
        guard case .rejected(let error) = none[0] else { Issue.record("accepted"); return }
        #expect(error.problem.contains("no 'portal' route"))
    }

    @Test(
        "replay takes an expired reminder whose window is still open, not one whose window closed",
        arguments: StoreKind.allCases)
    func replayExpiredWithOpenWindow(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 60)
        let reminder = try #require(claimed.first)
        try await store.record([(reminder, .expired(reason: "gateway asked to wait past the window"))], now: Fixture.base)
        let replay = try await store.ingest(
            [Fixture.file("r.json", [.replay(.reminder("P-1.ice"))])], now: Fixture.base.addingTimeInterval(3600),
            plan: Fixture.plan)
        guard case .applied = replay[0] else { Issue.record("refused: \(replay)"); return }
        #expect(try await store.procedure("P-1")?.1.first { $0.stepID == "ice" }?.state == .scheduled)

        let claimedAgain = try #require(
            try await store.claimDue(now: Fixture.base.addingTimeInterval(3600), limit: 1, leaseSeconds: 60).first)
        try await store.record([(claimedAgain, .expired(reason: "again"))], now: Fixture.base.addingTimeInterval(3600))
        let closed = try await store.ingest(
            [Fixture.file("r2.json", [.replay(.reminder("P-1.ice"))])], now: Fixture.base.addingTimeInterval(7 * 3600),
            plan: Fixture.plan)
        guard case .rejected(let error) = closed[0] else { Issue.record("accepted"); return }
        #expect(error.problem.contains("window has closed"))
    }
}

import AftercareCore
import AftercareStore
import Foundation
import GRDB
import Testing

@Suite("Reminder store on a real SQLite file and a real PostgreSQL database")
struct ReminderStoreTests {
    let stores = TestStores()
    var databasePath: String { stores.sqlitePath }

    func makeStore(_ kind: StoreKind = .sqlite) async throws -> any ReminderQueue { try await stores.open(kind) }

    @Test("the same procedure ingested twice is one procedure with one plan", arguments: StoreKind.allCases)
    func ingestIsIdempotent(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let procedure = Fixture.procedure("P-1")
        let first = try await store.ingest([Fixture.file("a.json", [.procedure(procedure)])], now: Fixture.base, plan: Fixture.plan)
        let second = try await store.ingest([Fixture.file("b.json", [.procedure(procedure)])], now: Fixture.base, plan: Fixture.plan)
        #expect(first == [.applied(summary: "1 procedure(s) planned: 3 reminder(s), 0 expired")])
        #expect(second == [.applied(summary: "1 already known")])
        let (view, reminders) = try #require(try await store.procedure("P-1"))
        #expect(view.status == "active")
        #expect(reminders.map(\.stepID) == ["ice", "checkin-24h", "checkin-48h"])
        #expect(reminders.allSatisfy { $0.state == .scheduled })
        let status = try await store.status(now: Fixture.base)
        #expect(status.procedures == 1)
        #expect(status.count(.scheduled) == 3)
    }

    @Test("a different procedure under a known id is refused and changes nothing", arguments: StoreKind.allCases)
    func conflictingProcedureIsRejected(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        var changed = Fixture.procedure("P-1")
        changed.performedAt = Fixture.base.addingTimeInterval(3600)
        let outcome = try await store.ingest([Fixture.file("b.json", [.procedure(changed)])], now: Fixture.base, plan: Fixture.plan)
        guard case .rejected(let error) = outcome.first else {
            Issue.record("expected a rejection, got \(outcome)")
            return
        }
        #expect(error.procedureID == "P-1")
        #expect(error.problem.contains("already ingested with different details"))
        let (view, _) = try #require(try await store.procedure("P-1"))
        #expect(view.procedure.performedAt == Fixture.base)
    }

    @Test("one bad file in a batch is refused alone; the others are applied whole", arguments: StoreKind.allCases)
    func badFileIsIsolated(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let files = [
            Fixture.file("good-1.json", [.procedure(Fixture.procedure("P-1")), .procedure(Fixture.procedure("P-2"))]),
            // Its second request fails, so its first must not be applied either.
            Fixture.file("bad.json", [.procedure(Fixture.procedure("P-3")), .cancel(procedureID: "P-404", reason: nil)]),
            Fixture.file("good-2.json", [.procedure(Fixture.procedure("P-4"))]),
        ]
        let outcomes = try await store.ingest(files, now: Fixture.base, plan: Fixture.plan)
        #expect(outcomes.count == 3)
        if case .rejected(let error) = outcomes[1] {
            #expect(error.description == "procedure P-404: no such procedure")
        } else {
            Issue.record("bad.json should be rejected: \(outcomes[1])")
        }
        #expect(try await store.procedure("P-1") != nil)
        #expect(try await store.procedure("P-2") != nil)
        #expect(try await store.procedure("P-3") == nil)
        #expect(try await store.procedure("P-4") != nil)
        let verdict = try await store.verifyLog()
        let expectedHead = try await head(store)
        #expect(verdict == .intact(rows: 4, head: expectedHead))
    }

    @Test("a procedure entered after its first window closed plans that step as expired", arguments: StoreKind.allCases)
    func lateEntryExpiresStaleSteps(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let now = Fixture.base.addingTimeInterval(25 * 3600)
        _ = try await store.ingest([Fixture.file("late.json", [.procedure(Fixture.procedure("P-1"))])], now: now, plan: Fixture.plan)
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders.map(\.state) == [.expired, .scheduled, .scheduled])
        #expect(reminders[1].dueAt == now)
        let claimed = try await store.claimDue(now: now, limit: 10, leaseSeconds: 60)
        #expect(claimed.map(\.stepID) == ["checkin-24h"])
    }

    @Test("cancel stops every pending reminder in one go and leaves sent ones sent", arguments: StoreKind.allCases)
    func cancelStopsPendingOnly(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60)
        #expect(claimed.map(\.stepID) == ["ice"])
        try await store.record([(claimed[0], .attempted(Self.attempt(.delivered(detail: "ok")), next: .delivered))], now: Fixture.base)
        let outcome = try await store.ingest(
            [Fixture.file("c.json", [.cancel(procedureID: "P-1", reason: "patient declined")])], now: Fixture.base,
            plan: Fixture.plan)
        #expect(outcome == [.applied(summary: "2 reminder(s) cancelled")])
        let (view, reminders) = try #require(try await store.procedure("P-1"))
        #expect(view.status == "cancelled")
        #expect(reminders.map(\.state) == [.delivered, .cancelled, .cancelled])
        #expect(try await store.claimDue(now: Fixture.base.addingTimeInterval(3 * 86400), limit: 10, leaseSeconds: 60).isEmpty)
    }

    @Test("reschedule moves pending reminders and leaves delivered ones alone", arguments: StoreKind.allCases)
    func rescheduleReplansPending(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60)
        try await store.record([(claimed[0], .attempted(Self.attempt(.delivered(detail: "ok")), next: .delivered))], now: Fixture.base)
        let corrected = Fixture.base.addingTimeInterval(2 * 3600)
        _ = try await store.ingest(
            [Fixture.file("r.json", [.reschedule(procedureID: "P-1", performedAt: corrected, timeZone: "Europe/Berlin")])],
            now: Fixture.base, plan: Fixture.plan)
        let (view, reminders) = try #require(try await store.procedure("P-1"))
        #expect(view.procedure.performedAt == corrected)
        #expect(view.procedure.patient.timeZone == "Europe/Berlin")
        #expect(reminders[0].state == .delivered)
        #expect(reminders[0].dueAt == Fixture.base)
        #expect(reminders[1].dueAt == corrected.addingTimeInterval(86400))
        #expect(reminders[2].dueAt == corrected.addingTimeInterval(172_800))
    }

    @Test(
        "a completion after the lease was lost is logged but does not overwrite the new holder's state",
        arguments: StoreKind.allCases)
    func completionIsFencedByLeaseToken(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let first = try await store.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 30)
        // The first holder stalls past its lease; the claim comes back and is taken again.
        let later = Fixture.base.addingTimeInterval(31)
        #expect(try await store.recoverClaims(now: later) == 1)
        let second = try await store.claimDue(now: later, limit: 1, leaseSeconds: 30)
        #expect(second.map(\.stepID) == ["ice"])
        #expect(second[0].leaseToken != first[0].leaseToken)
        let fenced = try await store.record(
            [(first[0], .attempted(Self.attempt(.failed(reason: "stale")), next: .dead(reason: "stale")))], now: later)
        #expect(fenced == 1)
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders[0].state == .claimed)
        try await store.record([(second[0], .attempted(Self.attempt(.delivered(detail: "HTTP 204")), next: .delivered))], now: later)
        let (_, after) = try #require(try await store.procedure("P-1"))
        #expect(after[0].state == .delivered)
        #expect(after[0].attempts == 1)
    }

    @Test("a retry goes back to the queue at its new time with the attempt counted", arguments: StoreKind.allCases)
    func retryReschedules(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 30)
        let retryAt = Fixture.base.addingTimeInterval(60)
        try await store.record(
            [(claimed[0], .attempted(Self.attempt(.retry(after: nil, reason: "HTTP 503")), next: .retry(at: retryAt)))],
            now: Fixture.base)
        #expect(try await store.claimDue(now: Fixture.base.addingTimeInterval(59), limit: 1, leaseSeconds: 30).isEmpty)
        #expect(try await store.nextDueTime() == retryAt)
        let again = try await store.claimDue(now: retryAt, limit: 1, leaseSeconds: 30)
        #expect(again.map(\.attempt) == [2])
        let status = try await store.status(now: retryAt)
        #expect(status.count(.claimed) == 1)
    }

    @Test("a daemon starting up takes back every claim a crashed run held", arguments: StoreKind.allCases)
    func startupRecoversAllClaims(kind: StoreKind) async throws {
        do {
            let store = try await makeStore(kind)
            _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
            _ = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 3600)
        }
        let reopened = try await makeStore(kind)
        #expect(try await reopened.recoverClaims(now: Fixture.base, all: true) == 1)
        #expect(try await reopened.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60).map(\.stepID) == ["ice"])
    }

    @Test("the delivery log refuses edits and deletes")
    func logIsAppendOnly() async throws {
        let store = try await makeStore()
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let queue = try DatabaseQueue(path: databasePath)
        #expect(throws: DatabaseError.self) { try queue.write { try $0.execute(sql: "UPDATE delivery_log SET detail = 'x'") } }
        #expect(throws: DatabaseError.self) { try queue.write { try $0.execute(sql: "DELETE FROM delivery_log") } }
    }

    @Test("the chain verifies after mixed events and names an edited row")
    func chainDetectsEdits() async throws {
        let store = try await makeStore()
        for index in 0..<20 {
            _ = try await store.ingest(
                [Fixture.file("f\(index).json", [.procedure(Fixture.procedure("P-\(index)"))])], now: Fixture.base,
                plan: Fixture.plan)
        }
        let claimed = try await store.claimDue(now: Fixture.base, limit: 50, leaseSeconds: 60)
        try await store.record(
            claimed.map { ($0, .attempted(Self.attempt(.delivered(detail: "ok")), next: .delivered)) }, now: Fixture.base)
        let verdict = try await store.verifyLog()
        guard case .intact(let rows, _) = verdict else {
            Issue.record("chain should verify")
            return
        }
        #expect(rows == 40)
        // Tamper with row 7 behind the store's back (dropping the guard trigger first, as an attacker would).
        let queue = try DatabaseQueue(path: databasePath)
        try await queue.write { db in
            try db.execute(sql: "DROP TRIGGER delivery_log_no_update")
            try db.execute(sql: "UPDATE delivery_log SET outcome = 'failed' WHERE seq = 7 OR seq = 12")
        }
        let tampered = try await store.verifyLog()
        #expect(tampered == .broken(seq: 7, reason: "row 7 does not match its hash (edited, reordered or replaced)"))
    }

    static func attempt(_ outcome: DeliveryOutcome) -> Attempt {
        Attempt(
            channel: "sms", sender: "outbox", destination: "+15551234567", startedAt: Fixture.base,
            endedAt: Fixture.base.addingTimeInterval(0.002), result: SendResult(outcome, responseCode: 204)
        )
    }

    /// The last row's hash, as the rows themselves hold it.
    func head(_ store: any ReminderQueue) async throws -> String {
        try await store.auditLog(AuditFilter()).last?.hash ?? ""
    }
}

@Suite("Replay by reminder id")
struct ReplayByReminderIDTests {
    let stores = TestStores()

    @Test(
        "a procedure id with dots: the step is what follows the last dot, and the dead reminder comes back",
        arguments: StoreKind.allCases)
    func dottedProcedureID(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        let now = Fixture.base
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P.1"))])], now: now, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: now, limit: 10, leaseSeconds: 60)
        let ice = try #require(claimed.first { $0.stepID == "ice" })
        try await store.record([(ice, .dead(reason: "receiver refused"))], now: now)
        let outcomes = try await store.ingest(
            [Fixture.file("b.json", [.replay(.reminder("P.1.ice"))])], now: now, plan: Fixture.plan)
        guard case .applied = outcomes.first else {
            Issue.record("replay of P.1.ice refused: \(outcomes)")
            return
        }
        let (_, reminders) = try #require(try await store.procedure("P.1"))
        #expect(reminders.first { $0.stepID == "ice" }?.state == .scheduled)
    }
}

@Suite("Several daemons on one PostgreSQL queue")
struct SharedQueueTests {
    let stores = TestStores()

    @Test("a daemon starting up takes back its own earlier claims, never another live daemon's; a lapsed lease is anyone's")
    func startupTakesOnlyItsOwn() async throws {
        let north = try await stores.open(.postgres, node: "north")
        let south = try await stores.open(.postgres, node: "south")
        _ = try await north.ingest(
            [Fixture.file("a.json", [.procedure(Fixture.procedure("P-1")), .procedure(Fixture.procedure("P-2"))])],
            now: Fixture.base, plan: Fixture.plan)
        let northClaim = try await north.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 3600)
        let southClaim = try await south.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 3600)
        #expect(northClaim.count == 1 && southClaim.count == 1)
        #expect(northClaim[0].reminderID != southClaim[0].reminderID)
        // North died and comes back: its claim returns at once; south's stays with south.
        let restarted = try await stores.open(.postgres, node: "north")
        #expect(try await restarted.recoverClaims(now: Fixture.base, all: true) == 1)
        let status = try await restarted.status(now: Fixture.base)
        #expect(status.count(.claimed) == 1)
        let recovered = try await restarted.auditLog(AuditFilter()).filter { $0.entry.event == .recovered }
        #expect(recovered.map(\.entry.procedureID) == [northClaim[0].procedure.id])
        #expect(recovered.first?.entry.detail?.contains("north") == true)
        // South's lease lapses: any daemon returns it.
        #expect(try await restarted.recoverClaims(now: Fixture.base.addingTimeInterval(3601)) == 1)
        let again = try await restarted.claimDue(now: Fixture.base.addingTimeInterval(3601), limit: 10, leaseSeconds: 60)
        #expect(Set(again.map(\.reminderID)) == Set((northClaim + southClaim).map(\.reminderID)))
        guard case .intact = try await restarted.verifyLog() else {
            Issue.record("the shared chain does not verify")
            return
        }
    }

    @Test("outcomes recorded again (a retry after the commit's reply was lost) add no row and report no lost lease")
    func recordRetriedAfterLostReply() async throws {
        let store = try await stores.open(.postgres)
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Fixture.procedure("P-1")), .procedure(Fixture.procedure("P-2"))])],
            now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60)
        #expect(claimed.count == 2)
        let outcomes: [(ClaimedReminder, Resolution)] = [
            (claimed[0], .attempted(ReminderStoreTests.attempt(.delivered(detail: "HTTP 204")), next: .delivered)),
            (claimed[1], .attempted(
                ReminderStoreTests.attempt(.retry(after: nil, reason: "HTTP 503")),
                next: .retry(at: Fixture.base.addingTimeInterval(60)))),
        ]
        #expect(try await store.record(outcomes, now: Fixture.base) == 0)
        let rows = try await store.auditLog(AuditFilter())
        #expect(try await store.record(outcomes, now: Fixture.base.addingTimeInterval(1)) == 0)
        #expect(try await store.auditLog(AuditFilter()) == rows, "nothing logged twice, no 'lease lost'")
        let states = try await store.procedures(patientID: nil, pendingOnly: false, limit: 10)
            .flatMap { $0.1.filter { $0.stepID == "ice" } }.sorted { $0.procedureID < $1.procedureID }.map(\.state)
        #expect(states == [.delivered, .scheduled])
        // A later claim of the retried reminder is a new claim: its outcome is recorded as usual.
        let again = try await store.claimDue(now: Fixture.base.addingTimeInterval(60), limit: 10, leaseSeconds: 60)
        #expect(again.map(\.procedure.id) == [claimed[1].procedure.id])
        try await store.record(
            [(again[0], .attempted(ReminderStoreTests.attempt(.delivered(detail: "HTTP 204")), next: .delivered))],
            now: Fixture.base.addingTimeInterval(60))
        #expect(try await store.auditLog(AuditFilter()).count == rows.count + 1)
    }

    @Test("a second live daemon under the same node name is refused; once the first is gone its name is free")
    func nodeNameIsTakenOnce() async throws {
        let first = try await stores.open(.postgres, node: "north")
        let twin = try await stores.open(.postgres, node: "north")
        let other = try await stores.open(.postgres, node: "south")
        try await first.joinQueue()
        try await other.joinQueue()
        do {
            try await twin.joinQueue()
            Issue.record("a second daemon named north was let in")
        } catch {
            #expect("\(error)".contains("another daemon named 'north' is running"), "\(error)")
        }
        await first.close()
        try await twin.joinQueue()
        await twin.close()
        await other.close()
    }

    @Test("two daemons claiming at the same moments never hold the same reminder, and together take every one")
    func concurrentClaimsAreDisjoint() async throws {
        let first = try await stores.open(.postgres, node: "one")
        let second = try await stores.open(.postgres, node: "two")
        let procedures = (0..<150).map { IntakeRequest.procedure(Fixture.procedure("P-\($0)"), force: false) }
        _ = try await first.ingest([Fixture.file("a.json", procedures)], now: Fixture.base, plan: Fixture.plan)
        func drain(_ store: any ReminderQueue) async throws -> [String] {
            var taken: [String] = []
            while true {
                let batch = try await store.claimDue(now: Fixture.base, limit: 7, leaseSeconds: 60)
                if batch.isEmpty { return taken }
                taken += batch.map(\.reminderID)
                // Leaves the other daemon room to claim between batches, as a real pipeline's sends do.
                try await Task.sleep(for: .milliseconds(2))
            }
        }
        async let one = drain(first)
        async let two = drain(second)
        let (a, b) = try await (one, two)
        #expect(Set(a).isDisjoint(with: Set(b)))
        #expect(a.count + b.count == 150, "every due reminder (the ice step of each) claimed once")
        #expect(Set(a + b).count == 150)
        #expect(!a.isEmpty && !b.isEmpty, "both daemons took work")
    }

    @Test("a NUL byte, which PostgreSQL text cannot hold, never stalls recording: it is kept as U+FFFD and flagged")
    func nulDoesNotStallRecording() async throws {
        let store = try await stores.open(.postgres)
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let claimed = try #require(try await store.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 60).first)
        var attempt = ReminderStoreTests.attempt(.delivered(detail: "HTTP 204 \u{0}ok"))
        attempt.message = SentMessage(
            subject: "Aftercare", body: "Ice it\u{0}.",
            protocolVersion: ProtocolVersion(protocolID: "trigger-point-injection", content: "body"))
        try await store.record([(claimed, .attempted(attempt, next: .delivered))], now: Fixture.base)
        #expect(try await store.procedure("P-1")?.1[0].state == .delivered)
        let row = try #require(try await store.auditLog(AuditFilter(outcome: "delivered")).first)
        #expect(row.entry.detail == "HTTP 204 \u{FFFD}ok")
        let shown = try await store.attemptMessage(seq: row.seq)
        #expect(shown.body == "Ice it\u{FFFD}.")
        #expect(!shown.textMatches, "the stored words are not the words sent, and show says so")
        guard case .intact = try await store.verifyLog() else {
            Issue.record("the chain does not verify")
            return
        }
    }
}

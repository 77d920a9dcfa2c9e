import AftercareCore
@testable import AftercareStore
import AftercareTestKit
import Foundation
import Testing

/// What the equivalence test drives on both engines: intake, the appointment sweep, the queries,
/// and claims and records to make reminders claimed and dead.
private protocol IntakeEngine: Sendable {
    func ingest(_ files: [IntakeBatchFile], now: Date, plan: @escaping PlanFunction) async throws
        -> [IntakeFileOutcome]
    func closeUnconfirmedAppointments(now: Date, closeAfter: TimeInterval) async throws -> AppointmentSweepResult
    func claimDue(now: Date, limit: Int, leaseSeconds: Double) async throws -> [ClaimedReminder]
    func record(_ outcomes: [(ClaimedReminder, Resolution)], now: Date) async throws -> Int
    func status(now: Date) async throws -> QueueStatus
    func dueOrClaimedCount(now: Date) async throws -> Int
    func hasDueOrClaimed(now: Date) async throws -> Bool
    func procedure(_ id: String) async throws -> (ProcedureView, [ReminderView])?
    func procedures(patientID: String?, pendingOnly: Bool, limit: Int) async throws -> [(ProcedureView, [ReminderView])]
    func replayable(_ scope: ReplayScope, now: Date) async throws -> Int
    func logRows() async throws -> [LogRecord]
}

extension ReminderStore: IntakeEngine {
    fileprivate func logRows() async throws -> [LogRecord] { try await auditLog(AuditFilter()) }
}

extension PostgresReminderStore: IntakeEngine {
    fileprivate func logRows() async throws -> [LogRecord] {
        try await read { connection in
            try await connection.rows(
                "SELECT \(unescaped: PostgresLog.columns) FROM delivery_log ORDER BY seq", PostgresLog.record)
        }
    }
}

/// A procedure and its reminders, comparable.
private struct ProcedureAndReminders: Hashable {
    var view: ProcedureView
    var reminders: [ReminderView]
    init(_ pair: (ProcedureView, [ReminderView])) { (view, reminders) = pair }
}

@Suite("PostgreSQL intake, appointment sweep and queries behave as SQLite's")
struct PostgresIntakeTests {
    static let hour: TimeInterval = 3600
    static let day: TimeInterval = 86400

    private static func openPostgres(node: String, database: PostgresTestDatabase? = nil) async throws
        -> (PostgresReminderStore, PostgresTestDatabase)
    {
        let database = try await {
            if let database { return database }
            return try await PostgresCluster.shared.makeDatabase()
        }()
        // By name: the store sends its host as the TLS server name, which may not be an IP literal.
        let settings = PostgresSettings(
            host: "localhost", port: database.port, user: database.user, database: database.name,
            tls: .verifyFull, caFile: database.caFile, node: node)
        return (try await PostgresReminderStore(settings: settings, password: database.password), database)
    }

    private static func patient(_ id: String, name: String = "Ana") -> Patient {
        Patient(
            id: id, firstName: name, timeZone: "America/New_York",
            routes: [
                ContactRoute(channel: "sms", address: "+15551234567"),
                ContactRoute(channel: "email", address: "ana@example.org"),
            ])
    }

    private static func procedure(_ id: String, patient: String = "MRN-1", at: Date, name: String = "Ana")
        -> Procedure
    {
        Procedure(
            id: id, protocolID: "trigger-point-injection", performedAt: at,
            patient: Self.patient(patient, name: name))
    }

    /// The same intake files, sweeps and dispatch steps, in order, on one engine. Returns every
    /// outcome, so both engines' can be compared step by step.
    private static func runScenario(_ store: some IntakeEngine) async throws -> [String] {
        let base = Fixture.base
        var trace: [String] = []
        func ingest(_ now: Date, _ files: [IntakeBatchFile]) async throws {
            let outcomes = try await store.ingest(files, now: now, plan: Fixture.plan)
            trace.append(outcomes.map { "\($0)" }.joined(separator: " | "))
        }
        let file = Fixture.file
        // New procedures, a duplicate, a different one under a known id, and a file refused whole.
        try await ingest(
            base,
            [
                file("a.json", [.procedure(procedure("P-1", at: base))]),
                file("b.json", [.procedure(procedure("P-1", at: base)), .procedure(procedure("P-2", at: base))]),
                file("c.json", [.procedure(procedure("P-1", at: base, name: "Anna"))]),
                file(
                    "d.json",
                    [.procedure(procedure("P-3", at: base)), .procedure(procedure("P-2", at: base, name: "Bo"))]),
                file("e.json", [.procedure(procedure("P-4", patient: "MRN-2", at: base))]),
                file("f.json", [.procedure(procedure("P-5", patient: "MRN-2", at: base))]),
            ])
        // Performed so long ago that every window has closed: refused unless forced.
        try await ingest(
            base,
            [
                file("old.json", [.procedure(procedure("P-old", at: base - 10 * day))]),
                file("forced.json", [.procedure(procedure("P-old", at: base - 10 * day), force: true)]),
                file("ahead.json", [.procedure(procedure("P-ahead", at: base + 2 * day))]),
                file("late7h.json", [.procedure(procedure("P-8", patient: "MRN-4", at: base - 7 * hour))]),
            ])
        // Bookings: new, resent, different, a procedure request for one, a move, a bad move.
        try await ingest(
            base,
            [
                file("book1.json", [.book(procedure("A-1", patient: "MRN-3", at: base + 3 * day))]),
                file("book1-again.json", [.book(procedure("A-1", patient: "MRN-3", at: base + 3 * day))]),
                file("book1-other.json", [.book(procedure("A-1", patient: "MRN-3", at: base + 4 * day))]),
                file("book1-as-done.json", [.procedure(procedure("A-1", patient: "MRN-3", at: base))]),
                file("book2.json", [.book(procedure("A-2", patient: "MRN-3", at: base + 2 * hour))]),
                file(
                    "move2.json",
                    [.move(procedureID: "A-2", plannedAt: base + 3 * hour, timeZone: "Europe/Berlin")]),
                file("move-p1.json", [.move(procedureID: "P-1", plannedAt: base + hour, timeZone: nil)]),
                file("book-p1.json", [.book(procedure("P-1", at: base))]),
                file("move-none.json", [.move(procedureID: "nope", plannedAt: base, timeZone: nil)]),
            ])
        // Contact corrections: all open procedures of a patient, one named, and refusals.
        try await ingest(
            base + 60,
            [
                file(
                    "upd1.json",
                    [
                        .update(
                            PatientUpdate(
                                patientID: "MRN-2", routes: [ContactRoute(channel: "sms", address: "+15557654321")]))
                    ]),
                file("upd2.json", [.update(PatientUpdate(patientID: "MRN-1", procedureID: "P-2", optOut: ["email"]))]),
                file("upd3.json", [.update(PatientUpdate(patientID: "MRN-1", optOut: ["fax"]))]),
                file("upd4.json", [.update(PatientUpdate(patientID: "MRN-9", firstName: "Zed"))]),
            ])

        // Every due step is claimed; two die (for replays), the rest stay claimed.
        let claimed = try await store.claimDue(now: base + 120, limit: 50, leaseSeconds: 600)
            .sorted { $0.reminderID < $1.reminderID }
        trace.append("claimed " + claimed.map(\.reminderID).joined(separator: ","))
        let dying = claimed.filter { ["P-2.ice", "P-4.ice", "P-5.ice"].contains($0.reminderID) }
        let fenced = try await store.record(dying.map { ($0, .dead(reason: "no such step")) }, now: base + 180)
        trace.append("fenced \(fenced)")

        // A cancel of claimed and scheduled reminders, a reschedule, replays good and bad.
        try await ingest(
            base + 240,
            [
                file("cancel1.json", [.cancel(procedureID: "P-1", reason: "patient declined")]),
                file("cancel-a.json", [.cancel(procedureID: "A-2", reason: nil)]),
                file(
                    "resched.json",
                    [.reschedule(procedureID: "P-4", performedAt: base + 30 * 60, timeZone: "America/Chicago")]),
                file("resched-a.json", [.reschedule(procedureID: "A-1", performedAt: base, timeZone: nil)]),
                // Its first step expired untried under the old time; the new one re-plans it.
                file("resched8.json", [.reschedule(procedureID: "P-8", performedAt: base - hour, timeZone: nil)]),
                file("replay1.json", [.replay(.reminder("P-4.ice"))]),
                file("replay-again.json", [.replay(.reminder("P-4.ice"))]),
                file("replay-none.json", [.replay(.reminder("P-4.nothing"))]),
                file("replay-proc.json", [.replay(.procedure("P-404"))]),
                file("replay-since.json", [.replay(.deadSince(base))]),
                // Several requests in one file, the last refused: none of it stays.
                file(
                    "mixed.json",
                    [
                        .procedure(procedure("P-6", at: base + 200)),
                        .cancel(procedureID: "P-2", reason: "moved away"),
                        .cancel(procedureID: "P-404", reason: nil),
                    ]),
                file(
                    "mixed-ok.json",
                    [.procedure(procedure("P-7", at: base + 200)), .cancel(procedureID: "P-7", reason: "typo")]),
            ])

        // Performing a moved booking; saying it twice; a booking never confirmed is closed.
        let a2Done = base + 3 * hour + 10 * 60
        try await ingest(
            base + 3 * hour + 20 * 60,
            [
                file("perf-a2.json", [.performed(procedureID: "A-2", at: a2Done, force: false)]),
                file("book3.json", [.book(procedure("A-3", patient: "MRN-3", at: base + 4 * hour))]),
                file("perf-a3.json", [.performed(procedureID: "A-3", at: nil, force: false)]),
                file("perf-a3-again.json", [.performed(procedureID: "A-3", at: nil, force: false)]),
                file("perf-p2.json", [.performed(procedureID: "P-2", at: nil, force: false)]),
            ])
        let early = try await store.closeUnconfirmedAppointments(now: base + 3 * day, closeAfter: 12 * hour)
        trace.append("sweep \(early.closed) \(String(describing: early.nextClosing))")
        let sweep = try await store.closeUnconfirmedAppointments(now: base + 3 * day + 13 * hour, closeAfter: 12 * hour)
        trace.append("sweep \(sweep.closed) \(String(describing: sweep.nextClosing))")
        try await ingest(
            base + 3 * day + 13 * hour,
            [
                file("late.json", [.performed(procedureID: "A-1", at: base + 3 * day + 30 * 60, force: false)]),
                file("late-again.json", [.book(procedure("A-1", patient: "MRN-3", at: base + 3 * day))]),
            ])
        return trace
    }

    @Test("the same intake files give the same outcomes, state, queries and log chain on both engines")
    func sameAsSQLite() async throws {
        let folder = TemporaryFolder()
        let sqlite = try ReminderStore(path: folder.path + "/store.sqlite")
        let (postgres, _) = try await Self.openPostgres(node: "test-a")
        defer { Task { await postgres.close() } }

        let expected = try await Self.runScenario(sqlite)
        let got = try await Self.runScenario(postgres)
        #expect(got.count == expected.count)
        for (step, (mine, theirs)) in zip(got, expected).enumerated() {
            #expect(mine == theirs, "step \(step)")
        }
        // The scenario reached every kind of outcome it is there for.
        let details = try await sqlite.logRows().compactMap(\.entry.detail)
        let all = (expected + details).joined(separator: "\n")
        for phrase in [
            "already known", "different details", "rejected", "appointment(s) moved", "procedure(s) updated",
            "reminder(s) cancelled", "reminder(s) re-planned", "reminder(s) replayed", "appointment(s) performed",
            "(confirmed after it was closed", "expired step re-planned", "already past their window",
        ] {
            #expect(all.contains(phrase), "the scenario never produced \(phrase)")
        }

        let later = Fixture.base + 3 * Self.day + 14 * Self.hour
        for now in [Fixture.base + 300, later] {
            #expect(try await postgres.status(now: now) == (try await sqlite.status(now: now)))
            #expect(try await postgres.dueOrClaimedCount(now: now) == (try await sqlite.dueOrClaimedCount(now: now)))
            #expect(try await postgres.hasDueOrClaimed(now: now) == (try await sqlite.hasDueOrClaimed(now: now)))
        }
        let ids = ["P-1", "P-2", "P-3", "P-4", "P-5", "P-6", "P-7", "P-8", "P-old", "P-ahead", "A-1", "A-2", "A-3", "nope"]
        for id in ids {
            let mine = try await postgres.procedure(id).map(ProcedureAndReminders.init)
            let theirs = try await sqlite.procedure(id).map(ProcedureAndReminders.init)
            #expect(mine == theirs, "procedure \(id)")
        }
        for (patient, pending, limit) in [
            (nil, false, 100), ("MRN-1", false, 100), ("MRN-3", true, 100), (nil, true, 2), ("MRN-404", false, 5),
        ] as [(String?, Bool, Int)] {
            let mine = try await postgres.procedures(patientID: patient, pendingOnly: pending, limit: limit)
                .map(ProcedureAndReminders.init)
            let theirs = try await sqlite.procedures(patientID: patient, pendingOnly: pending, limit: limit)
                .map(ProcedureAndReminders.init)
            #expect(mine == theirs, "procedures \(String(describing: patient)) \(pending) \(limit)")
        }
        for scope in [
            ReplayScope.deadSince(Fixture.base), .procedure("P-5"), .reminder("P-5.ice"), .reminder("P-1.ice"),
        ] {
            for now in [Fixture.base + 300, later] {
                let expected = try await sqlite.replayable(scope, now: now)
                #expect(try await postgres.replayable(scope, now: now) == expected, "\(scope)")
            }
        }

        // The log: the same rows, fields and order, so the same hash chain.
        let mine = try await postgres.logRows()
        let theirs = try await sqlite.logRows()
        #expect(mine.count == theirs.count)
        #expect(theirs.count > 40)
        for (row, expected) in zip(mine, theirs) {
            #expect(row == expected, "log row \(expected.seq)")
        }
        #expect(try await postgres.verifyChain() == theirs.last?.hash)
    }

    @Test("two hosts ingesting the same procedure at once store it once; the other file finds it known")
    func twoHostsSameProcedure() async throws {
        let (hostA, database) = try await Self.openPostgres(node: "host-a")
        let (hostB, _) = try await Self.openPostgres(node: "host-b", database: database)
        defer {
            Task {
                await hostA.close()
                await hostB.close()
            }
        }
        let now = Fixture.base
        for round in 0..<8 {
            let id = "P-race-\(round)"
            // Several procedures per file, so both transactions overlap for a while.
            let others = (0..<20).map { IntakeRequest.procedure(Self.procedure("\(id)-\($0)", at: now)) }
            let requests = [IntakeRequest.procedure(Self.procedure(id, at: now))] + others
            async let a = hostA.ingest([Fixture.file("a-\(round).json", requests)], now: now, plan: Fixture.plan)
            async let b = hostB.ingest([Fixture.file("b-\(round).json", requests)], now: now, plan: Fixture.plan)
            let outcomes = try await [a, b].flatMap { $0 }
            let summaries = Set(outcomes.map { "\($0)" })
            #expect(
                summaries == [
                    "\(IntakeFileOutcome.applied(summary: "21 procedure(s) planned: 63 reminder(s), 0 expired"))",
                    "\(IntakeFileOutcome.applied(summary: "21 already known"))",
                ], "round \(round)")
            let (view, reminders) = try #require(try await hostA.procedure(id))
            #expect(view.status == "active")
            #expect(reminders.map(\.stepID).sorted() == ["checkin-24h", "checkin-48h", "ice"])
        }
        let ingested = try await hostA.logRows().filter { $0.entry.event == .ingested }
        #expect(ingested.count == 8 * 21)
        #expect(Set(ingested.map(\.entry.procedureID)).count == 8 * 21)
        #expect(try await hostB.status(now: now).count(.scheduled) == 8 * 21 * 3)
        #expect(try await hostA.verifyChain() != nil)
    }

    @Test("a procedure another host holds uncommitted is waited for, then found known; the batch's others stay")
    func conflictWithAnOpenTransaction() async throws {
        let (hostA, database) = try await Self.openPostgres(node: "host-a")
        let (hostB, _) = try await Self.openPostgres(node: "host-b", database: database)
        defer {
            Task {
                await hostA.close()
                await hostB.close()
            }
        }
        let now = Fixture.base
        let shared = Self.procedure("P-shared", at: now)
        let (written, writtenSignal) = AsyncStream<Void>.makeStream()
        // Host B inserts P-shared and keeps its transaction open for a while.
        let hostBIntake = Task {
            try await hostB.transaction { connection in
                var intake = PostgresIntake(connection: connection, now: now, plan: Fixture.plan)
                try await intake.take(Fixture.file("b.json", [.procedure(shared)]))
                try await intake.flush()
                writtenSignal.yield()
                try await Task.sleep(for: .milliseconds(500))
                try await PostgresLog.append(intake.log, on: connection)
                return intake.outcomes
            }
        }
        for await _ in written { break }
        let outcomes = try await hostA.ingest(
            [
                Fixture.file("a1.json", [.procedure(Self.procedure("P-mine", at: now))]),
                Fixture.file("a2.json", [.procedure(shared)]),
                Fixture.file("a3.json", [.procedure(Self.procedure("P-shared", at: now, name: "Bo"))]),
                Fixture.file("a4.json", [.book(Self.procedure("A-mine", at: now + Self.day))]),
            ], now: now, plan: Fixture.plan)
        #expect(try await hostBIntake.value == [.applied(summary: "1 procedure(s) planned: 3 reminder(s), 0 expired")])
        #expect(outcomes.count == 4)
        #expect(outcomes[0] == .applied(summary: "1 procedure(s) planned: 3 reminder(s), 0 expired"))
        #expect(outcomes[1] == .applied(summary: "1 already known"))
        guard case .rejected(let error) = outcomes[2] else {
            Issue.record("a different P-shared was not refused: \(outcomes[2])")
            return
        }
        #expect(error.problem.contains("already ingested with different details"))
        #expect(outcomes[3] == .applied(summary: "1 appointment(s) booked"))
        #expect(try await hostA.procedure("P-mine")?.1.count == 3)
        #expect(try await hostA.procedure("P-shared")?.1.count == 3)
        #expect(try await hostA.procedure("A-mine")?.0.status == "booked")
        let rows = try await hostA.logRows().map { "\($0.entry.event) \($0.entry.procedureID ?? "-")" }
        #expect(rows == ["ingested P-shared", "ingested P-mine", "rejected P-shared", "booked A-mine"])
        #expect(try await hostA.verifyChain() != nil)
    }

    @Test("a NUL character, which PostgreSQL text cannot hold, refuses its file and nothing else")
    func nulRefusesItsFile() async throws {
        let (store, _) = try await Self.openPostgres(node: "test-a")
        defer { Task { await store.close() } }
        let now = Fixture.base
        let outcomes = try await store.ingest(
            [
                Fixture.file("good.json", [.procedure(Self.procedure("P-1", at: now))]),
                Fixture.file("nul-id.json", [.procedure(Self.procedure("P-\u{0}2", at: now))]),
                Fixture.file("nul-name.json", [.procedure(Self.procedure("P-3", at: now, name: "A\u{0}na"))]),
                Fixture.file("nul-cancel.json", [.cancel(procedureID: "P-1", reason: "x\u{0}y")]),
                Fixture.file("good2.json", [.procedure(Self.procedure("P-4", at: now))]),
            ], now: now, plan: Fixture.plan)
        #expect(outcomes.count == 5)
        #expect(outcomes[0] == .applied(summary: "1 procedure(s) planned: 3 reminder(s), 0 expired"))
        #expect(outcomes[4] == .applied(summary: "1 procedure(s) planned: 3 reminder(s), 0 expired"))
        for outcome in outcomes[1...3] {
            guard case .rejected(let error) = outcome else {
                Issue.record("not refused: \(outcome)")
                continue
            }
            #expect(error.problem.contains("NUL"))
        }
        #expect(try await store.procedure("P-3") == nil)
        #expect(try await store.procedure("P-\u{0}2") == nil)
        #expect(try await store.procedure("P-1")?.1.allSatisfy { $0.state == .scheduled } == true)
        let events = try await store.logRows().map(\.entry.event)
        #expect(events == [.ingested, .rejected, .rejected, .rejected, .ingested])
    }

    @Test("two daemons sweeping at once close each unconfirmed appointment once and log it once")
    func concurrentSweeps() async throws {
        let (hostA, database) = try await Self.openPostgres(node: "host-a")
        let (hostB, _) = try await Self.openPostgres(node: "host-b", database: database)
        defer {
            Task {
                await hostA.close()
                await hostB.close()
            }
        }
        let base = Fixture.base
        let bookings = (0..<200).map { index in
            let booking = Self.procedure("A-\(index)", patient: "MRN-\(index)", at: base + Double(index))
            return Fixture.file("b\(index).json", [.book(booking)])
        }
        _ = try await hostA.ingest(bookings, now: base, plan: Fixture.plan)
        let now = base + 13 * Self.hour
        async let a = hostA.closeUnconfirmedAppointments(now: now, closeAfter: 12 * Self.hour)
        async let b = hostB.closeUnconfirmedAppointments(now: now, closeAfter: 12 * Self.hour)
        let (sweepA, sweepB) = try await (a, b)
        #expect(sweepA.closed.count + sweepB.closed.count == 200)
        #expect(Set(sweepA.closed + sweepB.closed).count == 200)
        let closedRows = try await hostA.logRows().filter { $0.entry.event == .notPerformed }
        #expect(closedRows.count == 200)
        #expect(try await hostB.status(now: now).notPerformed == 200)
        #expect(try await hostA.verifyChain() != nil)
    }
}

extension PostgresReminderStore {
    /// Recomputes the chain over every row; the head's hash, or `nil` if a row does not chain.
    fileprivate func verifyChain() async throws -> String? {
        var previous = LogChain.genesis
        for record in try await logRows() {
            guard LogChain.hash(previous: previous, seq: record.seq, record.entry) == record.hash else { return nil }
            previous = record.hash
        }
        return previous
    }
}

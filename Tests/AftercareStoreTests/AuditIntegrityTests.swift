import AftercareCore
import AftercareStore
import Foundation
import GRDB
import Testing

@Suite("What the log proves: exact text, honest prunes, anchors, the words sent, late deliveries")
struct AuditIntegrityTests {
    let stores = TestStores()
    var databasePath: String { stores.sqlitePath }

    func makeStore(_ kind: StoreKind = .sqlite) async throws -> any ReminderQueue { try await stores.open(kind) }

    /// Runs SQL behind the store's back, as someone with the database would (see ``TestStores/tamper(_:_:)``).
    func sql(_ statements: String, _ kind: StoreKind = .sqlite) async throws {
        try await stores.tamper(kind, statements)
    }

    func delivered(_ message: SentMessage? = nil) -> Resolution {
        var attempt = ReminderStoreTests.attempt(.delivered(detail: "HTTP 204"))
        attempt.message = message
        return .attempted(attempt, next: .delivered)
    }

    // MARK: Defect 2: the row that is hashed is the row that is stored

    static let hostile = "A\u{0}b\r\n\u{1B}[31m\u{202E}\t\u{7F}z"

    @Test("NUL and control characters in every text field are stored, read back and verified exactly")
    func hostileTextRoundTrips() async throws {
        let store = try await makeStore()
        let text = Self.hostile
        let entry = LogEntry(
            at: Fixture.base, event: .rejected, procedureID: text + "p", patientID: text + "m", stepID: text + "s",
            channel: text + "c", sender: text + "n", destination: text + "d", attempt: 1, outcome: text + "o",
            responseCode: 500, error: text + "e", actor: text + "a", detail: text + "t", protocolVersion: text + "v",
            messageHash: text + "h")
        try await store.logEvent(entry)
        try await store.logEvent(LogEntry(at: Fixture.base, event: .configReloaded, detail: "after"))
        #expect(try await store.verifyLog() == .intact(rows: 2, head: try #require(try await store.logHead()).hash))
        let rows = try await store.auditLog(AuditFilter())
        #expect(rows.first?.entry == entry)
    }

    @Test("a cancel naming 'A<NUL>b' is refused and leaves procedure 'A' alone; the chain still verifies")
    func nulIdDoesNotMatchAnotherProcedure() async throws {
        let store = try await makeStore()
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("A"))])], now: Fixture.base, plan: Fixture.plan)
        let outcome = try await store.ingest(
            [Fixture.file("c.json", [.cancel(procedureID: "A\u{0}b", reason: nil)])], now: Fixture.base, plan: Fixture.plan)
        guard case .rejected(let error) = outcome.first else {
            Issue.record("expected the cancel to be refused, got \(outcome)")
            return
        }
        #expect(error.problem == "no such procedure")
        let (view, reminders) = try #require(try await store.procedure("A"))
        #expect(view.status == "active")
        #expect(reminders.allSatisfy { $0.state == .scheduled })
        guard case .intact = try await store.verifyLog() else {
            Issue.record("the rejected row's id must verify as stored")
            return
        }
        let rejected = try await store.auditLog(AuditFilter(outcome: "rejected"))
        // An id that is not a valid id is not put in the log's procedure column; the reason quotes it escaped.
        #expect(rejected.count == 1)
        #expect(rejected.first?.entry.procedureID == nil)
    }

    @Test("a procedure with control characters in its ids goes through claim, record and cancel exactly")
    func hostileIdsThroughTheLifecycle() async throws {
        let store = try await makeStore()
        let id = Self.hostile
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Fixture.procedure(id, patient: "MRN\u{0}\u{1B}")), .procedure(Fixture.procedure("A"))])],
            now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60)
        #expect(Set(claimed.map(\.procedure.id)) == [id, "A"])
        let fenced = try await store.record(claimed.map { ($0, delivered()) }, now: Fixture.base)
        #expect(fenced == 0)
        _ = try await store.ingest([Fixture.file("c.json", [.cancel(procedureID: id, reason: "x\u{0}y")])], now: Fixture.base, plan: Fixture.plan)
        let (view, reminders) = try #require(try await store.procedure(id))
        #expect(view.procedure.patient.id == "MRN\u{0}\u{1B}")
        #expect(reminders.map(\.state) == [.delivered, .cancelled, .cancelled])
        #expect(reminders[1].lastError == "cancelled: x\u{0}y")
        let (other, otherReminders) = try #require(try await store.procedure("A"))
        #expect(other.status == "active")
        #expect(otherReminders.map(\.state) == [.delivered, .scheduled, .scheduled])
        guard case .intact = try await store.verifyLog() else {
            Issue.record("chain should verify")
            return
        }
    }

    // MARK: Defect 9: pruning cannot launder tampering

    /// Ten procedures, the first reminder of each delivered, then everything cancelled: a log of
    /// settled work over two days.
    func settledStore(_ kind: StoreKind = .sqlite) async throws -> any ReminderQueue {
        let store = try await makeStore(kind)
        for index in 0..<10 {
            _ = try await store.ingest(
                [Fixture.file("f\(index).json", [.procedure(Fixture.procedure("P-\(index)"))])], now: Fixture.base,
                plan: Fixture.plan)
        }
        let claimed = try await store.claimDue(now: Fixture.base, limit: 100, leaseSeconds: 60)
        try await store.record(claimed.map { ($0, delivered()) }, now: Fixture.base)
        _ = try await store.ingest(
            [Fixture.file("c.json", (0..<10).map { .cancel(procedureID: "P-\($0)", reason: nil) })],
            now: Fixture.base.addingTimeInterval(86400), plan: Fixture.plan)
        return store
    }

    @Test(
        "prune over a broken chain is refused, removes nothing, and the chain stays broken",
        arguments: StoreKind.allCases)
    func pruneRefusesBrokenChain(kind: StoreKind) async throws {
        let store = try await settledStore(kind)
        try await sql("UPDATE delivery_log SET detail = 'edited' WHERE seq = 3", kind)
        let rowsBefore = try await store.auditLog(AuditFilter()).count
        await #expect {
            try await store.pruneLog(
                before: Fixture.base.addingTimeInterval(3600), now: Fixture.base.addingTimeInterval(5 * 86400), actor: "admin")
        } throws: { error in
            "\(error)".hasPrefix("the delivery log is BROKEN at row 3 (") && "\(error)".contains("nothing pruned")
        }
        #expect(try await store.auditLog(AuditFilter()).count == rowsBefore)
        #expect(try await store.verifyLog() == .broken(seq: 3, reason: "row 3 does not match its hash (edited, reordered or replaced)"))
    }

    @Test(
        "a cut-off in the future is refused; rows of procedures with pending reminders are kept",
        arguments: StoreKind.allCases)
    func pruneIsBounded(kind: StoreKind) async throws {
        let store = try await settledStore(kind)
        let now = Fixture.base.addingTimeInterval(5 * 86400)
        let rowsBefore = try await store.auditLog(AuditFilter()).count
        await #expect {
            try await store.pruneLog(before: now.addingTimeInterval(60), now: now, actor: "admin")
        } throws: { error in "\(error)".contains("is in the future") }
        #expect(try await store.auditLog(AuditFilter()).count == rowsBefore)
        // A procedure still in care: its rows, and everything after its first one, stay.
        let day2 = Fixture.base.addingTimeInterval(2 * 86400)
        _ = try await store.ingest(
            [Fixture.file("new.json", [.procedure(Fixture.procedure("P-new", at: day2))])], now: day2, plan: Fixture.plan)
        try await store.logEvent(LogEntry(at: day2.addingTimeInterval(60), event: .configReloaded, detail: "later"))
        let firstPending = try #require(try await store.auditLog(AuditFilter(procedureID: "P-new")).first?.seq)
        let result = try await store.pruneLog(before: now, now: now, actor: "admin")
        #expect(result.keptForPending == firstPending)
        #expect(result.removed == Int(firstPending) - 1)
        let kept = try await store.auditLog(AuditFilter())
        #expect(kept.first?.seq == firstPending)
        #expect(kept.filter { $0.entry.procedureID == "P-new" }.count == 1)
        #expect(kept.map(\.entry.event) == [.ingested, .configReloaded, .checkpoint])
        guard case .intact = try await store.verifyLog() else {
            Issue.record("pruned chain should verify")
            return
        }
    }

    @Test(
        "a forged checkpoint after deleting rows fails against an anchor and is shown without one",
        arguments: StoreKind.allCases)
    func forgedCheckpoint(kind: StoreKind) async throws {
        let store = try await settledStore(kind)
        let anchor = try #require(try await store.logHead())
        let anchorText = "\(anchor.seq):\(anchor.hash)"
        let held = try await store.verifyLog(anchor: try LogAnchor(parsing: anchorText))
        #expect(held.anchoredSeq == anchor.seq)
        #expect(held.checkpoint == nil)
        // Someone with the file removes rows 1-10 and appends a well-formed checkpoint by hand.
        let cut: Int64 = 10
        let rows = try await store.auditLog(AuditFilter())
        let previous = try #require(rows.first { $0.seq == cut }?.hash)
        let forged = LogEntry(
            at: Fixture.base.addingTimeInterval(2 * 86400), event: .checkpoint, actor: "root",
            detail: "pruned rows 1-\(cut) (before 2026-11-19T00:00:00Z); chain resumes at row \(cut + 1) after hash \(previous)")
        let seq = anchor.seq + 1
        let hash = LogChain.hash(previous: anchor.hash, seq: seq, forged)
        try await sql("""
            DELETE FROM delivery_log WHERE seq <= \(cut);
            INSERT INTO delivery_log (seq, at, event, actor, detail, hash)
            VALUES (\(seq), \(forged.at.timeIntervalSince1970), 'checkpoint', 'root', '\(forged.detail!)', '\(hash)');
            """, kind)
        let anchored = try await store.verifyLog(anchor: try LogAnchor(parsing: anchorText))
        guard case .broken(let brokenAt, let reason) = anchored.verdict else {
            Issue.record("a checkpoint after the anchor must not pass: \(anchored)")
            return
        }
        #expect(brokenAt == seq)
        #expect(reason.contains("was written after the anchored row \(anchor.seq)"))
        // The hash alone (no row number) is held the same way.
        guard case .broken = try await store.verifyLog(anchor: LogAnchor(seq: nil, hash: anchor.hash)).verdict else {
            Issue.record("the bare hash anchor must not pass either")
            return
        }
        // Without an anchor the chain checks out, but the report names the checkpoint it starts from.
        let plain = try await store.verifyLog(anchor: nil)
        guard case .intact = plain.verdict else {
            Issue.record("the forged chain is self-consistent: \(plain)")
            return
        }
        #expect(plain.checkpoint?.summary == "checkpoint at row \(seq) (rows 1-\(cut) pruned on \(Timestamp.format(forged.at, in: .gmt)) by root)")
    }

    @Test(
        "after a legitimate prune an anchor to a pruned row fails, and the printed new head holds",
        arguments: StoreKind.allCases)
    func anchorToPrunedRow(kind: StoreKind) async throws {
        let store = try await settledStore(kind)
        let rows = try await store.auditLog(AuditFilter())
        let old = try #require(rows.first { $0.seq == 5 })
        let oldHead = try #require(try await store.logHead())
        let result = try await store.pruneLog(
            before: Fixture.base.addingTimeInterval(3600), now: Fixture.base.addingTimeInterval(5 * 86400), actor: "admin")
        #expect(result.removed > 5)
        let gone = try await store.verifyLog(anchor: LogAnchor(seq: 5, hash: old.hash))
        guard case .broken(_, let reason) = gone.verdict else {
            Issue.record("an anchor to a pruned row must fail: \(gone)")
            return
        }
        #expect(reason.contains("is not in the chain"))
        // The head kept before the prune is still a row, but the prune came after it.
        guard case .broken = try await store.verifyLog(anchor: LogAnchor(seq: oldHead.seq, hash: oldHead.hash)).verdict else {
            Issue.record("an anchor from before a prune must be replaced by the prune's new head")
            return
        }
        let newHead = try #require(result.head)
        let fresh = try await store.verifyLog(anchor: newHead)
        #expect(fresh.anchoredSeq == newHead.seq)
        guard case .intact = fresh.verdict else {
            Issue.record("the new head must hold: \(fresh)")
            return
        }
        // A wrong row number for a real hash fails too.
        guard case .broken = try await store.verifyLog(anchor: LogAnchor(seq: try #require(newHead.seq) - 1, hash: newHead.hash)).verdict else {
            Issue.record("row and hash must match together")
            return
        }
    }

    @Test("a malformed anchor is a clear error")
    func malformedAnchor() throws {
        for text in ["", "abc", String(repeating: "g", count: 64), "0:" + String(repeating: "a", count: 64),
                     "x:" + String(repeating: "a", count: 64), String(repeating: "a", count: 65)]
        {
            #expect(throws: StoreError.self) { try LogAnchor(parsing: text) }
        }
        #expect(try LogAnchor(parsing: "12:" + String(repeating: "A", count: 64))
            == LogAnchor(seq: 12, hash: String(repeating: "a", count: 64)))
    }

    // MARK: Defect 11: the words the patient was told

    static func careProtocol(body: String) throws -> CareProtocol {
        CareProtocol(
            id: "trigger-point-injection", title: "TPI",
            steps: [
                Step(
                    id: "ice", offset: .elapsed(seconds: 0), validForSeconds: 6 * 3600, urgent: false, channels: [],
                    subject: try MessageTemplate(parsing: "Aftercare"), body: try MessageTemplate(parsing: body))
            ])
    }

    @Test(
        "attempts under two protocol versions name each version and print their exact words; tampering is caught",
        arguments: StoreKind.allCases)
    func messagesAndProtocolVersions(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        for id in ["P-1", "P-2"] {
            _ = try await store.ingest([Fixture.file("\(id).json", [.procedure(Fixture.procedure(id))])], now: Fixture.base, plan: Fixture.plan)
        }
        let first = ProtocolVersion(try Self.careProtocol(body: "Ice it {first_name}."))
        let second = ProtocolVersion(try Self.careProtocol(body: "Ice it for 10 minutes, {first_name}."))
        #expect(first.hash != second.hash)
        #expect(ProtocolVersion(try Self.careProtocol(body: "Ice it {first_name}.")).hash == first.hash)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 10, leaseSeconds: 60)
            .filter { $0.stepID == "ice" }.sorted { $0.procedure.id < $1.procedure.id }
        let texts = [
            // PostgreSQL text cannot hold a NUL (it is stored as U+FFFD there, and the words then do not match).
            SentMessage(subject: "Aftercare", body: "Ice it Ana." + (kind == .sqlite ? "\u{0}" : ""), protocolVersion: first),
            SentMessage(subject: "Aftercare", body: "Ice it for 10 minutes, Ana.", protocolVersion: second),
        ]
        try await store.record(
            [(claimed[0], delivered(texts[0])),
             (claimed[1], .attempted(
                { var a = ReminderStoreTests.attempt(.retry(after: nil, reason: "503")); a.message = texts[1]; return a }(),
                next: .retry(at: Fixture.base.addingTimeInterval(60))))],
            now: Fixture.base)
        // The retry sends the same text again: stored once.
        let retry = try await store.claimDue(now: Fixture.base.addingTimeInterval(60), limit: 10, leaseSeconds: 60)
        #expect(retry.count == 1)
        try await store.record([(retry[0], delivered(texts[1]))], now: Fixture.base.addingTimeInterval(60))
        let attempts = try await store.auditLog(AuditFilter()).filter { $0.entry.event == .attempt }
        #expect(attempts.count == 3)
        var shown: [AttemptMessage] = []
        for record in attempts { shown.append(try await store.attemptMessage(seq: record.seq)) }
        #expect(shown.map { $0.record.entry.protocolVersion } == [first.hash, second.hash, second.hash])
        #expect(shown.map(\.body) == [texts[0].body, texts[1].body, texts[1].body])
        #expect(shown.allSatisfy { $0.textMatches && $0.protocolMatches && $0.subject == "Aftercare" })
        #expect(shown[0].protocolVersion == first)
        #expect(try await stores.scalar(kind, "SELECT COUNT(*) FROM message") == "2")
        #expect(try await stores.scalar(kind, "SELECT COUNT(*) FROM protocol_version") == "2")
        guard case .intact = try await store.verifyLog() else {
            Issue.record("chain should verify")
            return
        }
        // Changing the message row or the attempt row's hash is caught (the latter by the chain).
        try await sql("UPDATE message SET body = 'Take two aspirin.' WHERE hash = '\(texts[1].hash)'", kind)
        #expect(try await store.attemptMessage(seq: attempts[1].seq).textMatches == false)
        #expect(try await store.attemptMessage(seq: attempts[0].seq).textMatches)
        try await sql("UPDATE delivery_log SET message_hash = '\(texts[0].hash)' WHERE seq = \(attempts[1].seq)", kind)
        #expect(try await store.verifyLog() == .broken(
            seq: attempts[1].seq, reason: "row \(attempts[1].seq) does not match its hash (edited, reordered or replaced)"))
        await #expect(throws: StoreError.self) { try await store.attemptMessage(seq: 1) }
    }

    @Test("a database written before messages were kept migrates and still verifies")
    func oldDatabaseVerifiesAfterMigration() async throws {
        do {
            let store = try await settledStore()
            guard case .intact = try await store.verifyLog() else {
                Issue.record("chain should verify")
                return
            }
        }
        // Turn the file back into a schema-1 database: no new columns or tables, no v2 migration.
        try await sql("""
            ALTER TABLE delivery_log DROP COLUMN protocol_version;
            ALTER TABLE delivery_log DROP COLUMN message_hash;
            DROP TABLE protocol_version; DROP TABLE message;
            DELETE FROM grdb_migrations WHERE identifier = 'v2';
            PRAGMA user_version = 1;
            """)
        let reopened = try await makeStore()
        let head = try #require(try await reopened.logHead())
        #expect(try await reopened.verifyLog() == .intact(rows: Int(head.seq), head: head.hash))
        let version = try await DatabaseQueue(path: databasePath).read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") }
        #expect(version == 2)
    }

    // MARK: Defect 6: a delivery is the truth about the patient

    func oneClaim(_ store: any ReminderQueue) async throws -> ClaimedReminder {
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        return try #require(try await store.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 60).first)
    }

    @Test(
        "claim, cancel, delivered: the reminder is delivered, show and status say so, the log says why",
        arguments: StoreKind.allCases)
    func deliveredAfterCancel(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let claim = try await oneClaim(store)
        _ = try await store.ingest([Fixture.file("c.json", [.cancel(procedureID: "P-1", reason: "declined")])], now: Fixture.base, plan: Fixture.plan)
        let fenced = try await store.record([(claim, delivered())], now: Fixture.base.addingTimeInterval(1))
        #expect(fenced == 0)
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders[0].state == .delivered)
        #expect(reminders[0].attempts == 1)
        #expect(reminders[1...].allSatisfy { $0.state == .cancelled })
        let status = try await store.status(now: Fixture.base)
        #expect(status.count(.delivered) == 1 && status.count(.cancelled) == 2)
        let attempt = try #require(try await store.auditLog(AuditFilter(outcome: "delivered")).first)
        #expect(attempt.entry.detail == "HTTP 204; delivered after cancel request: the message was already under way")
    }

    @Test("claim, cancel, failed: the cancel stands", arguments: StoreKind.allCases)
    func failureAfterCancel(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let claim = try await oneClaim(store)
        _ = try await store.ingest([Fixture.file("c.json", [.cancel(procedureID: "P-1", reason: nil)])], now: Fixture.base, plan: Fixture.plan)
        let fenced = try await store.record(
            [(claim, .attempted(ReminderStoreTests.attempt(.retry(after: nil, reason: "503")), next: .retry(at: Fixture.base.addingTimeInterval(60))))],
            now: Fixture.base)
        #expect(fenced == 1)
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders[0].state == .cancelled)
    }

    @Test(
        "claim, lease lapses and is recovered, delivered: delivered, and not sent again",
        arguments: StoreKind.allCases)
    func deliveredAfterLapse(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let claim = try await oneClaim(store)
        let later = Fixture.base.addingTimeInterval(120)
        #expect(try await store.recoverClaims(now: later) == 1)
        try await store.record([(claim, delivered())], now: later)
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders[0].state == .delivered)
        #expect(reminders[0].attempts == 1)
        #expect(try await store.claimDue(now: later, limit: 10, leaseSeconds: 60).isEmpty)
        let attempt = try #require(try await store.auditLog(AuditFilter(outcome: "delivered")).first)
        #expect(attempt.entry.detail?.hasSuffix("delivered after its lease lapsed: marked delivered, not sent again") == true)
    }

    @Test(
        "claimed again after a lapse, the first claim's delivery wins and the second's failure does not undo it",
        arguments: StoreKind.allCases)
    func deliveredAfterReclaim(kind: StoreKind) async throws {
        let store = try await makeStore(kind)
        let first = try await oneClaim(store)
        let later = Fixture.base.addingTimeInterval(120)
        try await store.recoverClaims(now: later)
        let second = try #require(try await store.claimDue(now: later, limit: 1, leaseSeconds: 60).first)
        #expect(second.leaseToken != first.leaseToken)
        try await store.record([(first, delivered())], now: later)
        #expect(try await store.procedure("P-1")?.1[0].state == .delivered)
        let fenced = try await store.record(
            [(second, .attempted(ReminderStoreTests.attempt(.failed(reason: "HTTP 410")), next: .dead(reason: "HTTP 410")))],
            now: later)
        #expect(fenced == 1)
        let reminder = try #require(try await store.procedure("P-1")?.1[0])
        #expect(reminder.state == .delivered)
        #expect(reminder.attempts == 1)
    }
}

import AftercareCore
@testable import AftercareStore
import Foundation
import GRDB
import Testing

@Suite("The tamper-evident delivery log")
struct DeliveryLogTests {
    let stores = TestStores()
    var databasePath: String { stores.sqlitePath }

    /// A log of a few thousand mixed events: ingests, deliveries, retries, dead, cancels, expiries.
    func busyStore(_ kind: StoreKind = .sqlite) async throws -> any ReminderQueue {
        let store = try await stores.open(kind)
        var files: [IntakeBatchFile] = []
        for index in 0..<400 {
            files.append(Fixture.file("f\(index).json", [.procedure(Fixture.procedure("P-\(index)", patient: "MRN-\(index % 37)"))]))
        }
        _ = try await store.ingest(files, now: Fixture.base, plan: Fixture.plan)
        var now = Fixture.base
        for round in 0..<3 {
            let claimed = try await store.claimDue(now: now, limit: 1000, leaseSeconds: 60)
            let outcomes: [(ClaimedReminder, Resolution)] = claimed.enumerated().map { index, reminder in
                switch (index + round) % 4 {
                case 0: return (reminder, .attempted(ReminderStoreTests.attempt(.delivered(detail: "HTTP 204")), next: .delivered))
                case 1:
                    return (reminder, .attempted(ReminderStoreTests.attempt(.retry(after: 5, reason: "HTTP 503, \"busy\"")),
                                                 next: .retry(at: now.addingTimeInterval(60))))
                case 2: return (reminder, .attempted(ReminderStoreTests.attempt(.failed(reason: "HTTP 410")), next: .dead(reason: "HTTP 410")))
                default: return (reminder, .expired(reason: "window closed"))
                }
            }
            try await store.record(outcomes, now: now)
            now = now.addingTimeInterval(86400)
        }
        _ = try await store.ingest(
            (0..<20).map { Fixture.file("c\($0).json", [.cancel(procedureID: "P-\($0 * 3)", reason: "declined")]) },
            now: now, plan: Fixture.plan)
        return store
    }

    func sql(_ statements: String, _ kind: StoreKind = .sqlite) async throws {
        try await stores.tamper(kind, statements)
    }

    @Test("thousands of mixed events verify, and the head is the last row's hash", arguments: StoreKind.allCases)
    func longChainVerifies(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        let verdict = try await store.verifyLog()
        let head = try #require(try await store.logHead())
        #expect(head.seq > 1500)
        #expect(verdict == .intact(rows: Int(head.seq), head: head.hash))
    }

    @Test(
        "checked in two halves at once, verify reports exactly what one walk reports",
        arguments: [
            "", "UPDATE delivery_log SET outcome = 'delivered' WHERE seq = 40",
            "UPDATE delivery_log SET detail = 'x' WHERE seq = (SELECT MAX(seq) FROM delivery_log) - 3",
            "UPDATE delivery_log SET hash = (SELECT hash FROM delivery_log WHERE seq = 1) WHERE seq = 1200",
            "DELETE FROM delivery_log WHERE seq = 900",
            "UPDATE delivery_log SET seq = -1 WHERE seq = 1000; UPDATE delivery_log SET seq = 1000 WHERE seq = 1001; "
                + "UPDATE delivery_log SET seq = 1001 WHERE seq = -1",
            "UPDATE delivery_log SET attempt = CAST(attempt AS BLOB) WHERE seq = (SELECT MAX(seq) FROM delivery_log "
                + "WHERE attempt IS NOT NULL)",
        ])
    func halvesAgreeWithOneWalk(tampering: String) async throws {
        // SQLite's own fast path: checked against its plain walk.
        let store = try #require(try await busyStore() as? ReminderStore)
        if !tampering.isEmpty { try await sql(tampering) }
        let oneWalk = try await store.verifyLog(anchor: nil, halvesFrom: .max)
        let halves = try await store.verifyLog(anchor: nil, halvesFrom: 1)
        #expect(halves.verdict == oneWalk.verdict)
        if tampering.isEmpty {
            // The halves did check every row (the walk then read only seqs and hashes).
            let head = try #require(try await store.logHead())
            #expect(try await store.checkHashesInHalves(from: 1) == head.seq)
            #expect(halves.verdict == .intact(rows: Int(head.seq), head: head.hash))
            // After a prune the halves start from the checkpoint's hash.
            _ = try await store.ingest(
                [Fixture.file("all.json", (0..<400).map { .cancel(procedureID: "P-\($0)", reason: "done") })],
                now: Fixture.base.addingTimeInterval(3 * 86400), plan: Fixture.plan)
            let pruned = try await store.pruneLog(
                before: Fixture.base.addingTimeInterval(86400), now: Fixture.base.addingTimeInterval(10 * 86400),
                actor: "admin")
            #expect(pruned.removed > 0)
            let newHead = try #require(try await store.logHead())
            #expect(try await store.checkHashesInHalves(from: 1) == newHead.seq)
            let afterPrune = try await store.verifyLog(anchor: nil, halvesFrom: 1)
            #expect(afterPrune.verdict == (try await store.verifyLog(anchor: nil, halvesFrom: .max)).verdict)
            guard case .intact = afterPrune.verdict else {
                Issue.record("a pruned log verifies: \(afterPrune.verdict)")
                return
            }
        } else {
            #expect(try await store.checkHashesInHalves(from: 1) == nil)
            guard case .broken = halves.verdict else {
                Issue.record("tampering not caught: \(tampering)")
                return
            }
        }
    }

    @Test("an edited row is named", arguments: StoreKind.allCases)
    func editedRow(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        try await sql("UPDATE delivery_log SET outcome = 'delivered' WHERE seq = 777", kind)
        #expect(try await store.verifyLog() == .broken(seq: 777, reason: "row 777 does not match its hash (edited, reordered or replaced)"))
    }

    @Test(
        "an event renamed to one aftercare does not know is caught, not read back as an attempt",
        arguments: StoreKind.allCases)
    func unknownEventName(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        let seq = try #require(
            try await stores.scalar(kind, "SELECT MIN(seq) FROM delivery_log WHERE event = 'attempt'").flatMap { Int64($0) })
        try await sql("UPDATE delivery_log SET event = 'nothing-happened' WHERE seq = \(seq)", kind)
        #expect(try await store.verifyLog() == .broken(seq: seq, reason: "row \(seq) does not match its hash (edited, reordered or replaced)"))
    }

    @Test("a number rewritten as bytes of the same digits is caught, and verify does not crash on it")
    func numberStoredAsText() async throws {
        let store = try await busyStore()
        let seq = try #require(try await DatabaseQueue(path: databasePath).read { db in
            try Int64.fetchOne(db, sql: "SELECT MIN(seq) FROM delivery_log WHERE attempt IS NOT NULL")
        })
        try await sql("UPDATE delivery_log SET attempt = CAST(attempt AS BLOB) WHERE seq = \(seq)")
        #expect(try await store.verifyLog() == .broken(seq: seq, reason: "row \(seq) does not match its hash (edited, reordered or replaced)"))
    }

    @Test("a deleted middle row is named", arguments: StoreKind.allCases)
    func deletedRow(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        try await sql("DELETE FROM delivery_log WHERE seq = 500", kind)
        #expect(try await store.verifyLog() == .broken(seq: 500, reason: "row 500 is missing (next row is 501)"))
    }

    @Test("two swapped rows are caught at the first of them", arguments: StoreKind.allCases)
    func swappedRows(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        try await sql("""
            UPDATE delivery_log SET seq = -1 WHERE seq = 300;
            UPDATE delivery_log SET seq = 300 WHERE seq = 301;
            UPDATE delivery_log SET seq = 301 WHERE seq = -1;
            """, kind)
        #expect(try await store.verifyLog() == .broken(seq: 300, reason: "row 300 does not match its hash (edited, reordered or replaced)"))
    }

    @Test(
        "a truncated tail still verifies on its own, but the kept head is gone from it",
        arguments: StoreKind.allCases)
    func truncatedTail(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        let kept = try #require(try await store.logHead())
        try await sql("DELETE FROM delivery_log WHERE seq > \(kept.seq - 10)", kind)
        guard case .intact(_, let head) = try await store.verifyLog() else {
            Issue.record("a prefix of a chain is itself a valid chain")
            return
        }
        #expect(head != kept.hash)
        let all = try await store.auditLog(AuditFilter())
        #expect(!all.contains { $0.hash == kept.hash })
    }

    @Test(
        "prune removes old rows, leaves a checkpoint, and the rest verifies; removing more is caught",
        arguments: StoreKind.allCases)
    func pruneThenVerify(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        // Settle every procedure, so no pending reminder holds the cut back.
        let settleAt = Fixture.base.addingTimeInterval(3 * 86400)
        _ = try await store.ingest(
            [Fixture.file("all.json", (0..<400).map { .cancel(procedureID: "P-\($0)", reason: "done") })],
            now: settleAt, plan: Fixture.plan)
        let before = try #require(try await store.logHead())
        let cutoff = Fixture.base.addingTimeInterval(86400)  // rows of the first day go
        let result = try await store.pruneLog(before: cutoff, now: Fixture.base.addingTimeInterval(10 * 86400), actor: "admin")
        let removed = result.removed
        #expect(removed > 0)
        #expect(result.keptForPending == nil)
        let remaining = try await store.auditLog(AuditFilter())
        #expect(remaining.allSatisfy { $0.entry.at >= cutoff })
        #expect(remaining.last?.entry.event == .checkpoint)
        let verdict = try await store.verifyLog()
        guard case .intact(let rows, let head) = verdict else {
            Issue.record("pruned chain should verify: \(verdict)")
            return
        }
        #expect(rows == remaining.count)
        #expect(rows == Int(before.seq) - removed + 1)
        #expect(head == remaining.last?.hash)
        #expect(result.head == LogAnchor(seq: before.seq + 1, hash: head))
        // Deleting the first kept row as well is detected.
        let first = try #require(remaining.first?.seq)
        try await sql("DELETE FROM delivery_log WHERE seq = \(first)", kind)
        #expect(try await store.verifyLog() == .broken(seq: first, reason: "row \(first) is missing (the log starts at row \(first + 1))"))
    }

    @Test("filters select by patient, procedure, step, outcome, channel and time", arguments: StoreKind.allCases)
    func filters(kind: StoreKind) async throws {
        let store = try await busyStore(kind)
        let patient = try await store.auditLog(AuditFilter(patientID: "MRN-5"))
        #expect(!patient.isEmpty && patient.allSatisfy { $0.entry.patientID == "MRN-5" })
        let procedure = try await store.auditLog(AuditFilter(procedureID: "P-3"))
        #expect(procedure.first?.entry.event == .ingested)
        let cancelled = try await store.auditLog(AuditFilter(outcome: "cancelled"))
        #expect(!cancelled.isEmpty)
        #expect(cancelled.allSatisfy { $0.entry.event == .cancelled && $0.entry.detail == "declined" })
        #expect(procedure.allSatisfy { $0.entry.procedureID == "P-3" })
        let step = try await store.auditLog(AuditFilter(stepID: "checkin-24h"))
        #expect(!step.isEmpty && step.allSatisfy { $0.entry.stepID == "checkin-24h" })
        let delivered = try await store.auditLog(AuditFilter(outcome: "delivered"))
        #expect(!delivered.isEmpty && delivered.allSatisfy { $0.entry.outcome == "delivered" })
        let dead = try await store.auditLog(AuditFilter(outcome: "dead"))
        #expect(!dead.isEmpty && dead.allSatisfy { $0.entry.event == .dead })
        let sms = try await store.auditLog(AuditFilter(channel: "sms"))
        #expect(!sms.isEmpty && sms.allSatisfy { $0.entry.channel == "sms" })
        let secondDay = try await store.auditLog(
            AuditFilter(since: Fixture.base.addingTimeInterval(86400), until: Fixture.base.addingTimeInterval(2 * 86400)))
        #expect(!secondDay.isEmpty)
        #expect(secondDay.allSatisfy { $0.entry.at >= Fixture.base.addingTimeInterval(86400) && $0.entry.at < Fixture.base.addingTimeInterval(2 * 86400) })
        let newest = try await store.auditLog(AuditFilter(limit: 5))
        let head = try #require(try await store.logHead())
        #expect(newest.map(\.seq) == Array((head.seq - 4)...head.seq))
    }

    @Test("CSV quotes commas, quotes and line breaks; JSON and table mask destinations unless asked")
    func formats() throws {
        let entry = LogEntry(
            at: Fixture.base, event: .attempt, procedureID: "P-1", patientID: "MRN-1", stepID: "checkin-24h",
            channel: "email", sender: "relay", destination: "jane@example.org", attempt: 2, outcome: "retry",
            responseCode: 451, error: "451 4.7.1 \"greylisted\", try later\r\nsecond line", latencyMilliseconds: 12.5
        )
        let record = LogRecord(seq: 9, entry: entry, hash: "ab")
        let csv = AuditFormat.csv([record], unmask: false)
        let lines = csv.components(separatedBy: "\r\n")
        #expect(lines[0] == AuditFormat.columns.joined(separator: ","))
        #expect(csv.contains(#""451 4.7.1 ""greylisted"", try later"#))
        #expect(csv.contains(",j***@example.org,"))
        #expect(AuditFormat.csv([record], unmask: true).contains(",jane@example.org,"))
        let json = AuditFormat.json(record, unmask: false)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(object["destination"] as? String == "j***@example.org")
        #expect(object["response_code"] as? Int == 451)
        #expect(object["error"] as? String == "451 4.7.1 \"greylisted\", try later\r\nsecond line")
        #expect(!json.contains("\n"))
        let table = AuditFormat.table([record], zone: TimeZone(identifier: "America/New_York")!, unmask: false)
        // Fixed-width columns, then the result whole: the relay's reply, escaped onto one line.
        #expect(table.contains("retry 451 451 4.7.1 \"greylisted\", try later\\r\\nsecond line"), "\(table)")
        #expect(table.contains("j***@example.org"))
        #expect(!table.contains("jane"))
    }

    @Test(
        "a state change cannot land without its log row: a failing log insert undoes the change",
        arguments: StoreKind.allCases)
    func noChangeWithoutItsRow(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        _ = try await store.ingest([Fixture.file("a.json", [.procedure(Fixture.procedure("P-1"))])], now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 1, leaseSeconds: 60)
        let rowsBefore = try await store.auditLog(AuditFilter()).count
        /// A trigger refusing log rows of one event, as a full disk or a crash at that point would.
        func refuse(_ event: String) async throws {
            switch kind {
            case .sqlite:
                try await sql("""
                    CREATE TRIGGER refuse_\(event) BEFORE INSERT ON delivery_log WHEN NEW.event = '\(event)'
                    BEGIN SELECT RAISE(ABORT, 'simulated failure writing the log row'); END;
                    """)
            case .postgres:
                try await sql(
                    """
                    CREATE FUNCTION refuse_\(event)() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                        IF NEW.event = '\(event)' THEN RAISE EXCEPTION 'simulated failure writing the log row'; END IF;
                        RETURN NEW;
                    END $$;
                    CREATE TRIGGER refuse_\(event) BEFORE INSERT ON delivery_log
                    FOR EACH ROW EXECUTE FUNCTION refuse_\(event)()
                    """, kind)
            }
        }
        try await refuse("attempt")
        await #expect(throws: (any Error).self) {
            try await store.record(
                [(claimed[0], .attempted(ReminderStoreTests.attempt(.delivered(detail: "ok")), next: .delivered))],
                now: Fixture.base)
        }
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders[0].state == .claimed)
        #expect(try await store.auditLog(AuditFilter()).count == rowsBefore)
        // And the other way round: an ingest whose log row fails leaves no procedure behind.
        try await refuse("ingested")
        await #expect(throws: (any Error).self) {
            try await store.ingest([Fixture.file("b.json", [.procedure(Fixture.procedure("P-2"))])], now: Fixture.base, plan: Fixture.plan)
        }
        #expect(try await store.procedure("P-2") == nil)
    }
}

@Suite("The audit table on a terminal")
struct AuditTableEscapingTests {
    @Test("a receiver's reply with ESC, CR/LF or a bidi override is shown escaped on one line")
    func hostileReplyEscaped() {
        var entry = LogEntry(at: Fixture.base, event: .attempt, procedureID: "P-1", stepID: "ice")
        entry.outcome = "failed"
        entry.error = "550 \u{1B}[2J\r\nforged\u{202E}"
        let table = AuditFormat.table([LogRecord(seq: 1, entry: entry, hash: LogChain.genesis)], zone: .gmt, unmask: false)
        #expect(!table.unicodeScalars.contains { $0 == "\u{1B}" || $0 == "\r" || $0 == "\u{202E}" })
        #expect(table.split(separator: "\n").count == 3)  // header, the row, the footer
    }

    @Test("the result column is shown whole, however long the relay's reply")
    func resultNotCutOff() {
        var entry = LogEntry(at: Fixture.base, event: .attempt, procedureID: "P-1", stepID: "checkin-24h")
        entry.outcome = "failed"
        entry.responseCode = 550
        entry.error = "SMTP 550 5.1.1 <ana@example.org>: Recipient address rejected: User unknown in virtual mailbox table"
        let table = AuditFormat.table([LogRecord(seq: 1, entry: entry, hash: LogChain.genesis)], zone: .gmt, unmask: false)
        let row = table.split(separator: "\n")[1]
        #expect(row.hasSuffix("failed 550 " + entry.error!), "\(table)")
        #expect(!row.contains("…"))
    }
}

import AftercareCore
@testable import AftercareStore
import AftercareTestKit
import Foundation
import GRDB
import PostgresNIO
import Testing

/// What both stores offer for the delivery log, so one script builds the same log on each.
protocol AuditedLog: AnyObject, Sendable {
    func logEvent(_ entry: LogEntry) async throws
    func rememberProtocols(_ versions: [ProtocolVersion], now: Date) async throws
    @discardableResult
    func record(_ outcomes: [(ClaimedReminder, Resolution)], now: Date) async throws -> Int
    func auditLog(_ filter: AuditFilter) async throws -> [LogRecord]
    func logHead() async throws -> (seq: Int64, hash: String)?
    func pruneLog(before: Date, now: Date, actor: String) async throws -> PruneResult
    func verifyLog(anchor: LogAnchor?) async throws -> ChainReport
    func attemptMessage(seq: Int64) async throws -> AttemptMessage
}

extension ReminderStore: AuditedLog {}
extension PostgresReminderStore: AuditedLog {}

@Suite("The PostgreSQL delivery log reads, proves and prunes exactly as SQLite's")
struct PostgresAuditTests {
    let folder = TemporaryFolder()
    var sqlitePath: String { folder.path + "/aftercare.sqlite" }

    static let t0 = Date(timeIntervalSince1970: 1_795_000_000)
    static func at(_ minutes: Double) -> Date { t0.addingTimeInterval(minutes * 60) }

    /// A fresh SQLite store and a fresh PostgreSQL one (in a new database of the shared test server).
    func makeStores() async throws -> (ReminderStore, PostgresReminderStore) {
        let sqlite = try ReminderStore(path: sqlitePath)
        let postgres = try await Self.openPostgres(try await PostgresCluster.shared.makeDatabase())
        return (sqlite, postgres)
    }

    static func openPostgres(_ database: PostgresTestDatabase, node: String = "test-a") async throws
        -> PostgresReminderStore
    {
        try await PostgresReminderStore(
            settings: PostgresSettings(
                host: "localhost", port: database.port, user: "aftercare", database: database.name,
                tls: .verifyFull, caFile: database.caFile, node: node),
            password: database.password)
    }

    static let versionA = ProtocolVersion(protocolID: "trigger-point-injection", content: #"{"id":"tpi","v":1}"#)
    static let versionB = ProtocolVersion(protocolID: "trigger-point-injection", content: #"{"id":"tpi","v":2}"#)

    static func claimed(_ procedure: String, patient: String, step: String, attempt: Int = 1) -> ClaimedReminder {
        ClaimedReminder(
            procedure: Procedure(
                id: procedure, protocolID: "trigger-point-injection", performedAt: t0,
                patient: Patient(
                    id: patient, firstName: "Ana", timeZone: "America/New_York",
                    routes: [ContactRoute(channel: "sms", address: "+15551234567")])),
            stepID: step, nominalAt: t0, dueAt: t0, expiresAt: t0.addingTimeInterval(6 * 3600), attempt: attempt,
            leaseToken: 41)
    }

    static func attempt(
        channel: String, minute: Double, _ outcome: DeliveryOutcome, message: SentMessage?
    ) -> Resolution {
        .attempted(
            Attempt(
                channel: channel, sender: channel == "sms" ? "twilio" : "smtp",
                destination: channel == "sms" ? "+15551234567" : "ana@example.org", startedAt: at(minute),
                endedAt: at(minute).addingTimeInterval(0.25), result: SendResult(outcome, responseCode: 202),
                message: message),
            next: .delivered)
    }

    /// The same calls with the same times on either store: events, versions, and attempts (fenced:
    /// no reminder row holds the lease, but the attempt rows and their words are logged).
    static func buildLog(_ store: some AuditedLog) async throws {
        try await store.rememberProtocols([versionA, versionB], now: at(0))
        try await store.logEvent(LogEntry(at: at(0), event: .configReloaded, actor: "root", detail: "reloaded"))
        let words = SentMessage(subject: "Aftercare", body: "Ice the site tonight, Ana.", protocolVersion: versionA)
        let later = SentMessage(subject: "Check-in", body: "How is the soreness?", protocolVersion: versionB)
        try await store.record(
            [(claimed("P-1", patient: "MRN-1", step: "ice"),
              attempt(channel: "sms", minute: 10, .delivered(detail: "HTTP 202"), message: words))],
            now: at(10))
        try await store.record(
            [
                (claimed("P-2", patient: "MRN-2", step: "ice"),
                 attempt(channel: "email", minute: 20, .failed(reason: "550 no such user"), message: words)),
                (claimed("P-1", patient: "MRN-1", step: "checkin-24h"),
                 attempt(channel: "sms", minute: 20, .retry(after: nil, reason: "HTTP 503"), message: later)),
            ], now: at(20))
        try await store.logEvent(
            LogEntry(at: at(30), event: .expired, procedureID: "P-3", patientID: "MRN-3", stepID: "ice",
                     detail: "window closed"))
        try await store.record(
            [(claimed("P-3", patient: "MRN-3", step: "checkin-24h", attempt: 2),
              attempt(channel: "sms", minute: 40, .delivered(detail: "HTTP 200"), message: nil))],
            now: at(40))
        try await store.logEvent(LogEntry(at: at(50), event: .cancelled, procedureID: "P-2", patientID: "MRN-2",
                                          stepID: "checkin-24h", actor: "nurse", detail: "procedure cancelled"))
        try await store.logEvent(LogEntry(at: at(52), event: .deferred, procedureID: "P-4", patientID: "MRN-1",
                                          stepID: "ice", detail: "quiet hours"))
        try await store.logEvent(LogEntry(at: at(55), event: .configReloaded, actor: "root", detail: "reloaded"))
        try await store.record(
            [(claimed("P-4", patient: "MRN-1", step: "ice"),
              attempt(channel: "email", minute: 58, .delivered(detail: "250 queued"), message: later))],
            now: at(58))
    }

    /// The error line a call throws, or `nil` if it returns.
    static func failure(_ body: () async throws -> Void) async -> String? {
        do {
            try await body()
            return nil
        } catch let error as StoreError {
            return error.message
        } catch {
            return "\(error)"
        }
    }

    /// Runs SQL on the PostgreSQL store's database as its superuser, the append-only trigger off, as
    /// someone with the server's superuser could.
    static func tamper(_ store: PostgresReminderStore, _ statements: [String]) async throws {
        try await store.transaction { connection in
            try await connection.run("ALTER TABLE delivery_log DISABLE TRIGGER delivery_log_append_only")
            for statement in statements { try await connection.run(PostgresQuery(unsafeSQL: statement)) }
            try await connection.run("ALTER TABLE delivery_log ENABLE TRIGGER delivery_log_append_only")
        }
    }

    /// Runs SQL on the SQLite file behind the store's back, its guard triggers dropped.
    func tamper(_ statements: String) async throws {
        let queue = try DatabaseQueue(path: sqlitePath)
        try await queue.write { db in
            try db.execute(
                sql: "DROP TRIGGER IF EXISTS delivery_log_no_update; DROP TRIGGER IF EXISTS delivery_log_no_delete")
            try db.execute(sql: statements)
        }
    }

    @Test("auditLog under every filter, logHead and an intact verify agree row for row")
    func readsAgree() async throws {
        let (sqlite, postgres) = try await makeStores()
        defer { Task { await postgres.close() } }
        try await Self.buildLog(sqlite)
        try await Self.buildLog(postgres)

        let all = try await sqlite.auditLog(AuditFilter())
        #expect(all.count == 10)
        #expect(try await postgres.auditLog(AuditFilter()) == all)
        let filters = [
            AuditFilter(patientID: "MRN-1"), AuditFilter(procedureID: "P-2"), AuditFilter(stepID: "ice"),
            AuditFilter(outcome: "delivered"), AuditFilter(outcome: "expired"), AuditFilter(outcome: "retry"),
            AuditFilter(channel: "email"), AuditFilter(since: Self.at(20)), AuditFilter(until: Self.at(20)),
            AuditFilter(since: Self.at(10), until: Self.at(40)), AuditFilter(limit: 3),
            AuditFilter(patientID: "MRN-1", limit: 1), AuditFilter(procedureID: "P-1", stepID: "ice", channel: "sms"),
            AuditFilter(patientID: "nobody"),
        ]
        for filter in filters {
            let expected = try await sqlite.auditLog(filter)
            #expect(try await postgres.auditLog(filter) == expected, "\(filter)")
        }
        #expect(try await sqlite.auditLog(AuditFilter(limit: 3)).map(\.seq) == [8, 9, 10])
        #expect(try await sqlite.auditLog(AuditFilter(outcome: "expired")).count == 1)

        let head = try #require(try await sqlite.logHead())
        let pgHead = try #require(try await postgres.logHead())
        #expect(pgHead.seq == head.seq && pgHead.hash == head.hash)

        let report = try await sqlite.verifyLog(anchor: nil)
        #expect(report.verdict == .intact(rows: 10, head: head.hash))
        #expect(try await postgres.verifyLog(anchor: nil) == report)
        for anchor in [
            LogAnchor(seq: head.seq, hash: head.hash), LogAnchor(seq: nil, hash: all[4].hash),
            LogAnchor(seq: 4, hash: all[4].hash), LogAnchor(seq: 40, hash: head.hash),
            LogAnchor(seq: nil, hash: String(repeating: "a", count: 64)),
        ] {
            let expected = try await sqlite.verifyLog(anchor: anchor)
            #expect(try await postgres.verifyLog(anchor: anchor) == expected, "\(anchor)")
        }
    }

    @Test("attemptMessage returns the same words, and the same errors, on both")
    func attemptMessagesAgree() async throws {
        let (sqlite, postgres) = try await makeStores()
        defer { Task { await postgres.close() } }
        try await Self.buildLog(sqlite)
        try await Self.buildLog(postgres)
        let attempts = try await sqlite.auditLog(AuditFilter()).filter { $0.entry.event == .attempt }
        #expect(attempts.count == 5)
        for row in attempts where row.entry.messageHash != nil {
            let expected = try await sqlite.attemptMessage(seq: row.seq)
            #expect(expected.textMatches && expected.protocolMatches)
            #expect(try await postgres.attemptMessage(seq: row.seq) == expected)
        }
        // A config row, an attempt without its words, a row that does not exist.
        let wordless = try #require(attempts.first { $0.entry.messageHash == nil })
        for seq: Int64 in [1, wordless.seq, 99] {
            let expected = await Self.failure { _ = try await sqlite.attemptMessage(seq: seq) }
            #expect(expected != nil)
            #expect(await Self.failure { _ = try await postgres.attemptMessage(seq: seq) } == expected)
        }
        // The stored words changed behind the log's back: both say they no longer match.
        try await postgres.transaction { connection in
            try await connection.run("UPDATE message SET body = 'Something else'")
        }
        try await tamper("UPDATE message SET body = 'Something else'")
        let edited = try await sqlite.attemptMessage(seq: attempts[0].seq)
        #expect(!edited.textMatches)
        #expect(try await postgres.attemptMessage(seq: attempts[0].seq) == edited)
    }

    @Test("an edited row and a deleted row break both chains at the same row with the same words")
    func tamperingAgrees() async throws {
        let (sqlite, postgres) = try await makeStores()
        defer { Task { await postgres.close() } }
        try await Self.buildLog(sqlite)
        try await Self.buildLog(postgres)
        let head = try #require(try await sqlite.logHead())
        let anchor = LogAnchor(seq: head.seq, hash: head.hash)

        try await tamper("UPDATE delivery_log SET destination = '+15550000000' WHERE seq = 3")
        try await Self.tamper(postgres, ["UPDATE delivery_log SET destination = '+15550000000' WHERE seq = 3"])
        let edited = try await sqlite.verifyLog(anchor: nil)
        #expect(
            edited.verdict == .broken(seq: 3, reason: "row 3 does not match its hash (edited, reordered or replaced)"))
        #expect(try await postgres.verifyLog(anchor: nil) == edited)
        #expect(try await postgres.verifyLog(anchor: anchor) == (try await sqlite.verifyLog(anchor: anchor)))
        // An event name the appender never writes is an edit too.
        try await tamper("UPDATE delivery_log SET destination = 'ana@example.org', event = 'bogus' WHERE seq = 3")
        try await Self.tamper(
            postgres, ["UPDATE delivery_log SET destination = 'ana@example.org', event = 'bogus' WHERE seq = 3"])
        #expect(try await postgres.verifyLog(anchor: nil) == (try await sqlite.verifyLog(anchor: nil)))
        #expect(try await postgres.verifyLog(anchor: nil).verdict != .intact(rows: 10, head: head.hash))
        try await tamper("UPDATE delivery_log SET event = 'attempt' WHERE seq = 3")
        try await Self.tamper(postgres, ["UPDATE delivery_log SET event = 'attempt' WHERE seq = 3"])
        #expect(try await postgres.verifyLog(anchor: nil).verdict == .intact(rows: 10, head: head.hash))

        try await tamper("DELETE FROM delivery_log WHERE seq = 6")
        try await Self.tamper(postgres, ["DELETE FROM delivery_log WHERE seq = 6"])
        let deleted = try await sqlite.verifyLog(anchor: nil)
        #expect(deleted.verdict == .broken(seq: 6, reason: "row 6 is missing (next row is 7)"))
        #expect(try await postgres.verifyLog(anchor: nil) == deleted)

        // A broken chain is never pruned, with the same refusal.
        let refusal = await Self.failure {
            _ = try await sqlite.pruneLog(before: Self.at(30), now: Self.at(60), actor: "root")
        }
        #expect(refusal?.contains("BROKEN at row 6") == true)
        #expect(
            await Self.failure {
                _ = try await postgres.pruneLog(before: Self.at(30), now: Self.at(60), actor: "root")
            } == refusal)
        #expect(try await postgres.auditLog(AuditFilter()).count == 9)
    }

    @Test("a prune removes the same rows, writes the same checkpoint, and old and new anchors judge alike")
    func pruneAgrees() async throws {
        let (sqlite, postgres) = try await makeStores()
        defer { Task { await postgres.close() } }
        try await Self.buildLog(sqlite)
        try await Self.buildLog(postgres)
        let oldHead = try #require(try await sqlite.logHead())
        let oldAnchor = LogAnchor(seq: oldHead.seq, hash: oldHead.hash)

        // In the future, or nothing old enough: the same answers, nothing changed.
        let future = await Self.failure {
            _ = try await sqlite.pruneLog(before: Self.at(90), now: Self.at(60), actor: "root")
        }
        #expect(future?.contains("is in the future") == true)
        #expect(
            await Self.failure {
                _ = try await postgres.pruneLog(before: Self.at(90), now: Self.at(60), actor: "root")
            } == future)
        let nothing = try await sqlite.pruneLog(before: Self.at(-5), now: Self.at(60), actor: "root")
        #expect(nothing == PruneResult(removed: 0, head: nil, keptForPending: nil))
        #expect(try await postgres.pruneLog(before: Self.at(-5), now: Self.at(60), actor: "root") == nothing)

        let pruned = try await sqlite.pruneLog(before: Self.at(30), now: Self.at(60), actor: "root")
        #expect(pruned.removed == 4)
        #expect(pruned.head?.seq == 11)
        #expect(try await postgres.pruneLog(before: Self.at(30), now: Self.at(60), actor: "root") == pruned)
        #expect(try await postgres.auditLog(AuditFilter()) == (try await sqlite.auditLog(AuditFilter())))

        let newAnchor = try #require(pruned.head)
        for anchor in [nil, oldAnchor, newAnchor] {
            let expected = try await sqlite.verifyLog(anchor: anchor)
            #expect(try await postgres.verifyLog(anchor: anchor) == expected, "\(String(describing: anchor))")
        }
        let afterPrune = try await sqlite.verifyLog(anchor: nil)
        #expect(afterPrune.verdict == .intact(rows: 7, head: newAnchor.hash))
        #expect(afterPrune.checkpoint?.seq == 11)
        if case .broken(let seq, let reason) = try await postgres.verifyLog(anchor: oldAnchor).verdict {
            #expect(seq == 11 && reason.contains("was written after the anchored row 10"))
        } else {
            Issue.record("the anchor kept before the prune still passed")
        }

        // Appends after the prune chain on from the checkpoint on both.
        let more = LogEntry(at: Self.at(70), event: .configReloaded, actor: "root", detail: "again")
        try await sqlite.logEvent(more)
        try await postgres.logEvent(more)
        #expect(try await postgres.verifyLog(anchor: newAnchor) == (try await sqlite.verifyLog(anchor: newAnchor)))
        #expect(try await postgres.logHead()?.hash == (try await sqlite.logHead())?.hash)
    }

    @Test("a log_head row that disagrees with the last row is reported broken, and blocks a prune")
    func headRowDisagreement() async throws {
        let postgres = try await Self.openPostgres(try await PostgresCluster.shared.makeDatabase())
        defer { Task { await postgres.close() } }
        try await Self.buildLog(postgres)
        let head = try #require(try await postgres.logHead())
        #expect(try await postgres.verifyLog(anchor: nil).verdict == .intact(rows: 10, head: head.hash))

        let other = String(repeating: "b", count: 64)
        try await Self.tamper(postgres, ["UPDATE log_head SET hash = '\(other)'"])
        #expect(
            try await postgres.verifyLog(anchor: nil).verdict
                == .broken(
                    seq: 10,
                    reason: "the log's head row says row 10 hashes to \(other), but the row's hash is \(head.hash) "
                        + "(the head row or the row was rewritten)"))
        let refusal = await Self.failure {
            _ = try await postgres.pruneLog(before: Self.at(30), now: Self.at(60), actor: "root")
        }
        #expect(refusal?.hasPrefix("the delivery log is BROKEN at row 10 (the log's head row says") == true)

        // The last row cut off the end: the rest still chains, but the head row remembers it.
        try await Self.tamper(
            postgres, ["UPDATE log_head SET hash = '\(head.hash)'", "DELETE FROM delivery_log WHERE seq = 10"])
        #expect(
            try await postgres.verifyLog(anchor: nil).verdict
                == .broken(
                    seq: 10,
                    reason: "row 10 is missing: the log's head row says the chain ends at row 10, but the last row "
                        + "is 9 (rows cut off the end)"))

        // The head row rewound behind a row.
        let nine = try #require(try await postgres.logHead())
        try await Self.tamper(postgres, ["UPDATE log_head SET seq = 8, hash = '\(nine.hash)'"])
        #expect(
            try await postgres.verifyLog(anchor: nil).verdict
                == .broken(
                    seq: 9,
                    reason: "row 9 is past the log's head row, which says the chain ends at row 8 (rows added "
                        + "behind the appender's back, or the head row rewound)"))

        // Every row gone: SQLite would call an empty log intact; the head row does not.
        try await Self.tamper(postgres, ["DELETE FROM delivery_log"])
        #expect(
            try await postgres.verifyLog(anchor: nil).verdict
                == .broken(
                    seq: 1,
                    reason: "row 1 is missing: the log's head row says the chain ends at row 8, but the log has no "
                        + "rows (rows cut off the end)"))
        try await Self.tamper(postgres, ["DELETE FROM log_head"])
        #expect(
            try await postgres.verifyLog(anchor: nil).verdict
                == .broken(seq: 1, reason: "the log's head row (log_head) is missing; the log has no rows"))
    }

    @Test("the walk reads in pages and finds a break on a later page as one walk does")
    func pagedWalk() async throws {
        let postgres = try await Self.openPostgres(try await PostgresCluster.shared.makeDatabase())
        defer { Task { await postgres.close() } }
        try await Self.buildLog(postgres)
        func walk(_ pageRows: Int, anchor: LogAnchor? = nil) async throws -> ChainReport {
            try await postgres.read {
                try await PostgresReminderStore.walkChain($0, anchor: anchor, pageRows: pageRows)
            }
        }
        let whole = try await walk(10_000)
        #expect(whole.verdict == .intact(rows: 10, head: try #require(try await postgres.logHead()).hash))
        for pageRows in [1, 3, 5, 10] { #expect(try await walk(pageRows) == whole) }
        try await Self.tamper(postgres, ["UPDATE delivery_log SET detail = 'x' WHERE seq = 8"])
        for pageRows in [1, 3, 7, 10_000] {
            #expect(
                try await walk(pageRows).verdict
                    == .broken(seq: 8, reason: "row 8 does not match its hash (edited, reordered or replaced)"))
        }
    }

    @Test("two hosts appending at once make one unbroken chain")
    func concurrentAppends() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let hostA = try await Self.openPostgres(database, node: "test-a")
        let hostB = try await Self.openPostgres(database, node: "test-b")
        defer {
            Task {
                await hostA.close()
                await hostB.close()
            }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (host, store) in [("a", hostA), ("b", hostB)] {
                group.addTask {
                    for index in 0..<200 {
                        try await store.logEvent(
                            LogEntry(at: Self.at(Double(index)), event: .configReloaded, actor: host,
                                     detail: "\(host)-\(index)"))
                    }
                }
            }
            try await group.waitForAll()
        }
        let rows = try await hostB.auditLog(AuditFilter())
        #expect(rows.map(\.seq) == Array(1...400))
        #expect(Set(rows.compactMap(\.entry.detail)).count == 400)
        // Each host's rows in its own order, interleaved with the other's.
        #expect(rows.filter { $0.entry.actor == "a" }.map(\.entry.detail) == (0..<200).map { "a-\($0)" })
        let head = try #require(try await hostA.logHead())
        #expect(head.seq == 400)
        #expect(try await hostA.verifyLog(anchor: nil).verdict == .intact(rows: 400, head: head.hash))
        #expect(try await hostB.verifyLog(anchor: LogAnchor(seq: 400, hash: head.hash)).anchoredSeq == 400)
    }

    @Test("prunes on one host while another appends leave one chain that verifies from its checkpoint")
    func pruneWhileAppending() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let hostA = try await Self.openPostgres(database, node: "test-a")
        let hostB = try await Self.openPostgres(database, node: "test-b")
        defer {
            Task {
                await hostA.close()
                await hostB.close()
            }
        }
        for index in 0..<20 {
            try await hostA.logEvent(LogEntry(at: Self.at(Double(index)), event: .configReloaded, detail: "\(index)"))
        }
        let results = try await withThrowingTaskGroup(of: [PruneResult].self) { group in
            group.addTask {
                for index in 20..<220 {
                    try await hostA.logEvent(
                        LogEntry(at: Self.at(Double(index)), event: .configReloaded, detail: "\(index)"))
                }
                return []
            }
            for host in [hostA, hostB] {
                group.addTask {
                    var results: [PruneResult] = []
                    for cut in stride(from: 10.0, through: 200, by: 10) {
                        results.append(
                            try await host.pruneLog(before: Self.at(cut), now: Self.at(500), actor: "root"))
                    }
                    return results
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(results.contains { $0.removed > 0 })
        let report = try await hostB.verifyLog(anchor: nil)
        let head = try #require(try await hostA.logHead())
        let checkpoint = try #require(report.checkpoint)
        #expect(report.verdict == .intact(rows: Int(head.seq - checkpoint.firstKept + 1), head: head.hash))
        let rows = try await hostA.auditLog(AuditFilter())
        #expect(rows.map(\.seq) == Array(checkpoint.firstKept...head.seq))
        let appended = rows.filter { $0.entry.event == .configReloaded }
            .compactMap { $0.entry.detail.flatMap(Int.init) }
        #expect(appended == Array(appended.sorted()))
        #expect(appended.last == 219)
    }
}


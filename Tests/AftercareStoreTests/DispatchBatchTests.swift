import AftercareCore
@testable import AftercareStore
import AftercareTestKit
import Foundation
import GRDB
import Testing

/// Random text drawn from pieces that have tripped encoders before: NUL, separators, digits,
/// line breaks, combining marks, emoji, CJK; long enough at times for two- and three-digit lengths.
func randomText(_ random: inout SeededGenerator, maxPieces: Int = 40) -> String {
    let pieces = ["a", "Z", "0", "9", ":", "-", "\u{0}", "\n", "\r\n", "é", "e\u{301}", "🩺", "👩‍⚕️", "診", " ", "\"",
                  "\\", "\u{202E}", "\u{7F}", "ß"]
    let count = Int.random(in: 0...maxPieces, using: &random)
    return (0..<count).map { _ in pieces.randomElement(using: &random)! }.joined()
}

@Suite("Dispatch in batches: claims read patient columns, the chain is hashed from bytes")
struct DispatchBatchTests {
    let stores = TestStores()
    var databasePath: String { stores.sqlitePath }

    static func randomEntry(_ random: inout SeededGenerator) -> LogEntry {
        func maybe<T>(_ value: @autoclosure () -> T) -> T? { Bool.random(using: &random) ? value() : nil }
        func text() -> String? { Int.random(in: 0..<3, using: &random) == 0 ? nil : randomText(&random) }
        func date() -> Date {
            Date(timeIntervalSince1970: Double.random(in: -4e9...4e9, using: &random))
        }
        return LogEntry(
            at: date(), event: LogEvent.allCases.randomElement(using: &random)!, procedureID: text(),
            patientID: text(), stepID: text(), channel: text(), sender: text(), destination: text(),
            attempt: maybe(Int.random(in: Int.min...Int.max, using: &random)), startedAt: maybe(date()),
            endedAt: maybe(date()), outcome: text(),
            responseCode: maybe(Int.random(in: -1000...1000, using: &random)), error: text(),
            latencyMilliseconds: maybe(Double.random(in: -1e9...1e9, using: &random)), actor: text(),
            detail: Int.random(in: 0..<10, using: &random) == 0 ? randomText(&random, maxPieces: 400) : text(),
            protocolVersion: maybe(randomText(&random)), messageHash: maybe(randomText(&random))
        )
    }

    @Test("the byte encoder writes exactly LogChain.canonical's bytes on thousands of random rows")
    func encoderMatchesCanonical() {
        var random = SeededGenerator(seed: 11)
        var encoder = LogRowEncoder()
        var edges = [LogEntry(at: Date(timeIntervalSince1970: 0), event: .attempt)]
        edges.append(
            LogEntry(
                at: Date(timeIntervalSince1970: -0.0000004), event: .checkpoint, attempt: 0, responseCode: 0,
                latencyMilliseconds: 0))
        edges.append(
            LogEntry(
                at: Date(timeIntervalSince1970: 1_795_000_000.1234565), event: .attempt, attempt: Int.min,
                responseCode: Int.max, latencyMilliseconds: 0.0005, protocolVersion: "", messageHash: nil))
        var checked = 0
        for entry in edges + (0..<5000).map({ _ in Self.randomEntry(&random) }) {
            let seq = Int64.random(in: Int64.min...Int64.max, using: &random)
            for seq in [seq, 1, 0, 9, 10, Int64.max, Int64.min] {
                encoder.encode(seq: seq, entry)
                let expected = [UInt8](LogChain.canonical(seq: seq, entry))
                #expect(encoder.bytes == expected, "seq \(seq), entry \(entry)")
                if encoder.bytes != expected { return }
                checked += 1
            }
        }
        #expect(checked == 5003 * 7)
    }

    @Test("a message's hash is SHA-256 over each part's byte length, ':', and its bytes (as sha256sum computes it)")
    func messageHashIsStable() {
        #expect(SentMessage.hash(subject: "Ice\u{0}é", body: String(repeating: "Hi 🩺 ", count: 3))
            == "93bc5148dce29848fda071e255799dc13bb3222b0bb4e725faf8dfcea9a325c8")
        #expect(
            SentMessage.hash(subject: "", body: "")
                == "390feabc786e369e55b904251d643b52b52b691c60eb74a498ef7c6df993bf12")
    }

    @Test("the routes column encodes any routes unambiguously and reads them back exactly")
    func routesColumnRoundTrips() {
        var random = SeededGenerator(seed: 7)
        for _ in 0..<3000 {
            let routes = (0..<Int.random(in: 0...4, using: &random)).map { _ in
                ContactRoute(
                    channel: randomText(&random, maxPieces: 6), address: randomText(&random),
                    optedOut: Bool.random(using: &random))
            }
            let bytes = PatientColumns.routes(routes)
            let decoded = bytes.withUnsafeBytes { PatientColumns.decodeRoutes($0) }
            #expect(decoded == routes)
            if decoded != routes { return }
        }
        // Moving a separator between fields gives different bytes, never the same routes.
        let one = PatientColumns.routes([ContactRoute(channel: "a", address: "1:b")])
        let other = PatientColumns.routes([ContactRoute(channel: "a1", address: "b")])
        #expect(one != other)
        for broken in ["1:a", "1:a1:b", "1:a1:b2", "x:a1:b0", "3:a1:b0", "1:a1:b0extra"] {
            #expect(Data(broken.utf8).withUnsafeBytes { PatientColumns.decodeRoutes($0) } == nil, "\(broken)")
        }
    }

    static let awkward = Patient(
        id: "MRN-\u{0}7", firstName: "Zoë\u{0} 🩺", timeZone: "America/New_York",
        routes: [
            ContactRoute(channel: "sms", address: "+1555\u{0}1234567", optedOut: true),
            ContactRoute(channel: "email", address: "zoë@example.org\n:1:"),
            ContactRoute(channel: "webhook", address: "12:34"),
        ])

    static func procedure(_ id: String, _ patient: Patient, at: Date = Fixture.base) -> Procedure {
        Procedure(id: id, protocolID: "trigger-point-injection", performedAt: at, patient: patient)
    }

    func claimedPatients(_ store: any ReminderQueue, at now: Date = Fixture.base) async throws -> [String: Patient] {
        let claimed = try await store.claimDue(now: now, limit: 100, leaseSeconds: 60)
        return Dictionary(claimed.map { ($0.procedure.id, $0.procedure.patient) }) { first, _ in first }
    }

    @Test("ingest: a claim carries the patient exactly as ingested, NUL bytes, unicode and opt-outs included")
    func ingestWritesColumns() async throws {
        let store = try ReminderStore(path: databasePath)
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Self.procedure("P\u{0}1", Self.awkward))])], now: Fixture.base,
            plan: Fixture.plan)
        var noName = Self.awkward
        noName.firstName = nil
        _ = try await store.ingest(
            [Fixture.file("b.json", [.procedure(Self.procedure("P-2", noName))])], now: Fixture.base,
            plan: Fixture.plan)
        let patients = try await claimedPatients(store)
        #expect(patients["P\u{0}1"] == Self.awkward)
        #expect(patients["P-2"] == noName)
        #expect(patients["P"] == nil)
    }

    @Test("update: a claim after new routes and first name sees them on every open procedure")
    func updateWritesColumns() async throws {
        let store = try ReminderStore(path: databasePath)
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Fixture.procedure("P-1")), .procedure(Fixture.procedure("P-2"))])],
            now: Fixture.base, plan: Fixture.plan)
        let routes = [ContactRoute(channel: "email", address: "ana\u{0}@example.org"),
                      ContactRoute(channel: "sms", address: "+15557654321")]
        let outcome = try await store.ingest(
            [Fixture.file("u.json", [.update(PatientUpdate(patientID: "MRN-1", firstName: "Anna", routes: routes))])],
            now: Fixture.base, plan: Fixture.plan)
        #expect(outcome == [.applied(summary: "2 procedure(s) updated")])
        let patients = try await claimedPatients(store)
        #expect(patients.count == 2)
        for patient in patients.values {
            #expect(patient.routes == routes)
            #expect(patient.firstName == "Anna")
        }
    }

    @Test("opt-out and opt-in: a claim after each sees the route's new flag", arguments: StoreKind.allCases)
    func optOutWritesColumns(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        var patient = Fixture.procedure("P-1").patient
        patient.routes.append(ContactRoute(channel: "email", address: "ana@example.org", optedOut: true))
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Self.procedure("P-1", patient))])], now: Fixture.base,
            plan: Fixture.plan)
        _ = try await store.ingest(
            [Fixture.file("s.json", [.update(PatientUpdate(patientID: "MRN-1", optOut: ["sms"], optIn: ["email"]))])],
            now: Fixture.base, plan: Fixture.plan)
        let routes = try #require(try await claimedPatients(store)["P-1"]).routes
        #expect(routes.map(\.optedOut) == [true, false])
        #expect(routes.map(\.channel) == ["sms", "email"])
    }

    @Test("reschedule with a new zone: a claim after it sees the zone, routes unchanged")
    func rescheduleWritesColumns() async throws {
        let store = try ReminderStore(path: databasePath)
        _ = try await store.ingest(
            [Fixture.file("a.json", [.procedure(Self.procedure("P-1", Self.awkward))])], now: Fixture.base,
            plan: Fixture.plan)
        let outcome = try await store.ingest(
            [Fixture.file("r.json", [.reschedule(procedureID: "P-1", performedAt: nil, timeZone: "Europe/Lisbon")])],
            now: Fixture.base, plan: Fixture.plan)
        guard case .applied = outcome[0] else { Issue.record("refused: \(outcome)"); return }
        let patient = try #require(try await claimedPatients(store)["P-1"])
        #expect(patient.timeZone == "Europe/Lisbon")
        #expect(patient.routes == Self.awkward.routes)
        #expect(patient.firstName == Self.awkward.firstName)
    }

    @Test("book, move with a new zone, performed: a claim sees the booked routes and the moved zone")
    func appointmentPathWritesColumns() async throws {
        let store = try ReminderStore(path: databasePath)
        let planned = Fixture.base.addingTimeInterval(3600)
        _ = try await store.ingest(
            [Fixture.file("b.json", [.book(Self.procedure("A-1", Self.awkward, at: planned))])], now: Fixture.base,
            plan: Fixture.plan)
        let moved = try await store.ingest(
            [Fixture.file("m.json", [.move(procedureID: "A-1", plannedAt: planned, timeZone: "Asia/Tokyo")])],
            now: Fixture.base, plan: Fixture.plan)
        guard case .applied = moved[0] else { Issue.record("move refused: \(moved)"); return }
        let performed = try await store.ingest(
            [Fixture.file("p.json", [.performed(procedureID: "A-1", at: planned, force: false)])], now: planned,
            plan: Fixture.plan)
        guard case .applied = performed[0] else { Issue.record("performed refused: \(performed)"); return }
        var expected = Self.awkward
        expected.timeZone = "Asia/Tokyo"
        #expect(try await claimedPatients(store, at: planned)["A-1"] == expected)
    }

    /// A schema-3 file as the previous release left it, with `count` procedures whose patient JSON
    /// holds escapes, unicode and an opted-out route, each with one reminder due at `Fixture.base`.
    func writeVersion3(count: Int, corrupt: Bool = false) async throws {
        let queue = try DatabaseQueue(path: databasePath)
        try await queue.write { db in
            try db.execute(sql: SchemaMigrationTests.version2)
            try db.execute(sql: "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
            try db.execute(sql: "INSERT INTO grdb_migrations VALUES ('v1'), ('v2')")
            try db.execute(sql: "PRAGMA user_version = 2")
        }
        try queue.close()
        // Let the store take it to v3, then put it back to v3 with the old shape of procedure rows.
        _ = try ReminderStore(path: databasePath)
        let reopened = try DatabaseQueue(path: databasePath)
        try await reopened.write { db in
            try db.execute(sql: "DELETE FROM grdb_migrations WHERE identifier = 'v4'")
            try db.execute(
                sql: """
                    ALTER TABLE procedure DROP COLUMN first_name;
                    ALTER TABLE procedure DROP COLUMN time_zone;
                    ALTER TABLE procedure DROP COLUMN routes;
                    PRAGMA user_version = 3;
                    """)
            let insert = try db.makeStatement(
                sql: """
                    INSERT INTO procedure (id, protocol_id, performed_at, patient_id, patient_json, content_hash,
                        status, ingested_at, updated_at) VALUES (?, 'trigger-point-injection', 1795000000, ?, ?, 'h',
                        'active', 1795000000, 1795000000)
                    """)
            let reminder = try db.makeStatement(
                sql: """
                    INSERT INTO reminder (procedure_id, step_id, nominal_at, due_at, expires_at, state, updated_at)
                    VALUES (?, 'ice', 1795000000, 1795000000, 1795021600, 'scheduled', 1795000000)
                    """)
            for index in 0..<count {
                let json = corrupt && index == count / 2
                    ? "{\"id\":\"MRN-\(index)\""
                    : """
                    {"id":"MRN-\(index)","first_name":"Zo\\u00eb\\u0000","time_zone":"UTC","routes":[\
                    {"channel":"sms","to":"+1555\\u0000\(index)","opted_out":true},\
                    {"channel":"email","to":"p\(index)@example.org"}]}
                    """
                try insert.execute(arguments: [String(format: "P-%05d", index), "MRN-\(index)", json])
                try reminder.execute(arguments: [String(format: "P-%05d", index)])
            }
        }
        try reopened.close()
    }

    @Test("a schema-3 file is migrated: every procedure's columns are filled from its JSON, across pages")
    func migrationBackfillsColumns() async throws {
        try await writeVersion3(count: 2500)
        let store = try ReminderStore(path: databasePath)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 5000, leaseSeconds: 60)
        #expect(claimed.count == 2500)
        for reminder in claimed {
            let index = Int(reminder.procedure.id.dropFirst(2))!
            #expect(reminder.procedure.patient == Patient(
                id: "MRN-\(index)", firstName: "Zoë\u{0}", timeZone: "UTC",
                routes: [ContactRoute(channel: "sms", address: "+1555\u{0}\(index)", optedOut: true),
                         ContactRoute(channel: "email", address: "p\(index)@example.org")]))
        }
        let reader = try DatabaseQueue(path: databasePath)
        #expect(try await reader.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") } == 4)
        #expect(try await store.verifyLog(anchor: nil).verdict == .intact(rows: 0, head: LogChain.genesis))
    }

    @Test("a schema-3 file with unreadable patient details is refused by name and left as it was")
    func migrationRefusesUnreadablePatient() async throws {
        try await writeVersion3(count: 10, corrupt: true)
        #expect {
            _ = try ReminderStore(path: databasePath)
        } throws: { error in
            "\(error)".contains("procedure P-00005") && "\(error)".contains("patient details cannot be read")
        }
        let reader = try DatabaseQueue(path: databasePath)
        #expect(try await reader.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") } == 3)
    }

    /// The outcomes of a busy pass: deliveries, retries, deaths with opt-out rows, expiries, deferrals.
    static func outcomes(_ claimed: [ClaimedReminder], now: Date) -> [(ClaimedReminder, Resolution)] {
        claimed.enumerated().map { index, reminder in
            var attempt = ReminderStoreTests.attempt(.delivered(detail: "HTTP 204 \(index)"))
            switch index % 5 {
            case 0: return (reminder, .attempted(attempt, next: .delivered))
            case 1:
                attempt.optedOutChannels = ["email", "portal\u{0}"]
                attempt.result = SendResult(.retry(after: 5, reason: "HTTP 503 \"busy\""), responseCode: 503)
                return (reminder, .attempted(attempt, next: .retry(at: now.addingTimeInterval(60))))
            case 2:
                attempt.result = SendResult(.failed(reason: "HTTP 410"), responseCode: 410)
                return (reminder, .attempted(attempt, next: .dead(reason: "HTTP 410")))
            case 3: return (reminder, .expired(reason: "window closed"))
            default: return (reminder, .deferred(until: now.addingTimeInterval(3600), reason: "quiet hours"))
            }
        }
    }

    @Test(
        "a batch of outcomes writes the same rows and hashes as recording them one at a time",
        arguments: StoreKind.allCases)
    func batchLogEqualsOneByOne(kind: StoreKind) async throws {
        let other = TestStores()
        let batched = try await stores.open(kind)
        let single = try await other.open(kind)
        let files = (0..<75).map { Fixture.file("f\($0).json", [.procedure(Fixture.procedure("P-\($0)"))]) }
        for store in [batched, single] {
            _ = try await store.ingest(files, now: Fixture.base, plan: Fixture.plan)
        }
        let now = Fixture.base.addingTimeInterval(30)
        let first = try await batched.claimDue(now: now, limit: 1000, leaseSeconds: 60)
        #expect(first.count == 75)
        try await batched.record(Self.outcomes(first, now: now), now: now)
        let second = try await single.claimDue(now: now, limit: 1000, leaseSeconds: 60)
        for outcome in Self.outcomes(second, now: now) { try await single.record([outcome], now: now) }
        let rows = try await batched.auditLog(AuditFilter())
        // 15 each of: a delivery; a retry after two opt-outs; a death; an expiry; a deferral.
        #expect(rows.filter { $0.entry.at == now }.count == 120)
        #expect(rows == (try await single.auditLog(AuditFilter())))
        #expect(rows.map(\.seq) == Array(1...Int64(rows.count)))
        guard case .intact = try await batched.verifyLog(anchor: nil).verdict else {
            Issue.record("the batched chain does not verify")
            return
        }
    }

    @Test(
        "recovery returns every lapsed claim in one statement, one row each naming the patient",
        arguments: StoreKind.allCases)
    func recoveryLogsEachClaim(kind: StoreKind) async throws {
        let store = try await stores.open(kind)
        _ = try await store.ingest(
            [Fixture.file("a.json", (0..<7).map { .procedure(Fixture.procedure("P-\($0)", patient: "MRN-\($0)")) })],
            now: Fixture.base, plan: Fixture.plan)
        let claimed = try await store.claimDue(now: Fixture.base, limit: 5, leaseSeconds: 60)
        let later = try await store.claimDue(now: Fixture.base.addingTimeInterval(30), limit: 5, leaseSeconds: 60)
        #expect(claimed.count == 5 && later.count == 2)
        #expect(try await store.recoverClaims(now: Fixture.base.addingTimeInterval(70)) == 5)
        let rows = try await store.auditLog(AuditFilter()).filter { $0.entry.event == .recovered }
        #expect(Set(rows.compactMap(\.entry.procedureID)) == Set(claimed.map(\.procedure.id)))
        #expect(rows.allSatisfy { $0.entry.patientID == "MRN-" + $0.entry.procedureID!.dropFirst(2) })
        // PostgreSQL's rows also name the daemon that held the lease: "lease lapsed (held by test)".
        #expect(rows.allSatisfy { $0.entry.stepID == "ice" && $0.entry.detail?.hasPrefix("lease lapsed") == true })
        if kind == .sqlite { #expect(rows.allSatisfy { $0.entry.detail == "lease lapsed" }) }
        #expect(try await store.recoverClaims(now: Fixture.base.addingTimeInterval(70)) == 0)
        #expect(try await store.recoverClaims(now: Fixture.base.addingTimeInterval(70), all: true) == 2)
        guard case .intact = try await store.verifyLog(anchor: nil).verdict else {
            Issue.record("the chain does not verify")
            return
        }
    }
}

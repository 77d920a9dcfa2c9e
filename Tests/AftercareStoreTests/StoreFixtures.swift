import AftercareCore
import AftercareStore
import AftercareTestKit
import Foundation
import GRDB
import Testing

/// A temporary folder removed when the value is dropped.
final class TemporaryFolder: Sendable {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "aftercare-store-tests-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

enum Fixture {
    static let base = Date(timeIntervalSince1970: 1_795_000_000)  // 2026-11-18T...Z

    static func procedure(_ id: String, patient: String = "MRN-1", at: Date = base) -> Procedure {
        Procedure(
            id: id, protocolID: "trigger-point-injection", performedAt: at,
            patient: Patient(
                id: patient, firstName: "Ana", timeZone: "America/New_York",
                routes: [ContactRoute(channel: "sms", address: "+15551234567")]
            )
        )
    }

    /// A three-step plan laid out by hand (the real planner is tested in Core): 0 h, +24 h, +48 h,
    /// each valid for 6 h; steps whose window has passed at `now` come back expired.
    static let plan: PlanFunction = { procedure, now in
        let steps: [(String, Double)] = [("ice", 0), ("checkin-24h", 86400), ("checkin-48h", 172_800)]
        return .success(
            steps.map { id, offset in
                let nominal = procedure.performedAt.addingTimeInterval(offset)
                let expires = nominal.addingTimeInterval(6 * 3600)
                let expired = now > expires
                return PlannedReminder(
                    stepID: id, nominalAt: nominal, dueAt: max(nominal, now), expiresAt: expires,
                    state: expired ? .expired : .scheduled, note: expired ? "window closed" : nil
                )
            }
        )
    }

    static func file(_ name: String, _ requests: [IntakeRequest]) -> IntakeBatchFile {
        IntakeBatchFile(name: name, requests: requests, actor: "tester")
    }
}

/// The engines the store suite runs on: every test that uses only the store's protocol runs on both.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { rawValue }
}

/// One test's store: a SQLite file in a temporary folder, or a new database on the test cluster
/// (started once per test run by ``PostgresCluster``). Opening it again opens the same one, as a
/// restarted daemon would; `node` names the daemon holding the leases on PostgreSQL.
final class TestStores: @unchecked Sendable {
    let folder = TemporaryFolder()
    private let lock = NSLock()
    private var database: PostgresTestDatabase?

    var sqlitePath: String { folder.path + "/aftercare.sqlite" }

    func open(_ kind: StoreKind, node: String = "test") async throws -> any ReminderQueue {
        switch kind {
        case .sqlite:
            return try ReminderStore(path: sqlitePath)
        case .postgres:
            let database = try await postgresDatabase()
            return try await PostgresReminderStore(
                settings: PostgresSettings(
                    host: database.host, port: database.port, user: database.user, database: database.name,
                    tls: .verifyFull, caFile: database.caFile, node: node),
                password: database.password)
        }
    }

    /// Runs SQL behind the store's back, as someone with the database would: with the log's
    /// append-only guard off (SQLite's triggers dropped; PostgreSQL's trigger disabled) and, on
    /// PostgreSQL, the chain's head row set to the last row left, as a careful forger would.
    func tamper(_ kind: StoreKind, _ statements: String) async throws {
        switch kind {
        case .sqlite:
            let queue = try DatabaseQueue(path: sqlitePath)
            try await queue.write { db in
                try db.execute(
                    sql: "DROP TRIGGER IF EXISTS delivery_log_no_update; DROP TRIGGER IF EXISTS delivery_log_no_delete")
                try db.execute(sql: statements)
            }
        case .postgres:
            _ = try await psql(
                """
                BEGIN;
                ALTER TABLE delivery_log DISABLE TRIGGER delivery_log_append_only;
                \(statements);
                UPDATE log_head SET (seq, hash) = (SELECT seq, hash FROM delivery_log ORDER BY seq DESC LIMIT 1);
                ALTER TABLE delivery_log ENABLE TRIGGER delivery_log_append_only;
                COMMIT;
                """)
        }
    }

    /// The first column of the first row of `query`, as text.
    func scalar(_ kind: StoreKind, _ query: String) async throws -> String? {
        switch kind {
        case .sqlite:
            return try await DatabaseQueue(path: sqlitePath).read { db in try String.fetchOne(db, sql: query) }
        case .postgres:
            return try await psql(query, tuplesOnly: true)
        }
    }

    /// Runs SQL with psql as the database's superuser, over TLS checked against the test CA.
    func psql(_ sql: String, tuplesOnly: Bool = false) async throws -> String {
        let database = try await postgresDatabase()
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = database.password
        let connection =
            "host=\(database.host) port=\(database.port) user=\(database.user) dbname=\(database.name) "
            + "sslmode=verify-full sslrootcert=\(database.caFile)"
        let result = try await ExternalCommand.run(
            "/usr/bin/psql", [connection, "-X", "-q", "-v", "ON_ERROR_STOP=1"] + (tuplesOnly ? ["-A", "-t"] : [])
                + ["-c", sql], environment: environment)
        guard result.status == 0 else { throw StoreError("psql failed: \(result.output)") }
        return result.output
    }

    func postgresDatabase() async throws -> PostgresTestDatabase {
        if let database = lock.withLock({ self.database }) { return database }
        let made = try await PostgresCluster.shared.makeDatabase()
        return lock.withLock {
            if database == nil { database = made }
            return database!
        }
    }
}

import AftercareCore
import CSQLiteTuning
import Foundation
import GRDB

/// Why the store refused or failed an operation, as one line.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// aftercare's durable state: procedures, their reminders and the delivery log, in one SQLite file
/// (WAL mode) through GRDB.
///
/// The daemon is the only writer in normal operation; staff tools open the file read-only. Every
/// change to a reminder is written in the same transaction as its delivery-log row, so there is no
/// change without its row and no row without its change.
public final class ReminderStore: Sendable {
    let writer: any DatabaseWriter
    /// Where the database lives, for messages.
    public let path: String

    /// Opens (creating and migrating if needed) the database at `path`.
    ///
    /// - Parameter readOnly: open for reading only, as staff commands do; the file must exist and be
    ///   migrated already.
    /// SQLite's process-wide settings, made before the first connection opens (see CSQLiteTuning).
    private static let sqliteTuned: Bool = aftercare_sqlite_tune() == SQLITE_OK

    public init(path: String, readOnly: Bool = false) throws {
        _ = Self.sqliteTuned
        self.path = path
        var config = Configuration()
        config.readonly = readOnly
        config.label = "aftercare"
        config.busyMode = .timeout(10)
        // Readers answer the status line, due times and staff queries: two at once are plenty, and
        // each keeps a small page cache (a count over a million reminders would fill a large one).
        config.maximumReaderCount = 2
        config.prepareDatabase { db in
            if !db.configuration.readonly {
                // Durability before a spool file is removed: commits reach the disk.
                try db.execute(sql: "PRAGMA synchronous = FULL")
                try db.execute(sql: "PRAGMA cache_size = -4096")
            } else {
                try db.execute(sql: "PRAGMA cache_size = -1024")
            }
        }
        if readOnly {
            guard FileManager.default.fileExists(atPath: path) else {
                throw StoreError("no database at \(path) (has the daemon run yet?)")
            }
        } else {
            let folder = (path as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        do {
            let pool = try DatabasePool(path: path, configuration: config)
            if readOnly {
                let version = try pool.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0 }
                guard version > 0 else {
                    throw StoreError("the database at \(path) has not been set up by the daemon yet")
                }
                guard version >= Schema.version else {
                    throw StoreError(
                        "the database at \(path) is from an older aftercare (schema \(version), this one needs "
                            + "\(Schema.version)): restart the daemon (systemctl restart aftercare) to upgrade it")
                }
            } else {
                try Schema.migrate(pool)
            }
            writer = pool
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot open database \(path): \(Self.describe(error))")
        }
    }

    /// An in-memory store, for tests and previews.
    public init(inMemory: Void = ()) throws {
        path = ":memory:"
        let queue = try DatabaseQueue()
        try Schema.migrate(queue)
        writer = queue
    }

    /// One line for any database error.
    static func describe(_ error: any Error) -> String {
        if let error = error as? DatabaseError {
            return error.message ?? "\(error.resultCode)"
        }
        return "\(error)"
    }

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction on the writer, off the cooperative pool.
    ///
    /// A transaction that need not survive a crash (a claim: a lost one only means the reminder is
    /// claimed again) passes `durable: false` and commits without waiting for the disk. It is made
    /// durable by the next durable commit (the write-ahead log is one file, synced in order), and
    /// nothing a crash could lose from it matters.
    func transaction<T: Sendable>(
        durable: Bool = true, _ body: @escaping @Sendable (Database) throws -> T
    ) async throws -> T {
        try await writer.writeWithoutTransaction { db in
            if !durable { try db.execute(sql: "PRAGMA synchronous = NORMAL") }
            defer { if !durable { try? db.execute(sql: "PRAGMA synchronous = FULL") } }
            var result: T?
            try db.inTransaction(.immediate) {
                result = try body(db)
                return .commit
            }
            return result!
        }
    }

    /// Runs a read on a snapshot, off the cooperative pool.
    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await writer.read(body)
    }
}

/// The schema and its migrations. `user_version` records how far a file has come.
enum Schema {
    static let version = 4

    static func migrate(_ writer: any DatabaseWriter) throws {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE store_flag (name TEXT PRIMARY KEY NOT NULL, value INTEGER) WITHOUT ROWID;

                    CREATE TABLE procedure (
                        id TEXT PRIMARY KEY NOT NULL,
                        protocol_id TEXT NOT NULL,
                        performed_at REAL NOT NULL,
                        patient_id TEXT NOT NULL,
                        patient_json TEXT NOT NULL,
                        content_hash TEXT NOT NULL,
                        status TEXT NOT NULL CHECK (status IN ('active', 'cancelled')),
                        ingested_at REAL NOT NULL,
                        updated_at REAL NOT NULL
                    ) WITHOUT ROWID;
                    CREATE INDEX procedure_by_patient ON procedure(patient_id);

                    CREATE TABLE reminder (
                        procedure_id TEXT NOT NULL REFERENCES procedure(id),
                        step_id TEXT NOT NULL,
                        nominal_at REAL NOT NULL,
                        due_at REAL NOT NULL,
                        expires_at REAL NOT NULL,
                        state TEXT NOT NULL CHECK (state IN
                            ('scheduled', 'claimed', 'delivered', 'dead', 'expired', 'cancelled', 'skipped')),
                        attempts INTEGER NOT NULL DEFAULT 0,
                        lease_token INTEGER,
                        lease_expires_at REAL,
                        last_error TEXT,
                        updated_at REAL NOT NULL,
                        PRIMARY KEY (procedure_id, step_id)
                    ) WITHOUT ROWID;
                    CREATE INDEX reminder_due ON reminder(due_at) WHERE state = 'scheduled';
                    CREATE INDEX reminder_leased ON reminder(lease_expires_at) WHERE state = 'claimed';
                    CREATE INDEX reminder_retrying ON reminder(due_at) WHERE state = 'scheduled' AND attempts > 0;
                    CREATE INDEX reminder_by_state ON reminder(state, updated_at);

                    CREATE TABLE delivery_log (
                        seq INTEGER PRIMARY KEY,
                        at REAL NOT NULL,
                        event TEXT NOT NULL,
                        procedure_id TEXT,
                        patient_id TEXT,
                        step_id TEXT,
                        channel TEXT,
                        sender TEXT,
                        destination TEXT,
                        attempt INTEGER,
                        started_at REAL,
                        ended_at REAL,
                        outcome TEXT,
                        response_code INTEGER,
                        error TEXT,
                        latency_ms REAL,
                        actor TEXT,
                        detail TEXT,
                        hash TEXT NOT NULL
                    );
                    CREATE INDEX log_by_procedure ON delivery_log(procedure_id, seq);
                    CREATE INDEX log_by_patient ON delivery_log(patient_id, seq);
                    CREATE INDEX log_by_time ON delivery_log(at);
                    CREATE INDEX log_failures ON delivery_log(at) WHERE event = 'attempt' AND outcome != 'delivered';

                    -- The log is append-only: the database itself refuses edits and deletes. (Someone
                    -- with the file can drop these triggers; the hash chain is what proves tampering.)
                    CREATE TRIGGER delivery_log_no_update BEFORE UPDATE ON delivery_log
                    BEGIN SELECT RAISE(ABORT, 'the delivery log is append-only'); END;
                    CREATE TRIGGER delivery_log_no_delete BEFORE DELETE ON delivery_log
                    WHEN (SELECT value FROM store_flag WHERE name = 'pruning') IS NOT 1
                    BEGIN SELECT RAISE(ABORT, 'the delivery log is append-only'); END;
                    """
            )
            try db.execute(sql: "PRAGMA user_version = 1")
        }
        // What the patient was told: each attempt row names the protocol version it was rendered
        // from and the hash of its exact words; both texts are kept once, by their SHA-256.
        migrator.registerMigration("v2") { db in
            try db.execute(
                sql: """
                    ALTER TABLE delivery_log ADD COLUMN protocol_version TEXT;
                    ALTER TABLE delivery_log ADD COLUMN message_hash TEXT;

                    CREATE TABLE protocol_version (
                        hash TEXT PRIMARY KEY NOT NULL,
                        protocol_id TEXT NOT NULL,
                        content TEXT NOT NULL,
                        first_seen_at REAL NOT NULL
                    ) WITHOUT ROWID;

                    CREATE TABLE message (
                        hash TEXT PRIMARY KEY NOT NULL,
                        subject TEXT NOT NULL,
                        body TEXT NOT NULL
                    ) WITHOUT ROWID;
                    """
            )
            try db.execute(sql: "PRAGMA user_version = 2")
        }
        // Appointments: a procedure may be booked ahead (no reminders yet) and closed as not
        // performed. SQLite cannot widen a CHECK in place, so the table is rebuilt (GRDB defers the
        // foreign-key checks to the end of the migration). `planned_at` keeps the booked time once
        // the actual one is known. A reminder remembers the routes that failed permanently
        // ("channel:address", one a line), so the next try goes to the patient's next route.
        migrator.registerMigration("v3") { db in
            try db.execute(
                sql: """
                    CREATE TABLE procedure_v3 (
                        id TEXT PRIMARY KEY NOT NULL,
                        protocol_id TEXT NOT NULL,
                        performed_at REAL NOT NULL,
                        patient_id TEXT NOT NULL,
                        patient_json TEXT NOT NULL,
                        content_hash TEXT NOT NULL,
                        status TEXT NOT NULL CHECK (status IN ('active', 'cancelled', 'booked', 'not_performed')),
                        ingested_at REAL NOT NULL,
                        updated_at REAL NOT NULL,
                        planned_at REAL
                    ) WITHOUT ROWID;
                    INSERT INTO procedure_v3 (id, protocol_id, performed_at, patient_id, patient_json, content_hash,
                        status, ingested_at, updated_at)
                    SELECT id, protocol_id, performed_at, patient_id, patient_json, content_hash, status, ingested_at,
                        updated_at FROM procedure;
                    DROP TABLE procedure;
                    ALTER TABLE procedure_v3 RENAME TO procedure;
                    CREATE INDEX procedure_by_patient ON procedure(patient_id);
                    CREATE INDEX procedure_booked ON procedure(performed_at) WHERE status = 'booked';

                    ALTER TABLE reminder ADD COLUMN failed_routes TEXT;
                    """
            )
            try db.execute(sql: "PRAGMA user_version = 3")
        }
        // A claim reads the patient's first name, zone and routes from columns of their own
        // (``PatientColumns``) instead of decoding `patient_json`; rows from before are filled from it.
        migrator.registerMigration("v4") { db in
            try db.execute(
                sql: """
                    ALTER TABLE procedure ADD COLUMN first_name TEXT;
                    ALTER TABLE procedure ADD COLUMN time_zone TEXT;
                    ALTER TABLE procedure ADD COLUMN routes BLOB;
                    """
            )
            try backfillPatientColumns(db)
            try db.execute(sql: "PRAGMA user_version = 4")
        }
        try migrator.migrate(writer)
    }

    /// Fills the patient columns of every procedure from its `patient_json`, a page of ids at a time
    /// (a large file is not read into memory at once).
    static func backfillPatientColumns(_ db: Database) throws {
        let pageStatement = try db.makeStatement(
            sql: """
                SELECT id, patient_json FROM procedure WHERE ?1 IS NULL OR id > CAST(?1 AS TEXT)
                ORDER BY id LIMIT 1000
                """)
        let fillStatement = try db.makeStatement(
            sql: "UPDATE procedure SET first_name = ?, time_zone = ?, routes = ? WHERE id = ?")
        var page = FastInsert(pageStatement, in: db)
        var fill = FastInsert(fillStatement, in: db)
        let decoder = JSONDecoder()
        var after: Data?
        while true {
            var patients: [(id: String, patient: Patient)] = []
            page.bind(after)
            try page.rows { row in
                let id = row.text(0) ?? ""
                do {
                    patients.append((id, try decoder.decode(Patient.self, from: Data(row.bytes(1)))))
                } catch {
                    throw StoreError("procedure \(id): its stored patient details cannot be read (\(error))")
                }
            }
            guard let last = patients.last else { return }
            for (id, patient) in patients {
                fill.bind(patient.firstName)
                fill.bind(patient.timeZone)
                fill.bind(PatientColumns.routes(patient.routes))
                fill.bind(id)
                try fill.run()
            }
            after = Data(last.id.utf8)
        }
    }
}

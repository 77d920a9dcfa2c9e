import AftercareCore
import AftercareStore
import Foundation
import GRDB
import Testing

@Suite("Schema v3: a version 2 database is migrated in place")
struct SchemaMigrationTests {
    /// The schema as version 2 left it (frozen here: the store's own migrations must take it on).
    static let version2 = """
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

    @Test("a v2 file keeps its procedures, reminders and log chain and takes bookings after migrating")
    func migratesVersion2() async throws {
        let folder = TemporaryFolder()
        let path = folder.path + "/old.sqlite"
        do {
            let queue = try DatabaseQueue(path: path)
            try await queue.write { db in
                try db.execute(sql: Self.version2)
                try db.execute(sql: "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
                try db.execute(sql: "INSERT INTO grdb_migrations VALUES ('v1'), ('v2')")
                try db.execute(sql: "PRAGMA user_version = 2")
                try db.execute(
                    sql: """
                        INSERT INTO procedure VALUES ('P-old', 'trigger-point-injection', 1795000000, 'MRN-1',
                            '{"id":"MRN-1","time_zone":"UTC","routes":[{"channel":"sms","to":"+15551234567","opted_out":false}]}',
                            'h', 'active', 1795000000, 1795000000);
                        INSERT INTO reminder (procedure_id, step_id, nominal_at, due_at, expires_at, state, updated_at)
                            VALUES ('P-old', 'ice', 1795000000, 1795000000, 1795021600, 'scheduled', 1795000000);
                        """)
            }
            try queue.close()
        }
        let store = try ReminderStore(path: path)
        let (view, reminders) = try #require(try await store.procedure("P-old"))
        #expect(view.status == "active")
        #expect(view.plannedAt == nil)
        #expect(reminders.map(\.stepID) == ["ice"])
        let outcome = try await store.ingest(
            [Fixture.file("b.json", [.book(Fixture.procedure("A-1", at: Fixture.base.addingTimeInterval(86400)))])],
            now: Fixture.base, plan: Fixture.plan)
        #expect(outcome == [.applied(summary: "1 appointment(s) booked")])
        let claimed = try await store.claimDue(now: Fixture.base.addingTimeInterval(60), limit: 5, leaseSeconds: 60)
        #expect(claimed.map(\.stepID) == ["ice"])
        #expect(claimed.first?.failedRoutes.isEmpty == true)
        let reader = try DatabaseQueue(path: path)
        #expect(try await reader.read { db in try Int.fetchOne(db, sql: "PRAGMA user_version") } == 4)
        #expect(try await reader.read { db in try db.foreignKeyViolations().next() == nil })
    }
}

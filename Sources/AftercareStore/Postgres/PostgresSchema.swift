import Foundation
import PostgresNIO

/// The PostgreSQL schema: the SQLite one's tables and columns (times as seconds since 1970 in
/// `double precision`, so rows copied from SQLite hash as they did), plus what sharing needs: the
/// lease's owner, a sequence for lease tokens and the chain's head row.
enum PostgresSchema {
    static let version = 1

    /// Creates or upgrades the schema, once, however many daemons start at the same moment (a
    /// transaction-scoped advisory lock).
    static func migrate(_ connection: PostgresConnection) async throws {
        try await connection.run("BEGIN ISOLATION LEVEL READ COMMITTED")
        do {
            try await connection.run("SELECT pg_advisory_xact_lock(7261303938)")
            let exists = try await connection.value(Bool.self, "SELECT to_regclass('aftercare_schema') IS NOT NULL")
            if exists == true {
                let current = try await connection.value(Int.self, "SELECT version FROM aftercare_schema") ?? 0
                if current > version {
                    throw StoreError(
                        "the database holds schema \(current), newer than this aftercare's \(version): "
                            + "upgrade aftercare")
                }
            } else {
                for statement in statements { try await connection.run(PostgresQuery(unsafeSQL: statement)) }
                try await connection.run("INSERT INTO aftercare_schema (version) VALUES (\(version))")
            }
            try await connection.run("COMMIT")
        } catch {
            _ = try? await connection.run("ROLLBACK")
            throw error
        }
    }

    private static let statements: [String] = [
        "CREATE TABLE aftercare_schema (version integer NOT NULL)",
        """
        CREATE TABLE procedure (
            id text PRIMARY KEY,
            protocol_id text NOT NULL,
            performed_at double precision NOT NULL,
            patient_id text NOT NULL,
            patient_json text NOT NULL,
            first_name text,
            time_zone text,
            routes bytea,
            content_hash text NOT NULL,
            status text NOT NULL CHECK (status IN ('active', 'cancelled', 'booked', 'not_performed')),
            ingested_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            planned_at double precision
        )
        """,
        "CREATE INDEX procedure_by_patient ON procedure (patient_id)",
        "CREATE INDEX procedure_booked ON procedure (performed_at) WHERE status = 'booked'",
        """
        CREATE TABLE reminder (
            procedure_id text NOT NULL REFERENCES procedure (id),
            step_id text NOT NULL,
            nominal_at double precision NOT NULL,
            due_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            state text NOT NULL CHECK (state IN
                ('scheduled', 'claimed', 'delivered', 'dead', 'expired', 'cancelled', 'skipped')),
            attempts integer NOT NULL DEFAULT 0,
            lease_token bigint,
            lease_owner text,
            lease_expires_at double precision,
            -- The token of the claim whose outcome was recorded last: a write retried after its
            -- commit's reply was lost recognises itself instead of logging the outcome twice.
            recorded_token bigint,
            last_error text,
            failed_routes text,
            updated_at double precision NOT NULL,
            PRIMARY KEY (procedure_id, step_id)
        )
        """,
        "CREATE INDEX reminder_due ON reminder (due_at) WHERE state = 'scheduled'",
        "CREATE INDEX reminder_leased ON reminder (lease_expires_at) WHERE state = 'claimed'",
        "CREATE INDEX reminder_retrying ON reminder (due_at) WHERE state = 'scheduled' AND attempts > 0",
        "CREATE INDEX reminder_by_state ON reminder (state, updated_at)",
        // Fencing tokens: unique across every daemon, never reused.
        "CREATE SEQUENCE lease_token",
        """
        CREATE TABLE delivery_log (
            seq bigint PRIMARY KEY,
            at double precision NOT NULL,
            event text NOT NULL,
            procedure_id text,
            patient_id text,
            step_id text,
            channel text,
            sender text,
            destination text,
            attempt integer,
            started_at double precision,
            ended_at double precision,
            outcome text,
            response_code integer,
            error text,
            latency_ms double precision,
            actor text,
            detail text,
            protocol_version text,
            message_hash text,
            hash text NOT NULL
        )
        """,
        "CREATE INDEX log_by_procedure ON delivery_log (procedure_id, seq)",
        "CREATE INDEX log_by_patient ON delivery_log (patient_id, seq)",
        "CREATE INDEX log_by_time ON delivery_log (at)",
        "CREATE INDEX log_failures ON delivery_log (at) WHERE event = 'attempt' AND outcome <> 'delivered'",
        // The chain's head: every appender locks this row last, so concurrent writers chain in order.
        """
        CREATE TABLE log_head (
            id integer PRIMARY KEY CHECK (id = 1),
            seq bigint NOT NULL,
            hash text NOT NULL
        )
        """,
        "INSERT INTO log_head (id, seq, hash) VALUES (1, 0, '\(LogChain.genesis)')",
        // Append-only, as in SQLite: only a prune (which says so for its own transaction) deletes.
        // Someone with the server's superuser can drop this; the hash chain is what proves tampering.
        """
        CREATE FUNCTION delivery_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND current_setting('aftercare.pruning', true) = 'on' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'the delivery log is append-only';
        END $$
        """,
        """
        CREATE TRIGGER delivery_log_append_only BEFORE UPDATE OR DELETE ON delivery_log
        FOR EACH ROW EXECUTE FUNCTION delivery_log_append_only()
        """,
        """
        CREATE TABLE protocol_version (
            hash text PRIMARY KEY,
            protocol_id text NOT NULL,
            content text NOT NULL,
            first_seen_at double precision NOT NULL
        )
        """,
        "CREATE TABLE message (hash text PRIMARY KEY, subject text NOT NULL, body text NOT NULL)",
    ]
}

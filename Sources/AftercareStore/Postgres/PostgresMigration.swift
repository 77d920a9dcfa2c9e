import AftercareCore
import Foundation
import GRDB
import PostgresNIO

/// What `aftercare store migrate` copied.
public struct StoreMigrationSummary: Sendable, Hashable {
    public var procedures = 0
    public var reminders = 0
    public var logRows = 0
    public var messages = 0
    public var protocolVersions = 0
    /// The chain's head, the same on both sides after the copy.
    public var head: LogAnchor?
}

extension ReminderStore {
    /// Copies this store into an empty PostgreSQL one, in one PostgreSQL transaction: every
    /// procedure, reminder, kept text and log row as it is (the log's seqs and hashes unchanged, so
    /// the chain and any head kept elsewhere still hold). The chain is verified here first and there
    /// after, inside the transaction: if the copy does not verify to the same head, nothing is kept.
    /// Refuses a target that holds anything. The daemon must be stopped (the caller holds its lock).
    public func copy(to target: PostgresReminderStore) async throws -> StoreMigrationSummary {
        let source = try await verifyLog(anchor: nil)
        guard source.verdict.isIntact else {
            throw StoreError("the SQLite delivery log does not verify (\(source.verdict)); nothing copied")
        }
        let head = try await logHead()
        var summary = StoreMigrationSummary()
        try await target.transaction { connection in
            // Held to the end: a daemon started on the target meanwhile waits instead of appending.
            try await connection.run("SELECT pg_advisory_xact_lock(7261303938)")
            try await connection.run("SELECT seq FROM log_head WHERE id = 1 FOR UPDATE")
            let counts = try await connection.rows(
                """
                SELECT (SELECT count(*) FROM procedure), (SELECT count(*) FROM delivery_log),
                    (SELECT count(*) FROM protocol_version), (SELECT seq FROM log_head)
                """
            ) { try $0.decode((Int64, Int64, Int64, Int64).self) }
            if let (procedures, rows, versions, headSeq) = counts.first,
                procedures + rows + versions + headSeq > 0
            {
                throw StoreError(
                    "the target database is not empty (\(procedures) procedure(s), \(rows) log row(s), \(versions) "
                        + "protocol version(s)): migrate into a new, empty database")
            }
            summary.procedures = try await copyPages(
                page: { after in try await self.read { db in try Self.procedurePage(db, after: after) } },
                key: { $0.key }, insert: { try await PostgresRows.insert($0, into: "procedure", on: connection) })
            summary.reminders = try await copyPages(
                page: { after in try await self.read { db in try Self.reminderPage(db, after: after) } },
                key: { $0.key }, insert: { try await PostgresRows.insert($0, into: "reminder", on: connection) })
            summary.protocolVersions = try await copyPages(
                page: { after in
                    try await self.read { db in try Self.textPage(db, table: "protocol_version", after: after) }
                },
                key: { $0.key },
                insert: { try await PostgresRows.insert($0, into: "protocol_version", on: connection) })
            summary.messages = try await copyPages(
                page: { after in try await self.read { db in try Self.textPage(db, table: "message", after: after) } },
                key: { $0.key }, insert: { try await PostgresRows.insert($0, into: "message", on: connection) })
            var after: Int64 = .min
            while true {
                let from = after
                let page = try await self.read { db in
                    try Row.fetchAll(
                        db, sql: "SELECT \(Self.logColumns) FROM delivery_log WHERE seq > ? ORDER BY seq LIMIT 5000",
                        arguments: [from]
                    ).map { LogRecord(seq: $0["seq"], entry: Self.logEntry($0), hash: $0["hash"]) }
                }
                guard let last = page.last else { break }
                try await PostgresLog.insert(page, on: connection)
                summary.logRows += page.count
                after = last.seq
            }
            if let head {
                try await connection.run("UPDATE log_head SET seq = \(head.seq), hash = \(head.hash) WHERE id = 1")
            }
            let copied = try await PostgresReminderStore.walkChain(
                connection, anchor: head.map { LogAnchor(seq: $0.seq, hash: $0.hash) })
            guard copied.verdict.isIntact else {
                throw StoreError("the copy does not verify (\(copied.verdict)); nothing kept")
            }
        }
        summary.head = head.map { LogAnchor(seq: $0.seq, hash: $0.hash) }
        return summary
    }

    private func copyPages(
        page: (String?) async throws -> [PostgresRows.Row], key: (PostgresRows.Row) -> String,
        insert: ([PostgresRows.Row]) async throws -> Void
    ) async throws -> Int {
        var after: String?
        var total = 0
        while true {
            let rows = try await page(after)
            guard let last = rows.last else { return total }
            try await insert(rows)
            total += rows.count
            after = key(last)
        }
    }

    private static let pageSize = 5000

    private static func procedurePage(_ db: Database, after: String?) throws -> [PostgresRows.Row] {
        try Row.fetchAll(
            db,
            sql: """
                SELECT CAST(id AS BLOB) AS id, CAST(protocol_id AS BLOB) AS protocol_id, performed_at,
                    CAST(patient_id AS BLOB) AS patient_id, CAST(patient_json AS BLOB) AS patient_json,
                    CAST(first_name AS BLOB) AS first_name, CAST(time_zone AS BLOB) AS time_zone, routes,
                    CAST(content_hash AS BLOB) AS content_hash, status, ingested_at, updated_at, planned_at
                FROM procedure WHERE ?1 IS NULL OR id > CAST(?1 AS TEXT) ORDER BY id LIMIT \(pageSize)
                """, arguments: [after.map(exact)]
        ).map { row in
            PostgresRows.Row(
                key: row.text("id") ?? "",
                columns: [
                    ("id", .text(row.text("id"))), ("protocol_id", .text(row.text("protocol_id"))),
                    ("performed_at", .double(row["performed_at"])), ("patient_id", .text(row.text("patient_id"))),
                    ("patient_json", .text(row.text("patient_json"))), ("first_name", .text(row.text("first_name"))),
                    ("time_zone", .text(row.text("time_zone"))), ("routes", .bytes(row["routes"])),
                    ("content_hash", .text(row.text("content_hash"))), ("status", .text(row["status"])),
                    ("ingested_at", .double(row["ingested_at"])), ("updated_at", .double(row["updated_at"])),
                    ("planned_at", .double(row["planned_at"])),
                ])
        }
    }

    private static func reminderPage(_ db: Database, after: String?) throws -> [PostgresRows.Row] {
        // Keyed by procedure id and step id joined with a NUL (which neither holds).
        try Row.fetchAll(
            db,
            sql: """
                SELECT CAST(procedure_id AS BLOB) AS procedure_id, CAST(step_id AS BLOB) AS step_id, nominal_at,
                    due_at, expires_at, state, attempts, lease_token, lease_expires_at,
                    CAST(last_error AS BLOB) AS last_error, CAST(failed_routes AS BLOB) AS failed_routes, updated_at,
                    CAST(procedure_id || char(0) || step_id AS BLOB) AS key
                FROM reminder WHERE ?1 IS NULL OR (procedure_id || char(0) || step_id) > CAST(?1 AS TEXT)
                ORDER BY procedure_id || char(0) || step_id LIMIT \(pageSize)
                """, arguments: [after.map(exact)]
        ).map { row in
            PostgresRows.Row(
                key: row.text("key") ?? "",
                columns: [
                    ("procedure_id", .text(row.text("procedure_id"))), ("step_id", .text(row.text("step_id"))),
                    ("nominal_at", .double(row["nominal_at"])), ("due_at", .double(row["due_at"])),
                    ("expires_at", .double(row["expires_at"])), ("state", .text(row["state"])),
                    ("attempts", .integer(row["attempts"])), ("lease_token", .integer(row["lease_token"])),
                    // A claim from the stopped SQLite daemon is lapsed at once, so the first daemon on
                    // PostgreSQL returns it to the queue (and logs it) instead of waiting out the lease.
                    ("lease_expires_at", .double(row["state"] == "claimed" ? 0 : row["lease_expires_at"])),
                    ("last_error", .text(row.text("last_error"))),
                    ("failed_routes", .text(row.text("failed_routes"))), ("updated_at", .double(row["updated_at"])),
                ])
        }
    }

    private static func textPage(_ db: Database, table: String, after: String?) throws -> [PostgresRows.Row] {
        let columns = table == "message"
            ? ["hash", "subject", "body"] : ["hash", "protocol_id", "content", "first_seen_at"]
        let selected = columns.map { $0 == "first_seen_at" ? $0 : "CAST(\($0) AS BLOB) AS \($0)" }
        return try Row.fetchAll(
            db,
            sql: """
                SELECT \(selected.joined(separator: ", ")) FROM \(table)
                WHERE ?1 IS NULL OR hash > CAST(?1 AS TEXT) ORDER BY hash LIMIT \(pageSize)
                """, arguments: [after.map(exact)]
        ).map { row in
            PostgresRows.Row(
                key: row.text("hash") ?? "",
                columns: columns.map { column in
                    (column, column == "first_seen_at" ? .double(row[column]) : .text(row.text(column)))
                })
        }
    }
}

/// Rows copied as they are, by column name.
enum PostgresRows {
    enum Value: Sendable {
        case text(String?)
        case double(Double?)
        case integer(Int64?)
        case bytes(Data?)
    }

    struct Row: Sendable {
        var key: String
        var columns: [(String, Value)]
    }

    /// Inserts rows (all with the same columns) with multi-row `INSERT`s.
    static func insert(_ rows: [Row], into table: String, on connection: PostgresConnection) async throws {
        guard let first = rows.first else { return }
        let names = first.columns.map(\.0)
        let perInsert = max(1, 30_000 / names.count)
        var start = 0
        while start < rows.count {
            let end = min(rows.count, start + perInsert)
            var binds = PostgresBindings(capacity: (end - start) * names.count)
            var values: [String] = []
            var parameter = 0
            for row in rows[start..<end] {
                var placeholders: [String] = []
                for (_, value) in row.columns {
                    parameter += 1
                    switch value {
                    case .text(let text): binds.append(text)
                    case .double(let number): binds.append(number)
                    case .integer(let number): binds.append(number)
                    case .bytes(let data): try binds.append(data)
                    }
                    placeholders.append("$\(parameter)")
                }
                values.append("(" + placeholders.joined(separator: ", ") + ")")
            }
            try await connection.run(
                PostgresQuery(
                    unsafeSQL: "INSERT INTO \(table) (\(names.joined(separator: ", "))) VALUES "
                        + values.joined(separator: ", "),
                    binds: binds))
            start = end
        }
    }
}

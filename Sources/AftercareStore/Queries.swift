import AftercareCore
import Foundation
import GRDB

/// A reminder as staff see it.
public struct ReminderView: Sendable, Hashable {
    public var procedureID: String
    public var stepID: String
    public var state: ReminderState
    public var nominalAt: Date
    public var dueAt: Date
    public var expiresAt: Date
    public var attempts: Int
    public var lastError: String?
    public var updatedAt: Date

    public var reminderID: String { ReminderID.make(procedureID: procedureID, stepID: stepID) }
}

/// A procedure as staff see it.
public struct ProcedureView: Sendable, Hashable {
    public var procedure: Procedure
    /// `active`, `cancelled`, `booked` (an appointment not yet performed; `procedure.performedAt`
    /// is its planned time) or `not_performed` (closed unconfirmed).
    public var status: String
    public var ingestedAt: Date
    public var updatedAt: Date
    /// The planned time of a procedure that was booked as an appointment.
    public var plannedAt: Date?

    /// Still an appointment: booked, or closed without being performed.
    public var isAppointment: Bool { status == "booked" || status == "not_performed" }
}

/// The queue at a glance, for `aftercare status` and the daemon's systemd status line.
public struct QueueStatus: Sendable, Hashable {
    public var procedures: Int
    public var countsByState: [ReminderState: Int]
    /// Scheduled reminders whose due time has come.
    public var dueNow: Int
    /// Scheduled reminders that have failed at least once and wait for a retry.
    public var retrying: Int
    public var nextDue: Date?
    public var lastDelivery: Date?
    /// Attempts that did not deliver in the last 24 hours.
    public var failuresLastDay: Int
    /// Appointments booked and not yet performed.
    public var booked: Int = 0
    /// Appointments closed because nobody marked them performed.
    public var notPerformed: Int = 0

    public func count(_ state: ReminderState) -> Int { countsByState[state] ?? 0 }
}

extension ReminderStore {
    public func status(now: Date) async throws -> QueueStatus {
        try await read { db in
            var counts: [ReminderState: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM reminder GROUP BY state") {
                if let state = ReminderState(rawValue: row["state"]) { counts[state] = row["n"] }
            }
            var byStatus: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT status, COUNT(*) AS n FROM procedure GROUP BY status") {
                byStatus[row["status"]] = row["n"]
            }
            var status = QueueStatus(
                procedures: try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM procedure") ?? 0,
                countsByState: counts,
                dueNow: try Int.fetchOne(
                    db, sql: "SELECT COUNT(*) FROM reminder INDEXED BY reminder_due WHERE state = 'scheduled' AND due_at <= ?",
                    arguments: [now.timeIntervalSince1970]) ?? 0,
                retrying: try Int.fetchOne(
                    db, sql: "SELECT COUNT(*) FROM reminder INDEXED BY reminder_retrying WHERE state = 'scheduled' AND attempts > 0") ?? 0,
                nextDue: try Self.earliestDue(db),
                lastDelivery: try Double.fetchOne(
                    db, sql: "SELECT MAX(updated_at) FROM reminder WHERE state = 'delivered'")
                    .map(Date.init(timeIntervalSince1970:)),
                failuresLastDay: try Int.fetchOne(
                    db,
                    sql: """
                        SELECT COUNT(*) FROM delivery_log INDEXED BY log_failures
                        WHERE event = 'attempt' AND outcome != 'delivered' AND at >= ?
                        """,
                    arguments: [now.timeIntervalSince1970 - 86400]) ?? 0
            )
            status.booked = byStatus["booked"] ?? 0
            status.notPerformed = byStatus["not_performed"] ?? 0
            return status
        }
    }

    /// Reminders due by `now` and not yet settled: scheduled and due, or claimed. Cheap at any size
    /// (two partial indexes), for watching a backlog drain.
    public func dueOrClaimedCount(now: Date) async throws -> Int {
        try await read { db in
            try Int.fetchOne(
                db,
                sql: """
                    SELECT (SELECT COUNT(*) FROM reminder INDEXED BY reminder_due WHERE state = 'scheduled' AND due_at <= ?)
                         + (SELECT COUNT(*) FROM reminder INDEXED BY reminder_leased WHERE state = 'claimed')
                    """, arguments: [now.timeIntervalSince1970]) ?? 0
        }
    }

    /// Whether any reminder is due by `now` and not yet settled: two index probes, whatever the
    /// backlog's size (for polling while it drains).
    public func hasDueOrClaimed(now: Date) async throws -> Bool {
        try await read { db in
            try Bool.fetchOne(
                db,
                sql: """
                    SELECT EXISTS (SELECT 1 FROM reminder INDEXED BY reminder_due WHERE state = 'scheduled' AND due_at <= ?)
                        OR EXISTS (SELECT 1 FROM reminder INDEXED BY reminder_leased WHERE state = 'claimed')
                    """, arguments: [now.timeIntervalSince1970]) ?? false
        }
    }

    /// One procedure and its reminders in step order of due time, or `nil` if unknown.
    public func procedure(_ id: String) async throws -> (ProcedureView, [ReminderView])? {
        try await read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT CAST(protocol_id AS BLOB) AS protocol_id, performed_at,
                            CAST(patient_json AS BLOB) AS patient_json, status, ingested_at, updated_at, planned_at
                        FROM procedure WHERE id = CAST(? AS TEXT)
                        """,
                    arguments: [exact(id)])
            else { return nil }
            let view = ProcedureView(
                procedure: try Self.decodeProcedure(id: id, row: row), status: row["status"],
                ingestedAt: Date(timeIntervalSince1970: row["ingested_at"]),
                updatedAt: Date(timeIntervalSince1970: row["updated_at"]),
                plannedAt: (row["planned_at"] as Double?).map(Date.init(timeIntervalSince1970:))
            )
            let reminders = try Row.fetchAll(
                db, sql: "SELECT \(Self.reminderColumns) FROM reminder WHERE procedure_id = CAST(? AS TEXT) "
                    + "ORDER BY nominal_at, step_id", arguments: [exact(id)]
            ).map(Self.reminderView)
            return (view, reminders)
        }
    }

    /// Procedures, newest first, optionally only one patient's or only those with pending reminders.
    public func procedures(patientID: String?, pendingOnly: Bool, limit: Int) async throws
        -> [(ProcedureView, [ReminderView])]
    {
        try await read { db in
            var sql = """
                SELECT CAST(id AS BLOB) AS id, CAST(protocol_id AS BLOB) AS protocol_id, performed_at,
                    CAST(patient_json AS BLOB) AS patient_json, status, ingested_at, updated_at, planned_at
                FROM procedure p
                """
            var conditions: [String] = []
            var arguments: StatementArguments = []
            if let patientID {
                conditions.append("patient_id = ?")
                arguments += [patientID]
            }
            if pendingOnly {
                // A booked appointment is pending too: its aftercare is still to come.
                conditions.append(
                    "(status = 'booked' OR EXISTS (SELECT 1 FROM reminder r WHERE r.procedure_id = p.id "
                        + "AND r.state IN ('scheduled', 'claimed')))"
                )
            }
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            sql += " ORDER BY performed_at DESC, id LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
                let id = row.text("id") ?? ""
                let view = ProcedureView(
                    procedure: try Self.decodeProcedure(id: id, row: row), status: row["status"],
                    ingestedAt: Date(timeIntervalSince1970: row["ingested_at"]),
                    updatedAt: Date(timeIntervalSince1970: row["updated_at"]),
                    plannedAt: (row["planned_at"] as Double?).map(Date.init(timeIntervalSince1970:))
                )
                let reminders = try Row.fetchAll(
                    db, sql: "SELECT \(Self.reminderColumns) FROM reminder WHERE procedure_id = CAST(? AS TEXT) "
                        + "ORDER BY nominal_at, step_id",
                    arguments: [exact(id)]
                ).map(Self.reminderView)
                return (view, reminders)
            }
        }
    }

    static let reminderColumns = """
        CAST(procedure_id AS BLOB) AS procedure_id, CAST(step_id AS BLOB) AS step_id, state, nominal_at, due_at,
        expires_at, attempts, CAST(last_error AS BLOB) AS last_error, updated_at
        """

    /// A row selected with ``reminderColumns``.
    static func reminderView(_ row: Row) -> ReminderView {
        ReminderView(
            procedureID: row.text("procedure_id") ?? "", stepID: row.text("step_id") ?? "",
            state: ReminderState(rawValue: row["state"]) ?? .scheduled,
            nominalAt: Date(timeIntervalSince1970: row["nominal_at"]),
            dueAt: Date(timeIntervalSince1970: row["due_at"]),
            expiresAt: Date(timeIntervalSince1970: row["expires_at"]), attempts: row["attempts"],
            lastError: row.text("last_error"), updatedAt: Date(timeIntervalSince1970: row["updated_at"])
        )
    }
}

extension ReminderStore {
    /// How many reminders a replay of `scope` would re-queue or mark expired now: dead ones, and
    /// expired ones whose window is still open (the rule intake applies).
    public func replayable(_ scope: ReplayScope, now: Date) async throws -> Int {
        try await read { db in
            var sql = """
                SELECT COUNT(*) FROM reminder
                WHERE (state = 'dead' OR (state = 'expired' AND expires_at > ?))
                """
            var arguments: StatementArguments = [now.timeIntervalSince1970]
            switch scope {
            case .reminder(let id):
                let dot = id.lastIndex(of: ".")
                sql += " AND procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)"
                let procedureID = dot.map { String(id[..<$0]) } ?? id
                let stepID = dot.map { String(id[id.index(after: $0)...]) } ?? ""
                arguments += [exact(procedureID), exact(stepID)]
            case .procedure(let id):
                sql += " AND procedure_id = CAST(? AS TEXT)"
                arguments += [exact(id)]
            case .deadSince(let date):
                sql += " AND updated_at >= ?"
                arguments += [date.timeIntervalSince1970]
            }
            return try Int.fetchOne(db, sql: sql, arguments: arguments) ?? 0
        }
    }
}

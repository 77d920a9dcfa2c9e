import AftercareCore
import Foundation
import PostgresNIO

extension PostgresReminderStore {
    /// The queue at a glance (see ``ReminderStore/status(now:)``), in one snapshot and one round trip.
    public func status(now: Date) async throws -> QueueStatus {
        try await read { connection in
            var counts: [ReminderState: Int] = [:]
            for (state, count) in try await connection.rows(
                "SELECT state, COUNT(*) FROM reminder GROUP BY state", { try $0.decode((String, Int64).self) })
            {
                if let state = ReminderState(rawValue: state) { counts[state] = Int(count) }
            }
            var byStatus: [String: Int] = [:]
            for (status, count) in try await connection.rows(
                "SELECT status, COUNT(*) FROM procedure GROUP BY status", { try $0.decode((String, Int64).self) })
            {
                byStatus[status] = Int(count)
            }
            let figures = try await connection.rows(
                """
                SELECT
                    (SELECT COUNT(*) FROM reminder WHERE state = 'scheduled' AND due_at <= \(now.seconds)),
                    (SELECT COUNT(*) FROM reminder WHERE state = 'scheduled' AND attempts > 0),
                    (SELECT MIN(due_at) FROM reminder WHERE state = 'scheduled'),
                    (SELECT MAX(updated_at) FROM reminder WHERE state = 'delivered'),
                    (SELECT COUNT(*) FROM delivery_log
                        WHERE event = 'attempt' AND outcome <> 'delivered' AND at >= \(now.seconds - 86400))
                """
            ) { try $0.decode((Int64, Int64, Double?, Double?, Int64).self) }
            let (dueNow, retrying, nextDue, lastDelivery, failures) = figures[0]
            var status = QueueStatus(
                procedures: byStatus.values.reduce(0, +), countsByState: counts, dueNow: Int(dueNow),
                retrying: Int(retrying), nextDue: nextDue.map(Date.init(seconds:)),
                lastDelivery: lastDelivery.map(Date.init(seconds:)), failuresLastDay: Int(failures))
            status.booked = byStatus["booked"] ?? 0
            status.notPerformed = byStatus["not_performed"] ?? 0
            return status
        }
    }

    /// Reminders due by `now` and not yet settled: scheduled and due, or claimed.
    public func dueOrClaimedCount(now: Date) async throws -> Int {
        try await read { connection in
            let count = try await connection.value(
                Int64.self,
                """
                SELECT (SELECT COUNT(*) FROM reminder WHERE state = 'scheduled' AND due_at <= \(now.seconds))
                     + (SELECT COUNT(*) FROM reminder WHERE state = 'claimed')
                """)
            return Int(count ?? 0)
        }
    }

    /// Whether any reminder is due by `now` and not yet settled: two index probes.
    public func hasDueOrClaimed(now: Date) async throws -> Bool {
        try await read { connection in
            try await connection.value(
                Bool.self,
                """
                SELECT EXISTS (SELECT 1 FROM reminder WHERE state = 'scheduled' AND due_at <= \(now.seconds))
                    OR EXISTS (SELECT 1 FROM reminder WHERE state = 'claimed')
                """) ?? false
        }
    }

    /// One procedure and its reminders in order of nominal time, or `nil` if unknown.
    public func procedure(_ id: String) async throws -> (ProcedureView, [ReminderView])? {
        // No stored text holds a NUL (PostgreSQL's text cannot), so no procedure has this id.
        guard !PostgresIntake.holdsNUL(id) else { return nil }
        return try await read { connection in
            let views = try await connection.rows(
                """
                SELECT \(unescaped: Self.procedureColumns) FROM procedure WHERE id = \(id)
                """, Self.procedureView)
            guard let view = views.first else { return nil }
            return (view, try await reminders(of: [id], on: connection)[id] ?? [])
        }
    }

    /// Procedures, newest first, optionally only one patient's or only those with pending reminders.
    public func procedures(patientID: String?, pendingOnly: Bool, limit: Int) async throws
        -> [(ProcedureView, [ReminderView])]
    {
        if let patientID, PostgresIntake.holdsNUL(patientID) { return [] }
        return try await read { connection in
            var query: PostgresQuery = "SELECT \(unescaped: Self.procedureColumns) FROM procedure p WHERE TRUE"
            if let patientID {
                query.sql += " AND patient_id = $\(query.binds.count + 1)"
                query.binds.append(patientID)
            }
            if pendingOnly {
                // A booked appointment is pending too: its aftercare is still to come.
                query.sql += """
                     AND (status = 'booked' OR EXISTS (SELECT 1 FROM reminder r WHERE r.procedure_id = p.id
                        AND r.state IN ('scheduled', 'claimed')))
                    """
            }
            query.sql += " ORDER BY performed_at DESC, id COLLATE \"C\" LIMIT $\(query.binds.count + 1)"
            // SQLite reads a negative limit as none; `LIMIT NULL` is PostgreSQL's none.
            query.binds.append(limit < 0 ? nil : Int64(limit))
            let views = try await connection.rows(query, Self.procedureView)
            let reminders = try await reminders(of: views.map(\.procedure.id), on: connection)
            return views.map { view in (view, reminders[view.procedure.id] ?? []) }
        }
    }

    /// How many reminders a replay of `scope` would re-queue or mark expired now (see
    /// ``ReminderStore/replayable(_:now:)``).
    public func replayable(_ scope: ReplayScope, now: Date) async throws -> Int {
        let query: PostgresQuery
        switch scope {
        case .reminder(let id):
            guard !PostgresIntake.holdsNUL(id) else { return 0 }
            let dot = id.lastIndex(of: ".")
            let procedureID = dot.map { String(id[..<$0]) } ?? id
            let stepID = dot.map { String(id[id.index(after: $0)...]) } ?? ""
            query = """
                SELECT COUNT(*) FROM reminder
                WHERE (state = 'dead' OR (state = 'expired' AND expires_at > \(now.seconds)))
                    AND procedure_id = \(procedureID) AND step_id = \(stepID)
                """
        case .procedure(let id):
            guard !PostgresIntake.holdsNUL(id) else { return 0 }
            query = """
                SELECT COUNT(*) FROM reminder
                WHERE (state = 'dead' OR (state = 'expired' AND expires_at > \(now.seconds)))
                    AND procedure_id = \(id)
                """
        case .deadSince(let date):
            query = """
                SELECT COUNT(*) FROM reminder
                WHERE (state = 'dead' OR (state = 'expired' AND expires_at > \(now.seconds)))
                    AND updated_at >= \(date.seconds)
                """
        }
        return try await read { connection in Int(try await connection.value(Int64.self, query) ?? 0) }
    }

    private static let procedureColumns = """
        id, protocol_id, performed_at, patient_json, status, ingested_at, updated_at, planned_at
        """

    /// A row selected with ``procedureColumns``.
    private static func procedureView(_ row: PostgresRow) throws -> ProcedureView {
        let (id, protocolID, performedAt, patientJSON, status, ingestedAt, updatedAt, plannedAt) = try row.decode(
            (String, String, Double, String, String, Double, Double, Double?).self)
        return ProcedureView(
            procedure: try PostgresIntake.procedure(
                id: id, protocolID: protocolID, performedAt: performedAt, patientJSON: patientJSON),
            status: status, ingestedAt: Date(seconds: ingestedAt), updatedAt: Date(seconds: updatedAt),
            plannedAt: plannedAt.map(Date.init(seconds:)))
    }

    /// The reminders of `procedureIDs`, each procedure's in order of nominal time, then step.
    private func reminders(of procedureIDs: [String], on connection: PostgresConnection) async throws
        -> [String: [ReminderView]]
    {
        guard !procedureIDs.isEmpty else { return [:] }
        let views = try await connection.rows(
            """
            SELECT procedure_id, step_id, state, nominal_at, due_at, expires_at, attempts, last_error, updated_at
            FROM reminder WHERE procedure_id = ANY(\(procedureIDs))
            ORDER BY procedure_id, nominal_at, step_id COLLATE "C"
            """
        ) { row -> ReminderView in
            let (procedureID, stepID, state, nominalAt, dueAt, expiresAt, attempts, lastError, updatedAt) =
                try row.decode((String, String, String, Double, Double, Double, Int32, String?, Double).self)
            return ReminderView(
                procedureID: procedureID, stepID: stepID, state: ReminderState(rawValue: state) ?? .scheduled,
                nominalAt: Date(seconds: nominalAt), dueAt: Date(seconds: dueAt), expiresAt: Date(seconds: expiresAt),
                attempts: Int(attempts), lastError: lastError, updatedAt: Date(seconds: updatedAt))
        }
        return Dictionary(grouping: views, by: \.procedureID)
    }
}

import AftercareCore
import Crypto
import Foundation
import GRDB

/// One intake file, parsed, as the daemon hands it to the store.
public struct IntakeBatchFile: Sendable {
    /// The file's name in the spool (for log rows and messages).
    public var name: String
    public var requests: [IntakeRequest]
    /// Who dropped the file (the Unix owner), recorded on the log rows of staff requests.
    public var actor: String

    public init(name: String, requests: [IntakeRequest], actor: String) {
        self.name = name
        self.requests = requests
        self.actor = actor
    }
}

/// What became of one intake file.
public enum IntakeFileOutcome: Sendable, Hashable {
    /// Every request in it is now durable. `summary` is one line for the daemon's log.
    case applied(summary: String)
    /// Nothing in it was applied.
    case rejected(IntakeError)
}

/// The planner as the store calls it: the plan for a procedure at an instant, or why it cannot be
/// planned (e.g. its protocol is not configured).
public typealias PlanFunction = @Sendable (Procedure, Date) -> Result<[PlannedReminder], IntakeError>

extension ReminderStore {
    /// Applies intake files in one transaction, each file all-or-nothing inside its own savepoint, so
    /// one bad file never holds back or half-applies the others. Returns one outcome per file, in
    /// order. Throws only if the database itself fails, in which case nothing was applied.
    public func ingest(_ files: [IntakeBatchFile], now: Date, plan: @escaping PlanFunction) async throws
        -> [IntakeFileOutcome]
    {
        try await transaction { db in
            var log = try LogAppender(db)
            var outcomes: [IntakeFileOutcome] = []
            outcomes.reserveCapacity(files.count)
            for file in files {
                var outcome: IntakeFileOutcome = .applied(summary: "")
                let savedLog = log
                try db.inSavepoint {
                    do {
                        var counts = IntakeCounts()
                        for request in file.requests {
                            try Self.apply(request, file: file, now: now, plan: plan, db: db, log: &log, counts: &counts)
                        }
                        outcome = .applied(summary: counts.summary)
                        return .commit
                    } catch let error as IntakeError {
                        outcome = .rejected(error)
                        return .rollback
                    }
                }
                if case .rejected(let error) = outcome {
                    log = savedLog
                    try log.append(
                        LogEntry(
                            at: now, event: .rejected, procedureID: error.procedureID, actor: file.actor,
                            detail: "\(file.name): \(error)"
                        )
                    )
                }
                outcomes.append(outcome)
            }
            return outcomes
        }
    }

    private struct IntakeCounts {
        var procedures = 0
        var duplicates = 0
        var reminders = 0
        var expired = 0
        var cancelled = 0
        var replanned = 0
        var replayed = 0

        var summary: String {
            var parts: [String] = []
            if procedures > 0 { parts.append("\(procedures) procedure(s) planned: \(reminders) reminder(s), \(expired) expired") }
            if duplicates > 0 { parts.append("\(duplicates) already known") }
            if cancelled > 0 { parts.append("\(cancelled) reminder(s) cancelled") }
            if replanned > 0 { parts.append("\(replanned) reminder(s) re-planned") }
            if replayed > 0 { parts.append("\(replayed) reminder(s) replayed") }
            return parts.isEmpty ? "nothing to change" : parts.joined(separator: "; ")
        }
    }

    /// The fingerprint that tells "the same procedure again" from "a different one under the same id".
    static func contentHash(_ procedure: Procedure) -> String {
        // Every field, length-prefixed, in a fixed order: the same procedure always hashes the same.
        var canonical = ""
        func put(_ text: String) {
            canonical += String(text.utf8.count) + ":" + text
        }
        put(procedure.id)
        put(procedure.protocolID)
        put(String(Int64((procedure.performedAt.timeIntervalSince1970 * 1e6).rounded())))
        put(procedure.patient.id)
        put(procedure.patient.firstName ?? "\u{0}")
        put(procedure.patient.timeZone)
        for route in procedure.patient.routes {
            put(route.channel)
            put(route.address)
            put(route.optedOut ? "1" : "0")
        }
        return Hex.encode(SHA256.hash(data: Data(canonical.utf8)))
    }

    /// The patient as stored: the JSON `Patient`'s `Codable` form reads back.
    static func encodePatient(_ patient: Patient) -> String {
        var json = JSONText()
        json.field("id", patient.id)
        if let firstName = patient.firstName { json.field("first_name", firstName) }
        json.field("time_zone", patient.timeZone)
        let routes = patient.routes.map { route in
            var object = JSONText()
            object.field("channel", route.channel)
            object.field("to", route.address)
            object.field("opted_out", route.optedOut)
            return object.finished()
        }
        json.raw("routes", "[" + routes.joined(separator: ",") + "]")
        return json.finished()
    }

    private static func apply(
        _ request: IntakeRequest,
        file: IntakeBatchFile,
        now: Date,
        plan: PlanFunction,
        db: Database,
        log: inout LogAppender,
        counts: inout IntakeCounts
    ) throws {
        switch request {
        case .procedure(let procedure):
            let hash = contentHash(procedure)
            if let existing = try String.fetchOne(
                db.cachedStatement(sql: "SELECT content_hash FROM procedure WHERE id = CAST(? AS TEXT)"),
                arguments: [exact(procedure.id)])
            {
                guard existing == hash else {
                    throw IntakeError(
                        procedureID: procedure.id,
                        problem: "already ingested with different details; use 'aftercare reschedule' to correct "
                            + "its time or zone, or cancel it"
                    )
                }
                counts.duplicates += 1
                return
            }
            let planned: [PlannedReminder]
            switch plan(procedure, now) {
            case .success(let reminders): planned = reminders
            case .failure(var error):
                error.procedureID = procedure.id
                throw error
            }
            var procedureRow = FastInsert(
                try db.cachedStatement(
                    sql: """
                        INSERT INTO procedure (id, protocol_id, performed_at, patient_id, patient_json, content_hash,
                            status, ingested_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?)
                        """
                ), in: db)
            procedureRow.bind(procedure.id)
            procedureRow.bind(procedure.protocolID)
            procedureRow.bind(procedure.performedAt.timeIntervalSince1970)
            procedureRow.bind(procedure.patient.id)
            procedureRow.bind(encodePatient(procedure.patient))
            procedureRow.bind(hash)
            procedureRow.bind(now.timeIntervalSince1970)
            procedureRow.bind(now.timeIntervalSince1970)
            try procedureRow.run()
            let insert = try db.cachedStatement(
                sql: """
                    INSERT INTO reminder (procedure_id, step_id, nominal_at, due_at, expires_at, state, last_error,
                        updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """
            )
            var expired = 0
            var row = FastInsert(insert, in: db)
            for reminder in planned {
                row.bind(procedure.id)
                row.bind(reminder.stepID)
                row.bind(reminder.nominalAt.timeIntervalSince1970)
                row.bind(reminder.dueAt.timeIntervalSince1970)
                row.bind(reminder.expiresAt.timeIntervalSince1970)
                row.bind(reminder.state.rawValue)
                row.bind(reminder.state == .expired ? reminder.note : nil)
                row.bind(now.timeIntervalSince1970)
                try row.run()
                if reminder.state == .expired { expired += 1 }
            }
            try log.append(
                LogEntry(
                    at: now, event: .ingested, procedureID: procedure.id, patientID: procedure.patient.id,
                    actor: file.actor,
                    detail: "\(file.name): protocol \(procedure.protocolID), \(planned.count) reminder(s) planned"
                        + (expired > 0 ? ", \(expired) already past their window" : "")
                )
            )
            for reminder in planned where reminder.state == .expired {
                try log.append(
                    LogEntry(
                        at: now, event: .expired, procedureID: procedure.id, patientID: procedure.patient.id,
                        stepID: reminder.stepID, detail: reminder.note
                    )
                )
            }
            counts.procedures += 1
            counts.reminders += planned.count
            counts.expired += expired

        case .cancel(let procedureID, let reason):
            let procedure = try loadProcedure(procedureID, db: db)
            let pending = try Data.fetchAll(
                db,
                sql: """
                    SELECT CAST(step_id AS BLOB) FROM reminder
                    WHERE procedure_id = CAST(? AS TEXT) AND state IN ('scheduled', 'claimed')
                    """,
                arguments: [exact(procedureID)]
            ).map { String(decoding: $0, as: UTF8.self) }
            try db.execute(
                sql: "UPDATE procedure SET status = 'cancelled', updated_at = ? WHERE id = CAST(? AS TEXT)",
                arguments: [now.timeIntervalSince1970, exact(procedureID)]
            )
            try db.execute(
                sql: """
                    UPDATE reminder SET state = 'cancelled', lease_token = NULL, lease_expires_at = NULL,
                        last_error = CAST(? AS TEXT), updated_at = ?
                    WHERE procedure_id = CAST(? AS TEXT) AND state IN ('scheduled', 'claimed')
                    """,
                arguments: [
                    reason.map { exact("cancelled: \($0)") } ?? exact("cancelled"), now.timeIntervalSince1970,
                    exact(procedureID),
                ]
            )
            for step in pending {
                try log.append(
                    LogEntry(
                        at: now, event: .cancelled, procedureID: procedureID, patientID: procedure.patient.id,
                        stepID: step, actor: file.actor, detail: reason
                    )
                )
            }
            counts.cancelled += pending.count

        case .reschedule(let procedureID, let performedAt, let timeZone):
            var procedure = try loadProcedure(procedureID, db: db)
            guard try String.fetchOne(
                db, sql: "SELECT status FROM procedure WHERE id = CAST(? AS TEXT)", arguments: [exact(procedureID)])
                == "active"
            else {
                throw IntakeError(procedureID: procedureID, problem: "the procedure is cancelled; nothing to re-plan")
            }
            if let performedAt { procedure.performedAt = performedAt }
            if let timeZone { procedure.patient.timeZone = timeZone }
            let planned: [PlannedReminder]
            switch plan(procedure, now) {
            case .success(let reminders): planned = reminders
            case .failure(var error):
                error.procedureID = procedureID
                throw error
            }
            try db.execute(
                sql: """
                    UPDATE procedure SET performed_at = ?, patient_json = CAST(? AS TEXT), content_hash = ?,
                        updated_at = ?
                    WHERE id = CAST(? AS TEXT)
                    """,
                arguments: [
                    procedure.performedAt.timeIntervalSince1970, exact(encodePatient(procedure.patient)),
                    contentHash(procedure), now.timeIntervalSince1970, exact(procedureID),
                ]
            )
            let current = try Row.fetchAll(
                db,
                sql: """
                    SELECT CAST(step_id AS BLOB) AS step_id, due_at FROM reminder
                    WHERE procedure_id = CAST(? AS TEXT) AND state = 'scheduled'
                    """,
                arguments: [exact(procedureID)]
            )
            let zone = procedure.patientTimeZone
            for row in current {
                let step = row.text("step_id") ?? ""
                guard let reminder = planned.first(where: { $0.stepID == step }) else { continue }
                let oldDue = Date(timeIntervalSince1970: row["due_at"])
                try db.execute(
                    sql: """
                        UPDATE reminder SET nominal_at = ?, due_at = ?, expires_at = ?, state = ?,
                            last_error = CAST(? AS TEXT), updated_at = ?
                        WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT) AND state = 'scheduled'
                        """,
                    arguments: [
                        reminder.nominalAt.timeIntervalSince1970, reminder.dueAt.timeIntervalSince1970,
                        reminder.expiresAt.timeIntervalSince1970, reminder.state.rawValue,
                        reminder.state == .expired ? reminder.note.map(exact) : nil, now.timeIntervalSince1970,
                        exact(procedureID), exact(step),
                    ]
                )
                try log.append(
                    LogEntry(
                        at: now, event: reminder.state == .expired ? .expired : .replanned, procedureID: procedureID,
                        patientID: procedure.patient.id, stepID: step, actor: file.actor,
                        detail: "due \(Timestamp.format(oldDue, in: zone)) → \(Timestamp.format(reminder.dueAt, in: zone))"
                            + (reminder.note.map { "; \($0)" } ?? "")
                    )
                )
                counts.replanned += 1
            }

        case .replay(let scope):
            var sql = """
                SELECT CAST(r.procedure_id AS BLOB) AS procedure_id, CAST(r.step_id AS BLOB) AS step_id, r.expires_at,
                    CAST(p.patient_id AS BLOB) AS patient_id FROM reminder r
                JOIN procedure p ON p.id = r.procedure_id WHERE r.state = 'dead'
                """
            var arguments: StatementArguments = []
            switch scope {
            case .reminder(let id):
                // Step ids hold no dot; procedure ids may: the step is what follows the last dot.
                let dot = id.lastIndex(of: ".")
                let procedureID = dot.map { String(id[..<$0]) } ?? id
                let stepID = dot.map { String(id[id.index(after: $0)...]) } ?? ""
                sql += " AND r.procedure_id = CAST(? AS TEXT) AND r.step_id = CAST(? AS TEXT)"
                arguments = [exact(procedureID), exact(stepID)]
                let state = try String.fetchOne(
                    db,
                    sql: """
                        SELECT state FROM reminder WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)
                        """,
                    arguments: arguments)
                guard let state else {
                    throw IntakeError(procedureID: procedureID, problem: "no reminder \(id)")
                }
                guard state == "dead" else {
                    throw IntakeError(procedureID: procedureID, problem: "reminder \(id) is \(state), not dead")
                }
            case .procedure(let id):
                _ = try loadProcedure(id, db: db)
                sql += " AND r.procedure_id = CAST(? AS TEXT)"
                arguments = [exact(id)]
            case .deadSince(let date):
                sql += " AND r.updated_at >= ?"
                arguments = [date.timeIntervalSince1970]
            }
            for row in try Row.fetchAll(db, sql: sql, arguments: arguments) {
                let procedureID = row.text("procedure_id") ?? ""
                let step = row.text("step_id") ?? ""
                let expiresAt = Date(timeIntervalSince1970: row["expires_at"])
                guard expiresAt > now else {
                    try log.append(
                        LogEntry(
                            at: now, event: .expired, procedureID: procedureID, patientID: row.text("patient_id"),
                            stepID: step, actor: file.actor, detail: "replay asked after its window closed"
                        )
                    )
                    try db.execute(
                        sql: """
                            UPDATE reminder SET state = 'expired', last_error = 'window closed before replay',
                                updated_at = ? WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)
                            """,
                        arguments: [now.timeIntervalSince1970, exact(procedureID), exact(step)]
                    )
                    continue
                }
                try db.execute(
                    sql: """
                        UPDATE reminder SET state = 'scheduled', due_at = ?, attempts = 0, last_error = NULL,
                            updated_at = ? WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)
                        """,
                    arguments: [now.timeIntervalSince1970, now.timeIntervalSince1970, exact(procedureID), exact(step)]
                )
                try log.append(
                    LogEntry(
                        at: now, event: .replayed, procedureID: procedureID, patientID: row.text("patient_id"),
                        stepID: step, actor: file.actor, detail: "re-queued by \(file.actor)"
                    )
                )
                counts.replayed += 1
            }
        }
    }

    static func loadProcedure(_ id: String, db: Database) throws -> Procedure {
        guard
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT CAST(protocol_id AS BLOB) AS protocol_id, performed_at,
                        CAST(patient_json AS BLOB) AS patient_json
                    FROM procedure WHERE id = CAST(? AS TEXT)
                    """,
                arguments: [exact(id)])
        else {
            throw IntakeError(procedureID: id, problem: "no such procedure")
        }
        return try decodeProcedure(id: id, row: row)
    }

    static func decodeProcedure(id: String, row: Row) throws -> Procedure {
        let patient = try JSONDecoder().decode(Patient.self, from: row["patient_json"] as Data)
        return Procedure(
            id: id, protocolID: row.text("protocol_id") ?? "",
            performedAt: Date(timeIntervalSince1970: row["performed_at"]),
            patient: patient
        )
    }
}

/// Text bound as its exact bytes, for SQL that casts it back with `CAST(? AS TEXT)`: GRDB binds a
/// `String` as a C string, which would end an id at its first NUL and match a different row.
func exact(_ text: String) -> Data { Data(text.utf8) }

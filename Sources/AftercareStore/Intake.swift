import AftercareCore
import Crypto
import Foundation
import GRDB
import GRDBSQLite

/// One intake file, parsed, as the daemon hands it to the store.
public struct IntakeBatchFile: Sendable {
    /// The file's name in the spool (for log rows and messages).
    public var name: String
    public var requests: [IntakeRequest] {
        didSet { prepared = Self.prepare(requests) }
    }
    /// Who dropped the file (the Unix owner), recorded on the log rows of staff requests.
    public var actor: String
    /// For each procedure or booking, what is stored of it that needs no database: worked out where
    /// the file is built (the daemon builds it where it parses), so the writer's transaction, which
    /// every intake waits on, need not.
    var prepared: [PreparedProcedure?]

    public init(name: String, requests: [IntakeRequest], actor: String) {
        self.name = name
        self.requests = requests
        self.actor = actor
        prepared = Self.prepare(requests)
    }

    struct PreparedProcedure: Sendable {
        var hash: String
        var patientJSON: String
    }

    static func prepare(_ requests: [IntakeRequest]) -> [PreparedProcedure?] {
        requests.map { request in
            switch request {
            case .procedure(let procedure, _), .book(let procedure):
                return PreparedProcedure(
                    hash: ReminderStore.contentHash(procedure),
                    patientJSON: ReminderStore.encodePatient(procedure.patient))
            default:
                return nil
            }
        }
    }
}

/// What an intake file changed, counted for its one-line summary (both engines).
struct IntakeCounts {
    var procedures = 0
    var duplicates = 0
    var reminders = 0
    var expired = 0
    var cancelled = 0
    var replanned = 0
    var replayed = 0
    var booked = 0
    var moved = 0
    var performed = 0
    var updated = 0

    var summary: String {
        var parts: [String] = []
        if procedures > 0 { parts.append("\(procedures) procedure(s) planned: \(reminders) reminder(s), \(expired) expired") }
        if duplicates > 0 { parts.append("\(duplicates) already known") }
        if cancelled > 0 { parts.append("\(cancelled) reminder(s) cancelled") }
        if replanned > 0 { parts.append("\(replanned) reminder(s) re-planned") }
        if replayed > 0 { parts.append("\(replayed) reminder(s) replayed") }
        if booked > 0 { parts.append("\(booked) appointment(s) booked") }
        if moved > 0 { parts.append("\(moved) appointment(s) moved") }
        if performed > 0 { parts.append("\(performed) appointment(s) performed: \(reminders) reminder(s) planned") }
        if updated > 0 { parts.append("\(updated) procedure(s) updated") }
        return parts.isEmpty ? "nothing to change" : parts.joined(separator: "; ")
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
                        for (request, prepared) in zip(file.requests, file.prepared) {
                            try Self.apply(
                                request, prepared: prepared, file: file, now: now, plan: plan, db: db, log: &log,
                                counts: &counts)
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
        prepared: IntakeBatchFile.PreparedProcedure?,
        file: IntakeBatchFile,
        now: Date,
        plan: PlanFunction,
        db: Database,
        log: inout LogAppender,
        counts: inout IntakeCounts
    ) throws {
        switch request {
        case .procedure(let procedure, let force):
            let hash = prepared?.hash ?? contentHash(procedure)
            if let existing = try existingProcedure(procedure.id, db: db) {
                try IntakeRules.checkKnownProcedure(
                    status: existing.status, storedHash: existing.hash, id: procedure.id, hash: hash)
                counts.duplicates += 1
                return
            }
            let planned = try planOrThrow(procedure, now: now, plan: plan)
            if let problem = PerformedTime.problem(
                performedAt: procedure.performedAt, now: now, plan: planned, force: force)
            {
                throw IntakeError(procedureID: procedure.id, problem: problem)
            }
            try insertProcedure(
                procedure, hash: hash, patientJSON: prepared?.patientJSON, status: "active", plannedAt: nil, now: now,
                db: db)
            let expired = try insertPlan(procedure, planned, now: now, db: db, log: &log)
            try log.append(
                LogEntry(
                    at: now, event: .ingested, procedureID: procedure.id, patientID: procedure.patient.id,
                    actor: file.actor,
                    detail: "\(file.name): protocol \(procedure.protocolID), \(planned.count) reminder(s) planned"
                        + (expired > 0 ? ", \(expired) already past their window" : "")
                        + (force && expired == planned.count ? " (forced)" : "")
                )
            )
            counts.procedures += 1
            counts.reminders += planned.count
            counts.expired += expired

        case .book(let procedure):
            let hash = prepared?.hash ?? contentHash(procedure)
            if let existing = try existingProcedure(procedure.id, db: db) {
                try IntakeRules.checkKnownBooking(
                    status: existing.status, storedHash: existing.hash, id: procedure.id, hash: hash)
                counts.duplicates += 1
                return
            }
            // Checked now so a booking that could never be planned is refused while staff are there.
            _ = try planOrThrow(procedure, now: now, plan: plan)
            try insertProcedure(
                procedure, hash: hash, patientJSON: prepared?.patientJSON, status: "booked",
                plannedAt: procedure.performedAt, now: now, db: db)
            try log.append(
                LogEntry(
                    at: now, event: .booked, procedureID: procedure.id, patientID: procedure.patient.id,
                    actor: file.actor,
                    detail: "\(file.name): protocol \(procedure.protocolID), planned for "
                        + Timestamp.format(procedure.performedAt, in: procedure.patientTimeZone)
                )
            )
            counts.booked += 1

        case .move(let procedureID, let plannedAt, let timeZone):
            var procedure = try loadProcedure(procedureID, db: db)
            let status = try procedureStatus(procedureID, db: db)
            try IntakeRules.requireBooked(status, procedureID: procedureID)
            let oldZone = procedure.patientTimeZone
            let old = procedure.performedAt
            procedure.performedAt = plannedAt
            if let timeZone { procedure.patient.timeZone = timeZone }
            _ = try planOrThrow(procedure, now: now, plan: plan)
            try db.execute(
                sql: """
                    UPDATE procedure SET performed_at = ?, planned_at = ?, patient_json = CAST(? AS TEXT),
                        first_name = CAST(? AS TEXT), time_zone = CAST(? AS TEXT), routes = ?, updated_at = ?
                    WHERE id = CAST(? AS TEXT)
                    """,
                arguments: [
                    plannedAt.timeIntervalSince1970, plannedAt.timeIntervalSince1970,
                    exact(encodePatient(procedure.patient)), procedure.patient.firstName.map(exact),
                    exact(procedure.patient.timeZone), PatientColumns.routes(procedure.patient.routes),
                    now.timeIntervalSince1970, exact(procedureID),
                ]
            )
            try log.append(
                LogEntry(
                    at: now, event: .moved, procedureID: procedureID, patientID: procedure.patient.id,
                    actor: file.actor,
                    detail: "planned \(Timestamp.format(old, in: oldZone)) → "
                        + Timestamp.format(plannedAt, in: procedure.patientTimeZone)
                )
            )
            counts.moved += 1

        case .performed(let procedureID, let at, let force):
            var procedure = try loadProcedure(procedureID, db: db)
            let status = try procedureStatus(procedureID, db: db)
            if status == "active",
                try Double.fetchOne(
                    db, sql: "SELECT planned_at FROM procedure WHERE id = CAST(? AS TEXT)",
                    arguments: [exact(procedureID)]
                ) != nil
            {
                // Said twice (a resent file): the first confirmation stands.
                counts.duplicates += 1
                return
            }
            try IntakeRules.requirePerformable(status, procedureID: procedureID)
            procedure.performedAt = at ?? now
            let planned = try planOrThrow(procedure, now: now, plan: plan)
            if let problem = PerformedTime.problem(
                performedAt: procedure.performedAt, now: now, plan: planned, force: force)
            {
                throw IntakeError(procedureID: procedureID, problem: problem)
            }
            try db.execute(
                sql: """
                    UPDATE procedure SET performed_at = ?, status = 'active', updated_at = ? WHERE id = CAST(? AS TEXT)
                    """,
                arguments: [procedure.performedAt.timeIntervalSince1970, now.timeIntervalSince1970, exact(procedureID)]
            )
            try log.append(
                LogEntry(
                    at: now, event: .performed, procedureID: procedureID, patientID: procedure.patient.id,
                    actor: file.actor,
                    detail: "performed \(Timestamp.format(procedure.performedAt, in: procedure.patientTimeZone)); "
                        + "\(planned.count) reminder(s) planned"
                        + (status == "not_performed" ? " (confirmed after it was closed as not performed)" : "")
                )
            )
            let expired = try insertPlan(procedure, planned, now: now, db: db, log: &log)
            counts.performed += 1
            counts.reminders += planned.count
            counts.expired += expired

        case .update(let update):
            try applyUpdate(update, actor: file.actor, now: now, plan: plan, db: db, log: &log, counts: &counts)

        case .cancel(let procedureID, let reason):
            let procedure = try loadProcedure(procedureID, db: db)
            if try procedureStatus(procedureID, db: db) == "booked" {
                // An appointment has no reminders yet: its one row says it was called off.
                try log.append(
                    LogEntry(
                        at: now, event: .cancelled, procedureID: procedureID, patientID: procedure.patient.id,
                        actor: file.actor, detail: "appointment cancelled" + (reason.map { ": \($0)" } ?? "")
                    )
                )
                counts.cancelled += 1
            }
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
                throw IntakeError(
                    procedureID: procedureID,
                    problem: try procedureStatus(procedureID, db: db) == "booked"
                        ? "is a booked appointment; use 'aftercare move' to change its planned time"
                        : "the procedure is \(try procedureStatus(procedureID, db: db)); nothing to re-plan")
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
                    UPDATE procedure SET performed_at = ?, patient_json = CAST(? AS TEXT), first_name = CAST(? AS TEXT),
                        time_zone = CAST(? AS TEXT), routes = ?, content_hash = ?, updated_at = ?
                    WHERE id = CAST(? AS TEXT)
                    """,
                arguments: [
                    procedure.performedAt.timeIntervalSince1970, exact(encodePatient(procedure.patient)),
                    procedure.patient.firstName.map(exact), exact(procedure.patient.timeZone),
                    PatientColumns.routes(procedure.patient.routes), contentHash(procedure), now.timeIntervalSince1970,
                    exact(procedureID),
                ]
            )
            // Never-tried expired steps are re-planned too: they may have expired only because of the
            // old time or zone's quiet hours, and their notes quote that zone.
            let current = try Row.fetchAll(
                db,
                sql: """
                    SELECT CAST(step_id AS BLOB) AS step_id, due_at, state FROM reminder
                    WHERE procedure_id = CAST(? AS TEXT)
                        AND (state = 'scheduled' OR (state = 'expired' AND attempts = 0))
                    """,
                arguments: [exact(procedureID)]
            )
            let zone = procedure.patientTimeZone
            for row in current {
                let step = row.text("step_id") ?? ""
                guard let reminder = planned.first(where: { $0.stepID == step }) else { continue }
                let oldDue = Date(timeIntervalSince1970: row["due_at"])
                let wasExpired = (row["state"] as String) == ReminderState.expired.rawValue
                if wasExpired && reminder.state == .expired {
                    // Still expired under the new plan: only its note changes, to the new zone's words.
                    try db.execute(
                        sql: """
                            UPDATE reminder SET nominal_at = ?, due_at = ?, expires_at = ?,
                                last_error = CAST(? AS TEXT), updated_at = ?
                            WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT) AND state = 'expired'
                            """,
                        arguments: [
                            reminder.nominalAt.timeIntervalSince1970, reminder.dueAt.timeIntervalSince1970,
                            reminder.expiresAt.timeIntervalSince1970, reminder.note.map(exact),
                            now.timeIntervalSince1970, exact(procedureID), exact(step),
                        ]
                    )
                    continue
                }
                try db.execute(
                    sql: """
                        UPDATE reminder SET nominal_at = ?, due_at = ?, expires_at = ?, state = ?,
                            last_error = CAST(? AS TEXT), updated_at = ?
                        WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)
                            AND state IN ('scheduled', 'expired')
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
                        detail: (wasExpired ? "expired step re-planned: " : "")
                            + "due \(Timestamp.format(oldDue, in: zone)) → "
                            + Timestamp.format(reminder.dueAt, in: zone)
                            + (reminder.note.map { "; \($0)" } ?? "")
                    )
                )
                counts.replanned += 1
            }

        case .replay(let scope):
            var sql = """
                SELECT CAST(r.procedure_id AS BLOB) AS procedure_id, CAST(r.step_id AS BLOB) AS step_id, r.expires_at,
                    CAST(p.patient_id AS BLOB) AS patient_id FROM reminder r
                JOIN procedure p ON p.id = r.procedure_id
                WHERE (r.state = 'dead' OR (r.state = 'expired' AND r.expires_at > ?))
                """
            var arguments: StatementArguments = [now.timeIntervalSince1970]
            switch scope {
            case .reminder(let id):
                // Step ids hold no dot; procedure ids may: the step is what follows the last dot.
                let dot = id.lastIndex(of: ".")
                let procedureID = dot.map { String(id[..<$0]) } ?? id
                let stepID = dot.map { String(id[id.index(after: $0)...]) } ?? ""
                sql += " AND r.procedure_id = CAST(? AS TEXT) AND r.step_id = CAST(? AS TEXT)"
                let key: StatementArguments = [exact(procedureID), exact(stepID)]
                arguments += key
                let found = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT state, expires_at FROM reminder
                        WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)
                        """,
                    arguments: key)
                guard let found else {
                    throw IntakeError(procedureID: procedureID, problem: "no reminder \(id)")
                }
                let state: String = found["state"]
                let open = Date(timeIntervalSince1970: found["expires_at"]) > now
                guard state == "dead" || (state == "expired" && open) else {
                    throw IntakeError(
                        procedureID: procedureID,
                        problem: state == "expired"
                            ? "reminder \(id) is expired and its window has closed"
                            : "reminder \(id) is \(state), not dead or expired")
                }
            case .procedure(let id):
                _ = try loadProcedure(id, db: db)
                sql += " AND r.procedure_id = CAST(? AS TEXT)"
                arguments += [exact(id)]
            case .deadSince(let date):
                sql += " AND r.updated_at >= ?"
                arguments += [date.timeIntervalSince1970]
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
                            failed_routes = NULL, updated_at = ?
                        WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)
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

    /// Looked up for every procedure ingested, so read through the SQLite C API directly (as
    /// ``FastInsert`` writes): GRDB's rows and boxed arguments cost more than the look-up itself.
    private static func existingProcedure(_ id: String, db: Database) throws -> (hash: String, status: String)? {
        let statement = try db.cachedStatement(
            sql: "SELECT content_hash, status FROM procedure WHERE id = CAST(? AS TEXT)"
        ).sqliteStatement
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        var key = id
        // The id's exact bytes, as `exact` binds them: a NUL inside it is kept.
        var code = key.withUTF8 { bytes in
            sqlite3_bind_blob(
                statement, 1, UnsafeRawPointer(bytes.baseAddress ?? UnsafePointer(bitPattern: 1)!),
                Int32(clamping: bytes.count), unsafeBitCast(-1, to: sqlite3_destructor_type.self))
        }
        if code == SQLITE_OK { code = sqlite3_step(statement) }
        switch code {
        case SQLITE_ROW:
            func text(_ column: Int32) -> String {
                guard let bytes = sqlite3_column_text(statement, column) else { return "" }
                let count = Int(sqlite3_column_bytes(statement, column))
                return String(decoding: UnsafeBufferPointer(start: bytes, count: count), as: UTF8.self)
            }
            return (hash: text(0), status: text(1))
        case SQLITE_DONE:
            return nil
        default:
            throw DatabaseError(
                resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
        }
    }

    private static func procedureStatus(_ id: String, db: Database) throws -> String {
        try String.fetchOne(
            db, sql: "SELECT status FROM procedure WHERE id = CAST(? AS TEXT)", arguments: [exact(id)]) ?? "unknown"
    }

    static func planOrThrow(_ procedure: Procedure, now: Date, plan: PlanFunction) throws -> [PlannedReminder] {
        switch plan(procedure, now) {
        case .success(let reminders): return reminders
        case .failure(var error):
            error.procedureID = procedure.id
            throw error
        }
    }

    private static func insertProcedure(
        _ procedure: Procedure, hash: String, patientJSON: String?, status: String, plannedAt: Date?, now: Date,
        db: Database
    ) throws {
        var procedureRow = FastInsert(
            try db.cachedStatement(
                sql: """
                    INSERT INTO procedure (id, protocol_id, performed_at, patient_id, patient_json, first_name,
                        time_zone, routes, content_hash, status, ingested_at, updated_at, planned_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """
            ), in: db)
        procedureRow.bind(procedure.id)
        procedureRow.bind(procedure.protocolID)
        procedureRow.bind(procedure.performedAt.timeIntervalSince1970)
        procedureRow.bind(procedure.patient.id)
        procedureRow.bind(patientJSON ?? encodePatient(procedure.patient))
        procedureRow.bind(procedure.patient.firstName)
        procedureRow.bind(procedure.patient.timeZone)
        procedureRow.bind(PatientColumns.routes(procedure.patient.routes))
        procedureRow.bind(hash)
        procedureRow.bind(status)
        procedureRow.bind(now.timeIntervalSince1970)
        procedureRow.bind(now.timeIntervalSince1970)
        procedureRow.bind(plannedAt?.timeIntervalSince1970)
        try procedureRow.run()
    }

    /// Inserts a procedure's planned reminders, logging the ones planned expired. Returns how many.
    private static func insertPlan(
        _ procedure: Procedure, _ planned: [PlannedReminder], now: Date, db: Database, log: inout LogAppender
    ) throws -> Int {
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
        for reminder in planned where reminder.state == .expired {
            try log.append(
                LogEntry(
                    at: now, event: .expired, procedureID: procedure.id, patientID: procedure.patient.id,
                    stepID: reminder.stepID, detail: reminder.note
                )
            )
        }
        return expired
    }

    /// Applies a contact correction to the patient's open (booked or active) procedures, or to the
    /// one named. The procedure's content hash is left as ingested, so a resent original is still
    /// recognised as already known. One `updated` row per procedure says who changed what, with
    /// addresses masked.
    private static func applyUpdate(
        _ update: PatientUpdate, actor: String, now: Date, plan: PlanFunction, db: Database,
        log: inout LogAppender, counts: inout IntakeCounts
    ) throws {
        var sql = """
            SELECT CAST(id AS BLOB) AS id, CAST(protocol_id AS BLOB) AS protocol_id, performed_at,
                CAST(patient_json AS BLOB) AS patient_json, status FROM procedure
            WHERE patient_id = CAST(? AS TEXT)
            """
        var arguments: StatementArguments = [exact(update.patientID)]
        if let id = update.procedureID {
            sql += " AND id = CAST(? AS TEXT)"
            arguments += [exact(id)]
        } else {
            sql += " AND status IN ('booked', 'active')"
        }
        let rows = try Row.fetchAll(db, sql: sql, arguments: arguments)
        guard !rows.isEmpty else {
            throw IntakeError(
                procedureID: update.procedureID,
                problem: update.procedureID == nil
                    ? "patient \(update.patientID) has no open procedure"
                    : "no such procedure for patient \(update.patientID)")
        }
        for row in rows {
            let id = row.text("id") ?? ""
            let procedure = try decodeProcedure(id: id, row: row)
            let status: String = row["status"]
            if update.procedureID != nil, status != "booked", status != "active" {
                throw IntakeError(procedureID: id, problem: "is \(status); nothing to update")
            }
            let patient = update.applied(to: procedure.patient)
            for channel in update.optOut + update.optIn
            where !patient.routes.contains(where: { $0.channel == channel }) {
                throw IntakeError(procedureID: id, problem: "patient \(update.patientID) has no '\(channel)' route")
            }
            let changes = describeChanges(from: procedure.patient, to: patient)
            guard !changes.isEmpty else { continue }
            var corrected = procedure
            corrected.patient = patient
            // Refused like a new procedure whose routes no configured channel can take.
            _ = try planOrThrow(corrected, now: now, plan: plan)
            try db.execute(
                sql: """
                    UPDATE procedure SET patient_json = CAST(? AS TEXT), first_name = CAST(? AS TEXT),
                        time_zone = CAST(? AS TEXT), routes = ?, updated_at = ?
                    WHERE id = CAST(? AS TEXT)
                    """,
                arguments: [
                    exact(encodePatient(patient)), patient.firstName.map(exact), exact(patient.timeZone),
                    PatientColumns.routes(patient.routes), now.timeIntervalSince1970, exact(id),
                ]
            )
            try log.append(
                LogEntry(
                    at: now, event: .updated, procedureID: id, patientID: update.patientID, actor: actor,
                    detail: changes.joined(separator: "; ")
                )
            )
            counts.updated += 1
        }
    }

    /// What changed between two versions of a patient, addresses masked.
    static func describeChanges(from old: Patient, to new: Patient) -> [String] {
        func routes(_ patient: Patient) -> String {
            patient.routes.map { "\($0.channel) \(ContactMask.mask($0.address))\($0.optedOut ? " (opted out)" : "")" }
                .joined(separator: ", ")
        }
        var changes: [String] = []
        if old.firstName != new.firstName { changes.append("first name changed") }
        let oldRoutes = old.routes.map { ContactRoute(channel: $0.channel, address: $0.address) }
        let newRoutes = new.routes.map { ContactRoute(channel: $0.channel, address: $0.address) }
        if oldRoutes != newRoutes {
            changes.append("routes \(routes(old)) → \(routes(new))")
        } else {
            for (before, after) in zip(old.routes, new.routes) where before.optedOut != after.optedOut {
                changes.append("\(after.optedOut ? "opted out of" : "opted back in to") \(after.channel)")
            }
        }
        return changes
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

/// The refusals both engines' intake make, word for word.
enum IntakeRules {
    /// A procedure whose id is already stored: the same one again is known; a booking or a
    /// different one is refused.
    static func checkKnownProcedure(status: String, storedHash: String, id: String, hash: String) throws {
        if status == "booked" || status == "not_performed" {
            throw IntakeError(
                procedureID: id,
                problem: "is a booked appointment; mark it performed with 'aftercare performed' (kind \"performed\")")
        }
        guard storedHash == hash else {
            throw IntakeError(
                procedureID: id,
                problem: "already ingested with different details; use 'aftercare reschedule' to correct "
                    + "its time or zone, or cancel it")
        }
    }

    /// A booking for an id already stored: the same booking again (resent, even after it was moved or
    /// performed) is known.
    static func checkKnownBooking(status: String, storedHash: String, id: String, hash: String) throws {
        guard storedHash == hash else {
            throw IntakeError(
                procedureID: id,
                problem: status == "booked"
                    ? "already booked with different details; use 'aftercare move' to change its time, or cancel it"
                    : "already known (\(status)); book it under a new procedure id")
        }
    }

    /// Only a booked appointment is moved.
    static func requireBooked(_ status: String, procedureID: String) throws {
        guard status == "booked" else {
            throw IntakeError(
                procedureID: procedureID,
                problem: "is \(status), not a booked appointment"
                    + (status == "active" ? "; use 'aftercare reschedule' to correct a performed time" : ""))
        }
    }

    /// Only a booked appointment (or one closed as not performed) is marked performed.
    static func requirePerformable(_ status: String, procedureID: String) throws {
        guard status == "booked" || status == "not_performed" else {
            throw IntakeError(procedureID: procedureID, problem: "is \(status), not a booked appointment")
        }
    }
}

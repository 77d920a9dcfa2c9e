import AftercareCore
import Foundation
import PostgresNIO

extension PostgresReminderStore {
    /// Applies intake files as ``ReminderStore/ingest(_:now:plan:)`` does, with the same outcomes,
    /// state changes and log rows: one transaction, each file all-or-nothing.
    ///
    /// Files of new procedures and bookings only (nearly all of them) are decided in memory and
    /// their rows written together, a few statements for thousands of files; any other file first
    /// writes what is pending, then runs on its own inside a savepoint.
    ///
    /// Several hosts may ingest into the same database at once, each from its own spool. A procedure
    /// or booking is inserted with `ON CONFLICT (id) DO NOTHING`: when another host got there first
    /// (even in a transaction still open, which the insert waits for) it is treated as already
    /// known, exactly as if it had been there before, and never aborts the whole transaction.
    public func ingest(_ files: [IntakeBatchFile], now: Date, plan: @escaping PlanFunction) async throws
        -> [IntakeFileOutcome]
    {
        try await transaction { connection in
            var intake = PostgresIntake(connection: connection, now: now, plan: plan)
            try await intake.lookUpKnown(files)
            for file in files { try await intake.take(file) }
            try await intake.flush()
            if intake.madeDue { try await PostgresLog.notifyQueue(on: connection) }
            // Last: it takes the chain head's lock, held until the commit.
            try await PostgresLog.append(intake.log, on: connection)
            return intake.outcomes
        }
    }
}

/// One call of ``PostgresReminderStore/ingest(_:now:plan:)``: its connection, the log rows it has
/// collected so far, and what it knows of the procedures the files name.
struct PostgresIntake {
    let connection: PostgresConnection
    let now: Date
    let plan: PlanFunction
    /// The log rows of the files applied so far, in order; appended once, at the end.
    private(set) var log: [LogEntry] = []
    /// One per file taken so far, in order.
    private(set) var outcomes: [IntakeFileOutcome] = []
    /// Rows decided but not yet written, and the files they came from (see ``flush()``).
    private var pending = PendingRows()
    /// Whether an applied file made something due (new, replayed or re-planned reminders).
    private(set) var madeDue = false
    private var known = KnownProcedures()
    /// Set by the file being applied; kept only if the file is.
    private var fileMadeDue = false

    init(connection: PostgresConnection, now: Date, plan: @escaping PlanFunction) {
        self.connection = connection
        self.now = now
        self.plan = plan
    }

    /// A stored procedure's fingerprint and status.
    struct Existing: Sendable {
        var hash: String
        var status: String
    }

    /// The procedures the batch's procedure and booking requests name, looked up in one query.
    mutating func lookUpKnown(_ files: [IntakeBatchFile]) async throws {
        var ids: Set<String> = []
        for file in files {
            for request in file.requests {
                switch request {
                case .procedure(let procedure, _), .book(let procedure):
                    // An id PostgreSQL cannot hold is refused with its file; it is never looked up.
                    if !PostgresIntake.holdsNUL(procedure.id) { ids.insert(procedure.id) }
                default:
                    continue
                }
            }
        }
        guard !ids.isEmpty else { return }
        let rows = try await connection.rows(
            "SELECT id, content_hash, status FROM procedure WHERE id = ANY(\(Array(ids)))"
        ) { row in try row.decode((String, String, String).self) }
        var found: [String: Existing] = [:]
        for (id, hash, status) in rows { found[id] = Existing(hash: hash, status: status) }
        known.load(ids: ids, found: found)
    }

    /// Takes the next file: decided in memory if it only adds procedures and bookings, else applied
    /// on its own once everything before it is written.
    mutating func take(_ file: IntakeBatchFile) async throws {
        if file.requests.allSatisfy(\.isNewProcedure) {
            outcomes.append(try await decide(file))
        } else {
            try await flush()
            outcomes.append(try await apply(file))
        }
    }

    /// Decides a file of new procedures and bookings without writing: its rows join `pending`. A
    /// refused file leaves nothing pending and only its `rejected` row.
    private mutating func decide(_ file: IntakeBatchFile) async throws -> IntakeFileOutcome {
        if pending.files.isEmpty {
            pending.start = (log: log.count, outcomes: outcomes.count, madeDue: madeDue)
        }
        let logStart = log.count
        let rowsStart = (pending.procedures.count, pending.reminders.count)
        fileMadeDue = false
        do {
            try Self.checkStorable(file)
            var counts = IntakeCounts()
            for (request, prepared) in zip(file.requests, file.prepared) {
                try Self.checkStorable(request)
                switch request {
                case .procedure(let procedure, let force):
                    let hash = prepared?.hash ?? ReminderStore.contentHash(procedure)
                    guard let planned = try await planNew(procedure, force: force, hash: hash, counts: &counts)
                    else { continue }
                    pending.add(
                        procedure, hash: hash, patientJSON: prepared?.patientJSON, status: "active", plannedAt: nil,
                        reminders: planned)
                    if planned.contains(where: { $0.state == .scheduled }) { fileMadeDue = true }
                    known.set(procedure.id, Existing(hash: hash, status: "active"))
                    logIngested(procedure, planned, force: force, file: file, counts: &counts)
                case .book(let procedure):
                    let hash = prepared?.hash ?? ReminderStore.contentHash(procedure)
                    guard try await checkNewBooking(procedure, hash: hash, counts: &counts) else { continue }
                    pending.add(
                        procedure, hash: hash, patientJSON: prepared?.patientJSON, status: "booked",
                        plannedAt: procedure.performedAt, reminders: [])
                    known.set(procedure.id, Existing(hash: hash, status: "booked"))
                    logBooked(procedure, file: file, counts: &counts)
                default:
                    preconditionFailure("only new procedures and bookings are decided in memory")
                }
            }
            known.keepFile()
            madeDue = madeDue || fileMadeDue
            pending.files.append(file)
            return .applied(summary: counts.summary)
        } catch let error as IntakeError {
            known.undoFile()
            pending.procedures.removeSubrange(rowsStart.0...)
            pending.reminders.removeSubrange(rowsStart.1...)
            pending.files.append(file)
            log.removeSubrange(logStart...)
            log.append(
                LogEntry(
                    at: now, event: .rejected, procedureID: error.procedureID, actor: PostgresLog.storable(file.actor),
                    detail: PostgresLog.storable("\(file.name): \(error)")))
            return .rejected(error)
        }
    }

    /// Writes the pending procedures and reminders: a multi-row `INSERT ... ON CONFLICT (id) DO
    /// NOTHING` for the procedures, then one for their reminders. If another host stored one of
    /// those ids meanwhile, this flush's rows are taken out again and its files are applied one by
    /// one instead, each finding what the other host stored.
    mutating func flush() async throws {
        defer { pending = PendingRows() }
        guard !pending.procedures.isEmpty else { return }
        var inserted: [String] = []
        for chunk in pending.procedures.chunks(of: 2000) {
            inserted += try await insertProcedures(chunk)
        }
        guard inserted.count == pending.procedures.count else {
            try await connection.run("DELETE FROM procedure WHERE id = ANY(\(inserted))")
            let files = pending.files
            log.removeSubrange(pending.start.log...)
            outcomes.removeSubrange(pending.start.outcomes...)
            madeDue = pending.start.madeDue
            // What this intake believed of those ids no longer holds; the database says.
            known = KnownProcedures()
            pending = PendingRows()
            for file in files { outcomes.append(try await apply(file)) }
            return
        }
        for chunk in pending.reminders.chunks(of: 5000) {
            var binds = PostgresBindings(capacity: 1 + chunk.count * 7)
            binds.append(now.seconds)
            var rows: [String] = []
            rows.reserveCapacity(chunk.count)
            for (procedureID, reminder) in chunk {
                let n = binds.count + 1
                rows.append(
                    "($\(n)::text, $\(n + 1)::text, $\(n + 2)::float8, $\(n + 3)::float8, $\(n + 4)::float8, "
                        + "$\(n + 5)::text, $\(n + 6)::text, $1)")
                binds.append(procedureID)
                binds.append(reminder.stepID)
                binds.append(reminder.nominalAt.seconds)
                binds.append(reminder.dueAt.seconds)
                binds.append(reminder.expiresAt.seconds)
                binds.append(reminder.state.rawValue)
                binds.append(reminder.state == .expired ? reminder.note : nil)
            }
            try await connection.run(
                PostgresQuery(
                    unsafeSQL: """
                        INSERT INTO reminder (procedure_id, step_id, nominal_at, due_at, expires_at, state, last_error,
                            updated_at)
                        VALUES \(rows.joined(separator: ", "))
                        """, binds: binds))
        }
    }

    /// Inserts procedures, skipping ids already taken. Returns the ids inserted.
    private func insertProcedures(_ rows: ArraySlice<PendingRows.Procedure>) async throws -> [String] {
        var binds = PostgresBindings(capacity: 1 + rows.count * 11)
        binds.append(now.seconds)
        var values: [String] = []
        values.reserveCapacity(rows.count)
        for row in rows {
            let n = binds.count + 1
            values.append(
                "($\(n), $\(n + 1), $\(n + 2)::float8, $\(n + 3), $\(n + 4), $\(n + 5)::text, $\(n + 6), $\(n + 7), "
                    + "$\(n + 8), $\(n + 9), $1, $1, $\(n + 10)::float8)")
            let procedure = row.procedure
            binds.append(procedure.id)
            binds.append(procedure.protocolID)
            binds.append(procedure.performedAt.seconds)
            binds.append(procedure.patient.id)
            binds.append(row.patientJSON ?? ReminderStore.encodePatient(procedure.patient))
            binds.append(procedure.patient.firstName)
            binds.append(procedure.patient.timeZone)
            try binds.append(PatientColumns.routes(procedure.patient.routes))
            binds.append(row.hash)
            binds.append(row.status)
            binds.append(row.plannedAt?.seconds)
        }
        return try await connection.rows(
            PostgresQuery(
                unsafeSQL: """
                    INSERT INTO procedure (id, protocol_id, performed_at, patient_id, patient_json, first_name,
                        time_zone, routes, content_hash, status, ingested_at, updated_at, planned_at)
                    VALUES \(values.joined(separator: ", "))
                    ON CONFLICT (id) DO NOTHING
                    RETURNING id
                    """, binds: binds)
        ) { row in try row.decode(String.self) }
    }

    /// Applies one file, all or nothing. A refused file leaves no change and only its `rejected` row.
    mutating func apply(_ file: IntakeBatchFile) async throws -> IntakeFileOutcome {
        let logStart = log.count
        fileMadeDue = false
        // A file that is one procedure or booking writes once, as its last step, and refuses nothing
        // after it: it needs no savepoint (the common case, one round trip fewer each way).
        let savepoint = !(file.requests.count == 1 && file.requests.allSatisfy(\.isNewProcedure))
        if savepoint { try await connection.run("SAVEPOINT f") }
        do {
            try Self.checkStorable(file)
            var counts = IntakeCounts()
            for (request, prepared) in zip(file.requests, file.prepared) {
                // Here, where SQLite would have refused the file for another reason first.
                try Self.checkStorable(request)
                try await apply(request, prepared: prepared, file: file, counts: &counts)
            }
            if savepoint { try await connection.run("RELEASE SAVEPOINT f") }
            known.keepFile()
            madeDue = madeDue || fileMadeDue
            return .applied(summary: counts.summary)
        } catch let error as IntakeError {
            if savepoint {
                try await connection.run("ROLLBACK TO SAVEPOINT f")
                try await connection.run("RELEASE SAVEPOINT f")
            }
            known.undoFile()
            log.removeSubrange(logStart...)
            log.append(
                LogEntry(
                    at: now, event: .rejected, procedureID: error.procedureID, actor: PostgresLog.storable(file.actor),
                    detail: PostgresLog.storable("\(file.name): \(error)")))
            return .rejected(error)
        }
    }

    // MARK: Requests

    /// Whether a booking is new (true) or the same booking again (false, counted as already known);
    /// a different one under its id is refused, and so is one that could never be planned (checked
    /// now, while staff are there).
    private mutating func checkNewBooking(
        _ procedure: Procedure, hash: String, counts: inout IntakeCounts
    ) async throws -> Bool {
        if let existing = try await existing(procedure.id) {
            try Self.checkKnownBooking(existing, id: procedure.id, hash: hash)
            counts.duplicates += 1
            return false
        }
        _ = try ReminderStore.planOrThrow(procedure, now: now, plan: plan)
        return true
    }

    /// A new procedure's plan, checked as SQLite's intake checks it; nil (counted as already known)
    /// when the same procedure is known, and an error when a different one is.
    private mutating func planNew(
        _ procedure: Procedure, force: Bool, hash: String, counts: inout IntakeCounts
    ) async throws -> [PlannedReminder]? {
        if let existing = try await existing(procedure.id) {
            try Self.checkKnownProcedure(existing, id: procedure.id, hash: hash)
            counts.duplicates += 1
            return nil
        }
        let planned = try ReminderStore.planOrThrow(procedure, now: now, plan: plan)
        if let problem = PerformedTime.problem(
            performedAt: procedure.performedAt, now: now, plan: planned, force: force)
        {
            throw IntakeError(procedureID: procedure.id, problem: problem)
        }
        try Self.checkStorable(planned, procedureID: procedure.id)
        return planned
    }

    private mutating func apply(
        _ request: IntakeRequest, prepared: IntakeBatchFile.PreparedProcedure?, file: IntakeBatchFile,
        counts: inout IntakeCounts
    ) async throws {
        switch request {
        case .procedure(let procedure, let force):
            let hash = prepared?.hash ?? ReminderStore.contentHash(procedure)
            guard let planned = try await planNew(procedure, force: force, hash: hash, counts: &counts) else { return }
            guard
                try await insertProcedure(
                    procedure, hash: hash, patientJSON: prepared?.patientJSON, status: "active", plannedAt: nil,
                    reminders: planned)
            else {
                // Another host ingested it meanwhile: as if it had been there all along.
                let existing = try await existingAfterConflict(procedure.id)
                try Self.checkKnownProcedure(existing, id: procedure.id, hash: hash)
                counts.duplicates += 1
                return
            }
            known.set(procedure.id, Existing(hash: hash, status: "active"))
            logIngested(procedure, planned, force: force, file: file, counts: &counts)

        case .book(let procedure):
            let hash = prepared?.hash ?? ReminderStore.contentHash(procedure)
            guard try await checkNewBooking(procedure, hash: hash, counts: &counts) else { return }
            guard
                try await insertProcedure(
                    procedure, hash: hash, patientJSON: prepared?.patientJSON, status: "booked",
                    plannedAt: procedure.performedAt, reminders: [])
            else {
                try Self.checkKnownBooking(try await existingAfterConflict(procedure.id), id: procedure.id, hash: hash)
                counts.duplicates += 1
                return
            }
            known.set(procedure.id, Existing(hash: hash, status: "booked"))
            logBooked(procedure, file: file, counts: &counts)

        case .move(let procedureID, let plannedAt, let timeZone):
            let (stored, status, _) = try await loadProcedure(procedureID)
            var procedure = stored
            try IntakeRules.requireBooked(status, procedureID: procedureID)
            let oldZone = procedure.patientTimeZone
            let old = procedure.performedAt
            procedure.performedAt = plannedAt
            if let timeZone { procedure.patient.timeZone = timeZone }
            _ = try ReminderStore.planOrThrow(procedure, now: now, plan: plan)
            let patient = procedure.patient
            try await connection.run(
                """
                UPDATE procedure SET performed_at = \(plannedAt.seconds), planned_at = \(plannedAt.seconds),
                    patient_json = \(ReminderStore.encodePatient(patient)), first_name = \(patient.firstName),
                    time_zone = \(patient.timeZone), routes = \(PatientColumns.routes(patient.routes)),
                    updated_at = \(now.seconds)
                WHERE id = \(procedureID)
                """)
            log.append(
                LogEntry(
                    at: now, event: .moved, procedureID: procedureID, patientID: patient.id, actor: file.actor,
                    detail: "planned \(Timestamp.format(old, in: oldZone)) → "
                        + Timestamp.format(plannedAt, in: procedure.patientTimeZone)))
            counts.moved += 1

        case .performed(let procedureID, let at, let force):
            let (stored, status, plannedAt) = try await loadProcedure(procedureID)
            var procedure = stored
            if status == "active", plannedAt != nil {
                // Said twice (a resent file): the first confirmation stands.
                counts.duplicates += 1
                return
            }
            try IntakeRules.requirePerformable(status, procedureID: procedureID)
            procedure.performedAt = at ?? now
            let planned = try ReminderStore.planOrThrow(procedure, now: now, plan: plan)
            if let problem = PerformedTime.problem(
                performedAt: procedure.performedAt, now: now, plan: planned, force: force)
            {
                throw IntakeError(procedureID: procedureID, problem: problem)
            }
            try Self.checkStorable(planned, procedureID: procedureID)
            try await connection.run(
                """
                UPDATE procedure SET performed_at = \(procedure.performedAt.seconds), status = 'active',
                    updated_at = \(now.seconds)
                WHERE id = \(procedureID)
                """)
            known.forget(procedureID)
            log.append(
                LogEntry(
                    at: now, event: .performed, procedureID: procedureID, patientID: procedure.patient.id,
                    actor: file.actor,
                    detail: "performed \(Timestamp.format(procedure.performedAt, in: procedure.patientTimeZone)); "
                        + "\(planned.count) reminder(s) planned"
                        + (status == "not_performed" ? " (confirmed after it was closed as not performed)" : "")))
            try await insertReminders(procedureID, planned)
            let expired = logExpired(procedure, planned)
            counts.performed += 1
            counts.reminders += planned.count
            counts.expired += expired

        case .update(let update):
            try await applyUpdate(update, actor: file.actor, counts: &counts)

        case .cancel(let procedureID, let reason):
            let (procedure, status, _) = try await loadProcedure(procedureID)
            if status == "booked" {
                // An appointment has no reminders yet: its one row says it was called off.
                log.append(
                    LogEntry(
                        at: now, event: .cancelled, procedureID: procedureID, patientID: procedure.patient.id,
                        actor: file.actor, detail: "appointment cancelled" + (reason.map { ": \($0)" } ?? "")))
                counts.cancelled += 1
            }
            try await connection.run(
                "UPDATE procedure SET status = 'cancelled', updated_at = \(now.seconds) WHERE id = \(procedureID)")
            known.forget(procedureID)
            let lastError = reason.map { "cancelled: \($0)" } ?? "cancelled"
            let pending = try await connection.rows(
                """
                UPDATE reminder SET state = 'cancelled', lease_token = NULL, lease_owner = NULL,
                    lease_expires_at = NULL, last_error = \(lastError), updated_at = \(now.seconds)
                WHERE procedure_id = \(procedureID) AND state IN ('scheduled', 'claimed')
                RETURNING step_id
                """
            ) { row in try row.decode(String.self) }
            // In step order, as SQLite's primary key returns them.
            for step in pending.sorted(by: Self.byteOrder) {
                log.append(
                    LogEntry(
                        at: now, event: .cancelled, procedureID: procedureID, patientID: procedure.patient.id,
                        stepID: step, actor: file.actor, detail: reason))
            }
            counts.cancelled += pending.count

        case .reschedule(let procedureID, let performedAt, let timeZone):
            let (stored, status, _) = try await loadProcedure(procedureID)
            var procedure = stored
            guard status == "active" else {
                throw IntakeError(
                    procedureID: procedureID,
                    problem: status == "booked"
                        ? "is a booked appointment; use 'aftercare move' to change its planned time"
                        : "the procedure is \(status); nothing to re-plan")
            }
            if let performedAt { procedure.performedAt = performedAt }
            if let timeZone { procedure.patient.timeZone = timeZone }
            let planned = try ReminderStore.planOrThrow(procedure, now: now, plan: plan)
            try Self.checkStorable(planned, procedureID: procedureID)
            try await reschedule(procedure, planned, actor: file.actor, counts: &counts)

        case .replay(let scope):
            try await replay(scope, actor: file.actor, counts: &counts)
        }
    }

    private mutating func reschedule(
        _ procedure: Procedure, _ planned: [PlannedReminder], actor: String, counts: inout IntakeCounts
    ) async throws {
        let procedureID = procedure.id
        let patient = procedure.patient
        try await connection.run(
            """
            UPDATE procedure SET performed_at = \(procedure.performedAt.seconds),
                patient_json = \(ReminderStore.encodePatient(patient)), first_name = \(patient.firstName),
                time_zone = \(patient.timeZone), routes = \(PatientColumns.routes(patient.routes)),
                content_hash = \(ReminderStore.contentHash(procedure)), updated_at = \(now.seconds)
            WHERE id = \(procedureID)
            """)
        known.forget(procedureID)
        // Never-tried expired steps are re-planned too: they may have expired only because of the
        // old time or zone's quiet hours, and their notes quote that zone.
        let current = try await connection.rows(
            """
            SELECT step_id, due_at, state FROM reminder
            WHERE procedure_id = \(procedureID) AND (state = 'scheduled' OR (state = 'expired' AND attempts = 0))
            ORDER BY step_id COLLATE "C"
            FOR UPDATE
            """
        ) { row in try row.decode((String, Double, String).self) }
        let zone = procedure.patientTimeZone
        for (step, oldDueSeconds, state) in current {
            guard let reminder = planned.first(where: { $0.stepID == step }) else { continue }
            let oldDue = Date(seconds: oldDueSeconds)
            let wasExpired = state == ReminderState.expired.rawValue
            if wasExpired && reminder.state == .expired {
                // Still expired under the new plan: only its note changes, to the new zone's words.
                try await connection.run(
                    """
                    UPDATE reminder SET nominal_at = \(reminder.nominalAt.seconds), due_at = \(reminder.dueAt.seconds),
                        expires_at = \(reminder.expiresAt.seconds), last_error = \(reminder.note),
                        updated_at = \(now.seconds)
                    WHERE procedure_id = \(procedureID) AND step_id = \(step) AND state = 'expired'
                    """)
                continue
            }
            try await connection.run(
                """
                UPDATE reminder SET nominal_at = \(reminder.nominalAt.seconds), due_at = \(reminder.dueAt.seconds),
                    expires_at = \(reminder.expiresAt.seconds), state = \(reminder.state.rawValue),
                    last_error = \(reminder.state == .expired ? reminder.note : nil), updated_at = \(now.seconds)
                WHERE procedure_id = \(procedureID) AND step_id = \(step) AND state IN ('scheduled', 'expired')
                """)
            log.append(
                LogEntry(
                    at: now, event: reminder.state == .expired ? .expired : .replanned, procedureID: procedureID,
                    patientID: patient.id, stepID: step, actor: actor,
                    detail: (wasExpired ? "expired step re-planned: " : "")
                        + "due \(Timestamp.format(oldDue, in: zone)) → "
                        + Timestamp.format(reminder.dueAt, in: zone)
                        + (reminder.note.map { "; \($0)" } ?? "")))
            if reminder.state == .scheduled { fileMadeDue = true }
            counts.replanned += 1
        }
    }

    private mutating func replay(_ scope: ReplayScope, actor: String, counts: inout IntakeCounts) async throws {
        var query: PostgresQuery
        switch scope {
        case .reminder(let id):
            // Step ids hold no dot; procedure ids may: the step is what follows the last dot.
            let dot = id.lastIndex(of: ".")
            let procedureID = dot.map { String(id[..<$0]) } ?? id
            let stepID = dot.map { String(id[id.index(after: $0)...]) } ?? ""
            let found = try await connection.rows(
                """
                SELECT state, expires_at FROM reminder WHERE procedure_id = \(procedureID) AND step_id = \(stepID)
                FOR UPDATE
                """
            ) { row in try row.decode((String, Double).self) }
            guard let (state, expiresAt) = found.first else {
                throw IntakeError(procedureID: procedureID, problem: "no reminder \(id)")
            }
            let open = Date(seconds: expiresAt) > now
            guard state == "dead" || (state == "expired" && open) else {
                throw IntakeError(
                    procedureID: procedureID,
                    problem: state == "expired"
                        ? "reminder \(id) is expired and its window has closed"
                        : "reminder \(id) is \(state), not dead or expired")
            }
            query = Self.replayQuery(now: now, "AND r.procedure_id = \(procedureID) AND r.step_id = \(stepID)")
        case .procedure(let id):
            _ = try await loadProcedure(id)
            query = Self.replayQuery(now: now, "AND r.procedure_id = \(id)")
        case .deadSince(let date):
            query = Self.replayQuery(now: now, "AND r.updated_at >= \(date.seconds)")
        }
        let rows = try await connection.rows(query) { row in try row.decode((String, String, Double, String?).self) }
        var requeued: [(String, String)] = []
        var closed: [(String, String)] = []
        for (procedureID, step, expiresAt, patientID) in rows {
            guard Date(seconds: expiresAt) > now else {
                log.append(
                    LogEntry(
                        at: now, event: .expired, procedureID: procedureID, patientID: patientID, stepID: step,
                        actor: actor, detail: "replay asked after its window closed"))
                closed.append((procedureID, step))
                continue
            }
            log.append(
                LogEntry(
                    at: now, event: .replayed, procedureID: procedureID, patientID: patientID, stepID: step,
                    actor: actor, detail: "re-queued by \(actor)"))
            requeued.append((procedureID, step))
            counts.replayed += 1
        }
        if !closed.isEmpty {
            try await connection.run(
                """
                UPDATE reminder SET state = 'expired', last_error = 'window closed before replay',
                    updated_at = \(now.seconds)
                WHERE (procedure_id, step_id) IN (SELECT * FROM unnest(\(closed.map(\.0)), \(closed.map(\.1))))
                """)
        }
        if !requeued.isEmpty {
            try await connection.run(
                """
                UPDATE reminder SET state = 'scheduled', due_at = \(now.seconds), attempts = 0, last_error = NULL,
                    failed_routes = NULL, updated_at = \(now.seconds)
                WHERE (procedure_id, step_id) IN (SELECT * FROM unnest(\(requeued.map(\.0)), \(requeued.map(\.1))))
                """)
            fileMadeDue = true
        }
    }

    /// Replayable reminders (dead, or expired with their window open) in key order, as SQLite's
    /// primary key walks them, locked until the transaction ends. `condition` numbers its own
    /// parameters from `$1`; `now` follows them.
    private static func replayQuery(now: Date, _ condition: PostgresQuery) -> PostgresQuery {
        var binds = condition.binds
        binds.append(now.seconds)
        return PostgresQuery(
            unsafeSQL: """
                SELECT r.procedure_id, r.step_id, r.expires_at, p.patient_id FROM reminder r
                JOIN procedure p ON p.id = r.procedure_id
                WHERE (r.state = 'dead' OR (r.state = 'expired' AND r.expires_at > $\(binds.count))) \(condition.sql)
                ORDER BY r.procedure_id COLLATE "C", r.step_id COLLATE "C"
                FOR UPDATE OF r
                """, binds: binds)
    }

    /// A contact correction (see ``ReminderStore``'s `applyUpdate`): the patient's open procedures,
    /// or the one named; the content hash stays as ingested; one `updated` row per procedure.
    private mutating func applyUpdate(_ update: PatientUpdate, actor: String, counts: inout IntakeCounts) async throws {
        let query: PostgresQuery
        if let id = update.procedureID {
            query = """
                SELECT id, protocol_id, performed_at, patient_json, status FROM procedure
                WHERE patient_id = \(update.patientID) AND id = \(id)
                FOR UPDATE
                """
        } else {
            query = """
                SELECT id, protocol_id, performed_at, patient_json, status FROM procedure
                WHERE patient_id = \(update.patientID) AND status IN ('booked', 'active')
                ORDER BY id COLLATE "C"
                FOR UPDATE
                """
        }
        let rows = try await connection.rows(query) { row in
            let (id, protocolID, performedAt, patientJSON, status) = try row.decode(
                (String, String, Double, String, String).self)
            let procedure = try Self.procedure(
                id: id, protocolID: protocolID, performedAt: performedAt, patientJSON: patientJSON)
            return (procedure, status)
        }
        guard !rows.isEmpty else {
            throw IntakeError(
                procedureID: update.procedureID,
                problem: update.procedureID == nil
                    ? "patient \(update.patientID) has no open procedure"
                    : "no such procedure for patient \(update.patientID)")
        }
        for (procedure, status) in rows {
            let id = procedure.id
            if update.procedureID != nil, status != "booked", status != "active" {
                throw IntakeError(procedureID: id, problem: "is \(status); nothing to update")
            }
            let patient = update.applied(to: procedure.patient)
            for channel in update.optOut + update.optIn
            where !patient.routes.contains(where: { $0.channel == channel }) {
                throw IntakeError(procedureID: id, problem: "patient \(update.patientID) has no '\(channel)' route")
            }
            let changes = ReminderStore.describeChanges(from: procedure.patient, to: patient)
            guard !changes.isEmpty else { continue }
            var corrected = procedure
            corrected.patient = patient
            // Refused like a new procedure whose routes no configured channel can take.
            _ = try ReminderStore.planOrThrow(corrected, now: now, plan: plan)
            try await connection.run(
                """
                UPDATE procedure SET patient_json = \(ReminderStore.encodePatient(patient)),
                    first_name = \(patient.firstName), time_zone = \(patient.timeZone),
                    routes = \(PatientColumns.routes(patient.routes)), updated_at = \(now.seconds)
                WHERE id = \(id)
                """)
            log.append(
                LogEntry(
                    at: now, event: .updated, procedureID: id, patientID: update.patientID, actor: actor,
                    detail: changes.joined(separator: "; ")))
            counts.updated += 1
        }
    }

    // MARK: Reads and writes

    /// The stored procedure under `id`, if any: from the batch's look-up, else from the database.
    private mutating func existing(_ id: String) async throws -> Existing? {
        if let cached = known.lookup(id) { return cached.existing }
        let found = try await fetchExisting(id)
        known.set(id, found)
        return found
    }

    /// The procedure another host inserted while this intake was deciding to: now committed (the
    /// insert waited for it), so a new statement sees it.
    private mutating func existingAfterConflict(_ id: String) async throws -> Existing {
        guard let found = try await fetchExisting(id) else {
            throw StoreError("procedure \(id) conflicted on insert but cannot be read")
        }
        known.set(id, found)
        return found
    }

    private func fetchExisting(_ id: String) async throws -> Existing? {
        try await connection.rows("SELECT content_hash, status FROM procedure WHERE id = \(id)") { row in
            let (hash, status) = try row.decode((String, String).self)
            return Existing(hash: hash, status: status)
        }.first
    }

    private static func checkKnownProcedure(_ existing: Existing, id: String, hash: String) throws {
        try IntakeRules.checkKnownProcedure(status: existing.status, storedHash: existing.hash, id: id, hash: hash)
    }

    private static func checkKnownBooking(_ existing: Existing, id: String, hash: String) throws {
        try IntakeRules.checkKnownBooking(status: existing.status, storedHash: existing.hash, id: id, hash: hash)
    }

    /// A procedure, its status and its planned time, locked until the transaction ends (another
    /// host's request about the same procedure waits, then sees this one's change).
    private func loadProcedure(_ id: String) async throws -> (Procedure, status: String, plannedAt: Double?) {
        let rows = try await connection.rows(
            """
            SELECT protocol_id, performed_at, patient_json, status, planned_at FROM procedure WHERE id = \(id)
            FOR UPDATE
            """
        ) { row in try row.decode((String, Double, String, String, Double?).self) }
        guard let (protocolID, performedAt, patientJSON, status, plannedAt) = rows.first else {
            throw IntakeError(procedureID: id, problem: "no such procedure")
        }
        let procedure = try Self.procedure(
            id: id, protocolID: protocolID, performedAt: performedAt, patientJSON: patientJSON)
        return (procedure, status, plannedAt)
    }

    /// A procedure from its stored columns.
    static func procedure(
        id: String, protocolID: String, performedAt: Double, patientJSON: String
    ) throws -> Procedure {
        Procedure(
            id: id, protocolID: protocolID, performedAt: Date(seconds: performedAt),
            patient: try JSONDecoder().decode(Patient.self, from: Data(patientJSON.utf8)))
    }

    /// Inserts a procedure and its reminders in one statement, unless the id is taken (by this
    /// database's past or by another host right now). Returns whether it was inserted.
    private mutating func insertProcedure(
        _ procedure: Procedure, hash: String, patientJSON: String?, status: String, plannedAt: Date?,
        reminders: [PlannedReminder]
    ) async throws -> Bool {
        var binds = PostgresBindings(capacity: 13 + reminders.count * 6)
        binds.append(procedure.id)
        binds.append(procedure.protocolID)
        binds.append(procedure.performedAt.seconds)
        binds.append(procedure.patient.id)
        binds.append(patientJSON ?? ReminderStore.encodePatient(procedure.patient))
        binds.append(procedure.patient.firstName)
        binds.append(procedure.patient.timeZone)
        try binds.append(PatientColumns.routes(procedure.patient.routes))
        binds.append(hash)
        binds.append(status)
        binds.append(now.seconds)
        binds.append(plannedAt?.seconds)
        var sql = """
            WITH p AS (
                INSERT INTO procedure (id, protocol_id, performed_at, patient_id, patient_json, first_name, time_zone,
                    routes, content_hash, status, ingested_at, updated_at, planned_at)
                VALUES ($1, $2, $3, $4, $5, $6::text, $7, $8, $9, $10, $11, $11, $12::float8)
                ON CONFLICT (id) DO NOTHING
                RETURNING id)
            """
        if !reminders.isEmpty {
            let values = Self.reminderValues(reminders, from: 13, into: &binds)
            sql += """
                , r AS (
                    INSERT INTO reminder (procedure_id, step_id, nominal_at, due_at, expires_at, state, last_error,
                        updated_at)
                    SELECT p.id, v.step_id, v.nominal_at, v.due_at, v.expires_at, v.state, v.last_error, $11
                    FROM p, (VALUES \(values)) AS v(step_id, nominal_at, due_at, expires_at, state, last_error))
                """
        }
        sql += "\nSELECT COUNT(*) FROM p"
        let inserted = try await connection.value(Int64.self, PostgresQuery(unsafeSQL: sql, binds: binds))
        if inserted == 1, reminders.contains(where: { $0.state == .scheduled }) { fileMadeDue = true }
        return inserted == 1
    }

    /// Inserts a procedure's planned reminders in one statement.
    private mutating func insertReminders(_ procedureID: String, _ reminders: [PlannedReminder]) async throws {
        guard !reminders.isEmpty else { return }
        var binds = PostgresBindings(capacity: 2 + reminders.count * 6)
        binds.append(procedureID)
        binds.append(now.seconds)
        let values = Self.reminderValues(reminders, from: 3, into: &binds)
        try await connection.run(
            PostgresQuery(
                unsafeSQL: """
                    INSERT INTO reminder (procedure_id, step_id, nominal_at, due_at, expires_at, state, last_error,
                        updated_at)
                    SELECT $1, v.step_id, v.nominal_at, v.due_at, v.expires_at, v.state, v.last_error, $2
                    FROM (VALUES \(values)) AS v(step_id, nominal_at, due_at, expires_at, state, last_error)
                    """, binds: binds))
        if reminders.contains(where: { $0.state == .scheduled }) { fileMadeDue = true }
    }

    /// `VALUES` rows for `reminders` (step, nominal, due, expires, state, note when expired), their
    /// parameters numbered from `first`.
    private static func reminderValues(
        _ reminders: [PlannedReminder], from first: Int, into binds: inout PostgresBindings
    ) -> String {
        var rows: [String] = []
        rows.reserveCapacity(reminders.count)
        for (index, reminder) in reminders.enumerated() {
            let n = first + index * 6
            rows.append(
                "($\(n)::text, $\(n + 1)::float8, $\(n + 2)::float8, $\(n + 3)::float8, $\(n + 4)::text, "
                    + "$\(n + 5)::text)")
            binds.append(reminder.stepID)
            binds.append(reminder.nominalAt.seconds)
            binds.append(reminder.dueAt.seconds)
            binds.append(reminder.expiresAt.seconds)
            binds.append(reminder.state.rawValue)
            binds.append(reminder.state == .expired ? reminder.note : nil)
        }
        return rows.joined(separator: ", ")
    }

    /// The rows of a new procedure: its expired steps, then `ingested`.
    private mutating func logIngested(
        _ procedure: Procedure, _ planned: [PlannedReminder], force: Bool, file: IntakeBatchFile,
        counts: inout IntakeCounts
    ) {
        let expired = logExpired(procedure, planned)
        log.append(
            LogEntry(
                at: now, event: .ingested, procedureID: procedure.id, patientID: procedure.patient.id,
                actor: file.actor,
                detail: "\(file.name): protocol \(procedure.protocolID), \(planned.count) reminder(s) planned"
                    + (expired > 0 ? ", \(expired) already past their window" : "")
                    + (force && expired == planned.count ? " (forced)" : "")))
        counts.procedures += 1
        counts.reminders += planned.count
        counts.expired += expired
    }

    private mutating func logBooked(_ procedure: Procedure, file: IntakeBatchFile, counts: inout IntakeCounts) {
        log.append(
            LogEntry(
                at: now, event: .booked, procedureID: procedure.id, patientID: procedure.patient.id,
                actor: file.actor,
                detail: "\(file.name): protocol \(procedure.protocolID), planned for "
                    + Timestamp.format(procedure.performedAt, in: procedure.patientTimeZone)))
        counts.booked += 1
    }

    /// Logs the reminders planned expired, in plan order. Returns how many.
    private mutating func logExpired(_ procedure: Procedure, _ planned: [PlannedReminder]) -> Int {
        var expired = 0
        for reminder in planned where reminder.state == .expired {
            log.append(
                LogEntry(
                    at: now, event: .expired, procedureID: procedure.id, patientID: procedure.patient.id,
                    stepID: reminder.stepID, detail: reminder.note))
            expired += 1
        }
        return expired
    }

    // MARK: What PostgreSQL can store

    private static func checkStorable(_ file: IntakeBatchFile) throws {
        if holdsNUL(file.name) || holdsNUL(file.actor) {
            throw IntakeError(problem: "the file's name or owner holds a NUL character, which PostgreSQL cannot store")
        }
    }

    private static func checkStorable(_ request: IntakeRequest) throws {
        if request.holdsNUL {
            throw IntakeError(
                procedureID: request.procedureID,
                problem: "the request holds a NUL character, which PostgreSQL cannot store")
        }
    }

    /// The plan's step names and notes come from the configuration; checked all the same.
    private static func checkStorable(_ planned: [PlannedReminder], procedureID: String) throws {
        for reminder in planned where holdsNUL(reminder.stepID) || reminder.note.map(holdsNUL) == true {
            throw IntakeError(
                procedureID: procedureID,
                problem: "the plan's step \(reminder.stepID) holds a NUL character, which PostgreSQL cannot store")
        }
    }

    /// PostgreSQL's text holds no NUL character. Intake validates every id and text field, so none
    /// should arrive; one that does refuses its file instead of failing the whole transaction.
    static func holdsNUL(_ text: String) -> Bool { text.utf8.contains(0) }


    /// Byte order, as SQLite compares text.
    private static func byteOrder(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }
}

/// New procedures and their reminders decided in memory, not yet written, and the files they came
/// from (refused ones too, as they are redone in order if the rows cannot be written as decided).
private struct PendingRows {
    struct Procedure {
        var procedure: AftercareCore.Procedure
        var hash: String
        var patientJSON: String?
        var status: String
        var plannedAt: Date?
    }

    var procedures: [Procedure] = []
    var reminders: [(procedureID: String, reminder: PlannedReminder)] = []
    var files: [IntakeBatchFile] = []
    /// Where the log, the outcomes and `madeDue` stood before the first of `files`.
    var start = (log: 0, outcomes: 0, madeDue: false)

    mutating func add(
        _ procedure: AftercareCore.Procedure, hash: String, patientJSON: String?, status: String, plannedAt: Date?,
        reminders planned: [PlannedReminder]
    ) {
        procedures.append(
            Procedure(procedure: procedure, hash: hash, patientJSON: patientJSON, status: status, plannedAt: plannedAt))
        for reminder in planned { reminders.append((procedure.id, reminder)) }
    }
}

extension Array {
    /// Consecutive slices of at most `size` elements.
    fileprivate func chunks(of size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: size).map { self[$0..<Swift.min($0 + size, count)] }
    }
}

/// What an intake knows of stored procedures without asking the database: the batch's look-up,
/// then its own inserts and changes. A refused file's changes are undone with it.
private struct KnownProcedures {
    enum Entry {
        case absent
        case present(PostgresIntake.Existing)

        var existing: PostgresIntake.Existing? {
            if case .present(let existing) = self { return existing }
            return nil
        }
    }

    /// A missing key is not known: ask the database.
    private var entries: [String: Entry] = [:]
    private var undo: [(String, Entry?)] = []

    mutating func load(ids: Set<String>, found: [String: PostgresIntake.Existing]) {
        for id in ids { entries[id] = found[id].map(Entry.present) ?? .absent }
    }

    func lookup(_ id: String) -> Entry? { entries[id] }

    mutating func set(_ id: String, _ existing: PostgresIntake.Existing?) {
        undo.append((id, entries[id]))
        entries[id] = existing.map(Entry.present) ?? .absent
    }

    /// Forgets a procedure this file changed in ways the cache does not follow (status, hash).
    mutating func forget(_ id: String) {
        undo.append((id, entries[id]))
        entries[id] = nil
    }

    mutating func keepFile() { undo.removeAll(keepingCapacity: true) }

    mutating func undoFile() {
        for (id, entry) in undo.reversed() { entries[id] = entry }
        undo.removeAll(keepingCapacity: true)
    }
}

extension IntakeRequest {
    /// A procedure or booking: a new row, written once, as its request's last step.
    fileprivate var isNewProcedure: Bool {
        switch self {
        case .procedure, .book: return true
        default: return false
        }
    }

    /// Whether any text the request carries holds a NUL character.
    fileprivate var holdsNUL: Bool {
        func patient(_ patient: Patient) -> Bool {
            [patient.id, patient.timeZone, patient.firstName ?? ""].contains(where: PostgresIntake.holdsNUL)
                || patient.routes.contains { route in
                    PostgresIntake.holdsNUL(route.channel) || PostgresIntake.holdsNUL(route.address)
                }
        }
        switch self {
        case .procedure(let procedure, _), .book(let procedure):
            return PostgresIntake.holdsNUL(procedure.id) || PostgresIntake.holdsNUL(procedure.protocolID)
                || patient(procedure.patient)
        case .move(let id, _, let zone):
            return PostgresIntake.holdsNUL(id) || PostgresIntake.holdsNUL(zone ?? "")
        case .performed(let id, _, _):
            return PostgresIntake.holdsNUL(id)
        case .update(let update):
            let texts = [update.patientID, update.procedureID ?? "", update.firstName ?? ""] + update.optOut
                + update.optIn
            return texts.contains(where: PostgresIntake.holdsNUL)
                || (update.routes ?? []).contains {
                    PostgresIntake.holdsNUL($0.channel) || PostgresIntake.holdsNUL($0.address)
                }
        case .cancel(let id, let reason):
            return PostgresIntake.holdsNUL(id) || PostgresIntake.holdsNUL(reason ?? "")
        case .reschedule(let id, _, let zone):
            return PostgresIntake.holdsNUL(id) || PostgresIntake.holdsNUL(zone ?? "")
        case .replay(.reminder(let id)), .replay(.procedure(let id)):
            return PostgresIntake.holdsNUL(id)
        case .replay(.deadSince):
            return false
        }
    }
}

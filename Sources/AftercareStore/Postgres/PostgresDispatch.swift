import AftercareCore
import Foundation
import PostgresNIO

extension PostgresReminderStore {
    /// Claims up to `limit` due reminders, earliest first, skipping rows another daemon is claiming
    /// at this moment (`FOR UPDATE SKIP LOCKED`): one statement, one round trip. The lease carries a
    /// token from one sequence (fencing every later write) and this daemon's node name.
    public func claimDue(now: Date, limit: Int, leaseSeconds: Double) async throws -> [ClaimedReminder] {
        let claimed = try await transaction { connection in
            try await connection.rows(
                """
                WITH token AS (SELECT nextval('lease_token') AS value),
                due AS (
                    SELECT procedure_id, step_id FROM reminder
                    WHERE state = 'scheduled' AND due_at <= \(now.seconds)
                    ORDER BY due_at LIMIT \(limit)
                    FOR UPDATE SKIP LOCKED)
                UPDATE reminder r SET state = 'claimed', lease_token = token.value, lease_owner = \(settings.node),
                    lease_expires_at = \(now.seconds + leaseSeconds), updated_at = \(now.seconds)
                FROM token, due, procedure p
                WHERE r.procedure_id = due.procedure_id AND r.step_id = due.step_id AND p.id = r.procedure_id
                RETURNING r.procedure_id, r.step_id, r.nominal_at, r.due_at, r.expires_at, r.attempts,
                    r.failed_routes, p.protocol_id, p.performed_at, p.patient_id, p.first_name, p.time_zone,
                    p.routes, token.value
                """
            ) { row -> ClaimedReminder in
                let (procedureID, stepID, nominalAt, dueAt, expiresAt, attempts, failed) = try row.decode(
                    (String, String, Double, Double, Double, Int32, String?).self)
                let cells = row.makeRandomAccess()
                let routesData = try cells[12].decode(Data?.self) ?? Data()
                guard let routes = routesData.withUnsafeBytes({ PatientColumns.decodeRoutes($0) }) else {
                    throw StoreError("procedure \(procedureID) has unreadable routes in the database")
                }
                let patient = Patient(
                    id: try cells[9].decode(String.self), firstName: try cells[10].decode(String?.self),
                    timeZone: try cells[11].decode(String?.self) ?? "", routes: routes)
                return ClaimedReminder(
                    procedure: Procedure(
                        id: procedureID, protocolID: try cells[7].decode(String.self),
                        performedAt: Date(seconds: try cells[8].decode(Double.self)), patient: patient),
                    stepID: stepID, nominalAt: Date(seconds: nominalAt), dueAt: Date(seconds: dueAt),
                    expiresAt: Date(seconds: expiresAt), attempt: Int(attempts) + 1,
                    leaseToken: try cells[13].decode(Int64.self),
                    failedRoutes: failed.map { Set($0.split(separator: "\n").map(String.init)) } ?? [])
            }
        }
        return claimed.sorted { ($0.dueAt, $0.reminderID) < ($1.dueAt, $1.reminderID) }
    }

    /// Records outcomes as SQLite's store does (see ``ReminderStore/record(_:now:)``): one `UPDATE`
    /// for the batch, fenced by each lease's token; the texts sent, kept once; the log rows; and a
    /// notification when something went back to the queue, so an idle daemon elsewhere looks again.
    @discardableResult
    public func record(_ outcomes: [(ClaimedReminder, Resolution)], now: Date) async throws -> Int {
        guard !outcomes.isEmpty else { return 0 }
        var changes = outcomes.map { ReminderChange($0.0, $0.1, now: now) }
        return try await transaction { connection in
            try await keepTexts(changes.compactMap { change in change.message.map { ($0, change.messageHash) } },
                now: now, on: connection)
            var binds = PostgresBindings(capacity: outcomes.count * 8 + 1)
            binds.append(now.seconds)
            var values: [String] = []
            values.reserveCapacity(outcomes.count)
            for (index, (reminder, _)) in outcomes.enumerated() {
                let change = changes[index]
                let first = 2 + index * 8
                values.append(
                    "($\(first), $\(first + 1), $\(first + 2)::bigint, $\(first + 3), $\(first + 4)::float8, "
                        + "$\(first + 5)::integer, $\(first + 6), $\(first + 7))")
                binds.append(reminder.procedure.id)
                binds.append(reminder.stepID)
                binds.append(reminder.leaseToken)
                binds.append(change.state.rawValue)
                binds.append(change.dueAt.seconds)
                binds.append(Int32(clamping: change.attempts))
                binds.append(change.lastError.map(PostgresLog.storable))
                binds.append(change.failedRoutesText)
            }
            let applied = Set(
                try await connection.rows(
                    PostgresQuery(
                        unsafeSQL: """
                            UPDATE reminder r SET state = v.state, due_at = v.due_at, attempts = v.attempts,
                                last_error = v.last_error, failed_routes = v.failed_routes, lease_token = NULL,
                                lease_owner = NULL, lease_expires_at = NULL, recorded_token = v.token, updated_at = $1
                            FROM (VALUES \(values.joined(separator: ", ")))
                                AS v(procedure_id, step_id, token, state, due_at, attempts, last_error, failed_routes)
                            WHERE r.procedure_id = v.procedure_id AND r.step_id = v.step_id AND r.state = 'claimed'
                                AND r.lease_token = v.token
                            RETURNING r.procedure_id, r.step_id
                            """, binds: binds)
                ) { row in Key(try row.decode((String, String).self)) }
            )
            var fenced = 0
            var recordedBefore: Set<Int> = []
            for index in changes.indices {
                let reminder = outcomes[index].0
                guard !applied.contains(Key((reminder.procedure.id, reminder.stepID))) else { continue }
                let current = try await connection.rows(
                    """
                    SELECT state, recorded_token FROM reminder
                    WHERE procedure_id = \(reminder.procedure.id) AND step_id = \(reminder.stepID) FOR UPDATE
                    """
                ) { try $0.decode((String, Int64?).self) }.first
                // Already recorded under this very claim: an earlier try of this write committed, but
                // its reply was lost (the server or the network went away). Nothing to add.
                if current?.1 == reminder.leaseToken {
                    recordedBefore.insert(index)
                    continue
                }
                if changes[index].state == .delivered, changes[index].hasAttempt,
                    let note = try await deliveredAfterLosingLease(
                        reminder, current: current.flatMap { ReminderState(rawValue: $0.0) },
                        attempts: changes[index].attempts, now: now, on: connection)
                {
                    changes[index].noteOnAttempt(note)
                } else {
                    fenced += 1
                    changes[index].fenceOff()
                }
            }
            if changes.contains(where: { $0.state == .scheduled }) {
                try await PostgresLog.notifyQueue(on: connection)
            }
            try await PostgresLog.append(
                changes.indices.filter { !recordedBefore.contains($0) }.flatMap { changes[$0].entries }, on: connection)
            return fenced
        }
    }

    /// A reminder's primary key.
    private struct Key: Hashable {
        var procedureID: String
        var stepID: String
        init(_ pair: (String, String)) { (procedureID, stepID) = pair }
    }

    /// A delivery whose lease was lost (see ``ReminderChange/deliveredNote(current:)``): the reminder
    /// becomes delivered unless it had settled otherwise. Returns the note for the attempt row.
    private func deliveredAfterLosingLease(
        _ reminder: ClaimedReminder, current: ReminderState?, attempts: Int, now: Date,
        on connection: PostgresConnection
    ) async throws -> String? {
        guard let note = ReminderChange.deliveredNote(current: current) else { return nil }
        try await connection.run(
            """
            UPDATE reminder SET state = 'delivered', attempts = GREATEST(attempts, \(Int32(clamping: attempts))),
                last_error = NULL, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
                recorded_token = \(reminder.leaseToken), updated_at = \(now.seconds)
            WHERE procedure_id = \(reminder.procedure.id) AND step_id = \(reminder.stepID)
                AND state IN ('cancelled', 'scheduled', 'claimed')
            """)
        return note
    }

    /// Keeps protocol versions and sent texts, each once (`ON CONFLICT DO NOTHING`).
    func keepTexts(_ messages: [(SentMessage, String)], now: Date, on connection: PostgresConnection) async throws {
        var versions: [String: ProtocolVersion] = [:]
        var texts: [String: SentMessage] = [:]
        for (message, hash) in messages {
            versions[message.protocolVersion.hash] = message.protocolVersion
            texts[hash] = message
        }
        try await keepVersions(Array(versions.values), now: now, on: connection)
        for (hash, message) in texts.sorted(by: { $0.key < $1.key }) {
            try await connection.run(
                """
                INSERT INTO message (hash, subject, body)
                VALUES (\(hash), \(PostgresLog.storable(message.subject)), \(PostgresLog.storable(message.body)))
                ON CONFLICT (hash) DO NOTHING
                """)
        }
    }

    func keepVersions(_ versions: [ProtocolVersion], now: Date, on connection: PostgresConnection) async throws {
        for version in versions.sorted(by: { $0.hash < $1.hash }) {
            try await connection.run(
                """
                INSERT INTO protocol_version (hash, protocol_id, content, first_seen_at)
                VALUES (
                    \(version.hash), \(version.protocolID), \(PostgresLog.storable(version.content)), \(now.seconds))
                ON CONFLICT (hash) DO NOTHING
                """)
        }
    }

    public func rememberProtocols(_ versions: [ProtocolVersion], now: Date) async throws {
        try await transaction { connection in try await keepVersions(versions, now: now, on: connection) }
    }

    /// Returns lapsed claims to the queue, whoever held them; with `all`, also every claim this node
    /// held (its earlier run died: the state directory's lock says no other run of it is alive).
    @discardableResult
    public func recoverClaims(now: Date, all: Bool) async throws -> Int {
        try await transaction { connection in
            let entries = try await connection.rows(
                """
                WITH lapsed AS (
                    SELECT procedure_id, step_id, lease_owner, lease_expires_at FROM reminder
                    WHERE state = 'claimed' AND (lease_expires_at <= \(now.seconds)
                        OR (\(all) AND lease_owner = \(settings.node)))
                    FOR UPDATE SKIP LOCKED)
                UPDATE reminder r SET state = 'scheduled', lease_token = NULL, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = \(now.seconds)
                FROM lapsed
                WHERE r.procedure_id = lapsed.procedure_id AND r.step_id = lapsed.step_id
                RETURNING r.procedure_id, r.step_id, (SELECT patient_id FROM procedure WHERE id = r.procedure_id),
                    lapsed.lease_owner, lapsed.lease_expires_at
                """
            ) { row -> LogEntry in
                let (procedureID, stepID, patientID, owner, expires) = try row.decode(
                    (String, String, String?, String?, Double?).self)
                let holder = owner.map { " (held by \($0))" } ?? ""
                let detail = (expires ?? 0) <= now.seconds
                    ? "lease lapsed\(holder)" : "claim held at shutdown or crash returned to the queue\(holder)"
                return LogEntry(
                    at: now, event: .recovered, procedureID: procedureID, patientID: patientID, stepID: stepID,
                    detail: detail)
            }
            guard !entries.isEmpty else { return 0 }
            let ordered = entries.sorted {
                ($0.procedureID ?? "", $0.stepID ?? "") < ($1.procedureID ?? "", $1.stepID ?? "")
            }
            try await PostgresLog.notifyQueue(on: connection)
            try await PostgresLog.append(ordered, on: connection)
            return entries.count
        }
    }

    public func nextDueTime() async throws -> Date? {
        try await read { connection in
            try await connection.value(Double.self, "SELECT MIN(due_at) FROM reminder WHERE state = 'scheduled'")
                .map(Date.init(seconds:))
        }
    }

    public func nextDueOrLeaseExpiry() async throws -> Date? {
        try await read { connection in
            try await connection.value(
                Double.self,
                """
                SELECT LEAST(
                    (SELECT MIN(due_at) FROM reminder WHERE state = 'scheduled'),
                    (SELECT MIN(lease_expires_at) FROM reminder WHERE state = 'claimed'))
                """
            ).map(Date.init(seconds:))
        }
    }

    public func nextLeaseExpiry() async throws -> Date? {
        try await read { connection in
            try await connection.value(
                Double.self, "SELECT MIN(lease_expires_at) FROM reminder WHERE state = 'claimed'"
            ).map(Date.init(seconds:))
        }
    }

    public func logEvent(_ entry: LogEntry) async throws {
        try await transaction { connection in try await PostgresLog.append([entry], on: connection) }
    }

    /// Listens on the queue's channel until the task is cancelled, calling `onChange` for every
    /// notification, and once after each (re)connection: something may have been missed while no
    /// one listened. The listening connection is pooled (it counts against `connections`) and is
    /// given back and taken again every ``listenRenewal``, so a connection silently cut (a lost
    /// host, a dropped route) delays other daemons' new work by that much at most, never for good.
    public func watchQueue(_ onChange: @escaping @Sendable () -> Void) async {
        var delay = 0.25
        while !Task.isCancelled {
            do {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { [client] in
                        try await client.withConnection { connection in
                            let notifications = try await connection.listen(Self.queueChannel)
                            onChange()
                            for try await _ in notifications { onChange() }
                        }
                    }
                    group.addTask { try await Task.sleep(for: Self.listenRenewal) }
                    // Whichever ends first (the renewal, or the connection failing) ends this round.
                    try await group.next()
                    group.cancelAll()
                }
                delay = 0.25
            } catch {
                if Task.isCancelled || closing.withLock({ $0 }) { return }
                logger.warning("lost the queue's notifications: \(Self.describe(error)); listening again")
                try? await Task.sleep(for: .seconds(delay))
                delay = min(delay * 2, 5)
            }
        }
    }

    static let listenRenewal = Duration.seconds(300)
}

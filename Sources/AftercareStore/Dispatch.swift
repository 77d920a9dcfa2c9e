import AftercareCore
import Foundation
import GRDB

/// A reminder a dispatcher holds under a lease, with what it needs to render and route it.
public struct ClaimedReminder: Sendable {
    public var procedure: Procedure
    public var stepID: String
    public var nominalAt: Date
    public var dueAt: Date
    public var expiresAt: Date
    /// The number this try will have: 1 for the first.
    public var attempt: Int
    /// Fences the completion: only the holder of this token may record the outcome.
    public var leaseToken: Int64
    /// Routes (``FailedRoute/key(_:)``) that failed permanently for this reminder: not tried again
    /// until staff replay it or the patient's address changes.
    public var failedRoutes: Set<String> = []

    public var reminderID: String { ReminderID.make(procedureID: procedure.id, stepID: stepID) }
}

/// How a claimed reminder left the dispatcher, to be recorded with its log rows.
public enum Resolution: Sendable {
    /// A sender was tried. `next` is where the reminder goes from here.
    case attempted(Attempt, next: AfterAttempt)
    /// Its window closed; never sent stale.
    case expired(reason: String)
    /// Quiet hours began; it waits until `until`.
    case deferred(until: Date, reason: String)
    /// No route could take it (all opted out, or none configured for the step's channels).
    case skipped(reason: String)
    /// It cannot be sent as things stand (its protocol or step is no longer configured): dead, so
    /// staff can replay it once the configuration is fixed.
    case dead(reason: String)
    /// Shutdown came before it was tried: back to the queue, due as before, untouched.
    case released
}

/// Where a reminder goes after an attempt.
public enum AfterAttempt: Sendable, Hashable {
    case delivered
    case retry(at: Date)
    /// Window closed before the next try could happen.
    case expired(reason: String)
    case dead(reason: String)
    /// The route failed permanently and the patient has another usable one: try that at `at`.
    case nextRoute(at: Date, reason: String)
}

/// How a route that failed permanently is remembered on its reminder: its channel and address, so a
/// corrected address is a new route and is tried.
public enum FailedRoute {
    public static func key(_ route: ContactRoute) -> String { "\(route.channel):\(route.address)" }
}

/// One delivery attempt, for the log.
public struct Attempt: Sendable {
    public var channel: String
    public var sender: String
    public var destination: String
    public var startedAt: Date
    public var endedAt: Date
    public var result: SendResult
    /// Routes passed over before this one because the patient opted out of them.
    public var optedOutChannels: [String]
    /// The exact words sent and the protocol version they came from, kept with the attempt row.
    public var message: SentMessage?

    public init(
        channel: String, sender: String, destination: String, startedAt: Date, endedAt: Date, result: SendResult,
        optedOutChannels: [String] = [], message: SentMessage? = nil
    ) {
        self.channel = channel
        self.sender = sender
        self.destination = destination
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.result = result
        self.optedOutChannels = optedOutChannels
        self.message = message
    }
}

extension ReminderStore {
    /// Claims up to `limit` reminders due at `now`, earliest first, under a fresh lease that lapses
    /// at `now + leaseSeconds`. One `BEGIN IMMEDIATE` transaction: one query reads the batch with its
    /// patients' columns, one `UPDATE` takes the same rows (the same plan in the same transaction).
    public func claimDue(now: Date, limit: Int, leaseSeconds: Double) async throws -> [ClaimedReminder] {
        // Not durable: a claim a crash loses leaves the reminder scheduled, and a crash returns every
        // claim to the queue at the next start anyway.
        try await transaction(durable: false) { db in
            var due = FastInsert(
                try db.cachedStatement(
                    sql: """
                        SELECT r.procedure_id, r.step_id, r.nominal_at, r.due_at, r.expires_at, r.attempts,
                            r.failed_routes, p.protocol_id, p.performed_at, p.patient_id, p.first_name, p.time_zone,
                            p.routes
                        FROM reminder r INDEXED BY reminder_due JOIN procedure p ON p.id = r.procedure_id
                        WHERE r.state = 'scheduled' AND r.due_at <= ?
                        ORDER BY r.due_at LIMIT ?
                        """
                ), in: db)
            due.bind(now.timeIntervalSince1970)
            due.bind(limit)
            let token = Int64.random(in: 1...Int64.max)
            var claimed: [ClaimedReminder] = []
            claimed.reserveCapacity(min(limit, 4096))
            try due.rows { row in
                guard let routes = PatientColumns.decodeRoutes(row.bytes(12)) else {
                    throw StoreError("procedure \(row.text(0) ?? "") has unreadable routes in the database")
                }
                let failed = row.text(6)
                let patient = Patient(
                    id: row.text(9) ?? "", firstName: row.text(10), timeZone: row.text(11) ?? "", routes: routes)
                claimed.append(
                    ClaimedReminder(
                        procedure: Procedure(
                            id: row.text(0) ?? "", protocolID: row.text(7) ?? "",
                            performedAt: Date(timeIntervalSince1970: row.double(8)), patient: patient
                        ),
                        stepID: row.text(1) ?? "", nominalAt: Date(timeIntervalSince1970: row.double(2)),
                        dueAt: Date(timeIntervalSince1970: row.double(3)),
                        expiresAt: Date(timeIntervalSince1970: row.double(4)),
                        attempt: Int(row.int64(5)) + 1, leaseToken: token,
                        failedRoutes: failed.map { Set($0.split(separator: "\n").map(String.init)) } ?? []
                    )
                )
            }
            guard !claimed.isEmpty else { return [] }
            var claim = FastInsert(
                try db.cachedStatement(
                    sql: """
                        UPDATE reminder SET state = 'claimed', lease_token = ?, lease_expires_at = ?, updated_at = ?
                        WHERE (procedure_id, step_id) IN (
                            SELECT procedure_id, step_id FROM reminder INDEXED BY reminder_due
                            WHERE state = 'scheduled' AND due_at <= ? ORDER BY due_at LIMIT ?)
                        """
                ), in: db)
            claim.bind(token)
            claim.bind(now.timeIntervalSince1970 + leaseSeconds)
            claim.bind(now.timeIntervalSince1970)
            claim.bind(now.timeIntervalSince1970)
            claim.bind(limit)
            try claim.run()
            guard db.changesCount == claimed.count else {
                throw StoreError("claimed \(db.changesCount) reminder(s) but read \(claimed.count)")
            }
            return claimed
        }
    }

    /// Records how claimed reminders left the dispatcher, with their log rows, in one transaction.
    /// Each update is fenced by its lease token: if the lease lapsed and someone else took the
    /// reminder (or it was cancelled meanwhile), the attempt is still logged but the state is left as
    /// the newer holder set it, with one exception: a delivery is the truth about the patient, so a
    /// `delivered` outcome marks a cancelled, re-queued or re-claimed reminder delivered. An
    /// attempt's exact words and protocol version are stored with its row. Returns how many outcomes
    /// were fenced off (logged, not applied).
    @discardableResult
    public func record(_ outcomes: [(ClaimedReminder, Resolution)], now: Date) async throws -> Int {
        try await transaction { db in
            var texts = try ProtocolKeeper(db)
            var fenced = 0
            // Every row of the batch, in order, appended together at the end.
            var logRows: [LogEntry] = []
            logRows.reserveCapacity(outcomes.count + outcomes.count / 4)
            var update = FastInsert(
                try db.cachedStatement(
                    sql: """
                        UPDATE reminder SET state = ?, due_at = ?, attempts = ?, last_error = ?, lease_token = NULL,
                            lease_expires_at = NULL, updated_at = ?, failed_routes = ?
                        WHERE procedure_id = ? AND step_id = ? AND state = 'claimed' AND lease_token = ?
                        """
                ), in: db)
            for (reminder, resolution) in outcomes {
                var change = ReminderChange(reminder, resolution, now: now)
                if let message = change.message { try texts.keep(message, hash: change.messageHash, now: now) }
                update.bind(change.state.rawValue)
                update.bind(change.dueAt.timeIntervalSince1970)
                update.bind(change.attempts)
                update.bind(change.lastError)
                update.bind(now.timeIntervalSince1970)
                update.bind(change.failedRoutesText)
                update.bind(reminder.procedure.id)
                update.bind(reminder.stepID)
                update.bind(reminder.leaseToken)
                try update.run()
                if db.changesCount == 0 {
                    if change.state == .delivered, change.hasAttempt,
                        let note = try Self.deliveredAfterLosingLease(
                            reminder, attempts: change.attempts, now: now, db: db)
                    {
                        change.noteOnAttempt(note)
                    } else {
                        fenced += 1
                        change.fenceOff()
                    }
                }
                logRows.append(contentsOf: change.entries)
            }
            var log = try LogAppender(db)
            try log.append(contentsOf: logRows)
            return fenced
        }
    }

    /// A delivery whose claim was cancelled, lapsed and re-queued, or re-claimed meanwhile: the
    /// patient has the message, so the reminder becomes delivered (and is not sent again). Returns
    /// what happened for the attempt row, or `nil` if the reminder had already settled otherwise
    /// (delivered, expired, dead or skipped), which stands.
    private static func deliveredAfterLosingLease(
        _ reminder: ClaimedReminder, attempts: Int, now: Date, db: Database
    ) throws -> String? {
        // Bound as blobs and cast back, so ids compare byte for byte (GRDB binds text as C strings).
        let current = try String.fetchOne(
            db.cachedStatement(
                sql: "SELECT state FROM reminder WHERE procedure_id = CAST(? AS TEXT) AND step_id = CAST(? AS TEXT)"),
            arguments: [Data(reminder.procedure.id.utf8), Data(reminder.stepID.utf8)])
        guard let note = ReminderChange.deliveredNote(current: current.flatMap(ReminderState.init(rawValue:))) else {
            return nil
        }
        var update = FastInsert(
            try db.cachedStatement(
                sql: """
                    UPDATE reminder SET state = 'delivered', attempts = MAX(attempts, ?), last_error = NULL,
                        lease_token = NULL, lease_expires_at = NULL, updated_at = ?
                    WHERE procedure_id = ? AND step_id = ? AND state IN ('cancelled', 'scheduled', 'claimed')
                    """
            ), in: db)
        update.bind(attempts)
        update.bind(now.timeIntervalSince1970)
        update.bind(reminder.procedure.id)
        update.bind(reminder.stepID)
        try update.run()
        return note
    }

    /// Returns lapsed claims to the queue (a crashed or stalled dispatcher's work). With `all`, every
    /// claim is returned regardless of its lease: only for a daemon starting up under its lock, when
    /// no other dispatcher can hold one. Returns how many came back.
    @discardableResult
    public func recoverClaims(now: Date, all: Bool) async throws -> Int {
        try await transaction { db in
            var recover = FastInsert(
                try db.cachedStatement(
                    sql: """
                        UPDATE reminder INDEXED BY reminder_leased
                        SET state = 'scheduled', lease_token = NULL, lease_expires_at = NULL, updated_at = ?
                        WHERE state = 'claimed' AND (? OR lease_expires_at <= ?)
                        RETURNING procedure_id, step_id,
                            (SELECT patient_id FROM procedure WHERE id = reminder.procedure_id)
                        """
                ), in: db)
            recover.bind(now.timeIntervalSince1970)
            recover.bind(all ? 1 : 0)
            recover.bind(now.timeIntervalSince1970)
            let detail = all ? "claim held at shutdown or crash returned to the queue" : "lease lapsed"
            var entries: [LogEntry] = []
            try recover.rows { row in
                entries.append(
                    LogEntry(
                        at: now, event: .recovered, procedureID: row.text(0), patientID: row.text(2),
                        stepID: row.text(1), detail: detail
                    )
                )
            }
            guard !entries.isEmpty else { return 0 }
            var log = try LogAppender(db)
            try log.append(contentsOf: entries)
            return entries.count
        }
    }

    /// When the earliest scheduled reminder falls due, if any.
    public func nextDueTime() async throws -> Date? {
        try await read { db in try Self.earliestDue(db) }
    }

    static func earliestDue(_ db: Database) throws -> Date? {
        try Double.fetchOne(db, sql: "SELECT MIN(due_at) FROM reminder INDEXED BY reminder_due WHERE state = 'scheduled'")
            .map(Date.init(timeIntervalSince1970:))
    }

    /// When the pipeline next has something to do by the clock: the earliest due time or lease
    /// expiry, in one read.
    public func nextDueOrLeaseExpiry() async throws -> Date? {
        try await read { db in
            try Double.fetchOne(
                db,
                sql: """
                    SELECT MIN(t) FROM (
                        SELECT MIN(due_at) AS t FROM reminder INDEXED BY reminder_due WHERE state = 'scheduled'
                        UNION ALL
                        SELECT MIN(lease_expires_at) FROM reminder INDEXED BY reminder_leased WHERE state = 'claimed')
                    """
            ).map(Date.init(timeIntervalSince1970:))
        }
    }

    /// When the earliest lease lapses, if any claim is held.
    public func nextLeaseExpiry() async throws -> Date? {
        try await read { db in
            try Double.fetchOne(
                db, sql: "SELECT MIN(lease_expires_at) FROM reminder INDEXED BY reminder_leased WHERE state = 'claimed'")
                .map(Date.init(timeIntervalSince1970:))
        }
    }

    /// Appends a daemon-level event (such as a config reload) to the log.
    public func logEvent(_ entry: LogEntry) async throws {
        try await transaction { db in
            var log = try LogAppender(db)
            try log.append(entry)
        }
    }
}

/// What recording one outcome changes: the reminder's new state and the log rows that say so. The
/// same for every engine; only the writing differs.
struct ReminderChange {
    var state: ReminderState
    var dueAt: Date
    var attempts: Int
    var lastError: String?
    var failedRoutes: Set<String>
    var entries: [LogEntry]
    /// The words sent, to keep once by their hash.
    var message: SentMessage?
    var messageHash = ""

    init(_ reminder: ClaimedReminder, _ resolution: Resolution, now: Date) {
        var sent: SentMessage?
        var messageHash = ""
        let base = LogEntry(
            at: now, event: .attempt, procedureID: reminder.procedure.id,
            patientID: reminder.procedure.patient.id, stepID: reminder.stepID
        )
        /// A state-change row for this reminder.
        func stateRow(_ event: LogEvent, _ detail: String) -> LogEntry {
            var entry = base
            entry.event = event
            entry.detail = detail
            return entry
        }
        var state: ReminderState
        var dueAt = reminder.dueAt
        var attempts = reminder.attempt - 1
        var lastError: String?
        var failedRoutes = reminder.failedRoutes
        var entries: [LogEntry] = []
        switch resolution {
        case .attempted(let attempt, let next):
            attempts = reminder.attempt
            for channel in attempt.optedOutChannels {
                var entry = base
                entry.event = .optedOut
                entry.channel = channel
                entry.detail = "patient opted out of \(channel); route passed over"
                entries.append(entry)
            }
            var entry = base
            entry.channel = attempt.channel
            entry.sender = attempt.sender
            entry.destination = attempt.destination
            entry.attempt = reminder.attempt
            entry.startedAt = attempt.startedAt
            entry.endedAt = attempt.endedAt
            entry.latencyMilliseconds = attempt.endedAt.timeIntervalSince(attempt.startedAt) * 1000
            entry.responseCode = attempt.result.responseCode
            if let message = attempt.message {
                sent = message
                messageHash = message.hash
                entry.messageHash = messageHash
                entry.protocolVersion = message.protocolVersion.hash
            }
            switch attempt.result.outcome {
            case .delivered(let detail):
                entry.outcome = "delivered"
                entry.detail = detail
            case .retry(_, let reason):
                entry.outcome = "retry"
                entry.error = reason
                lastError = reason
            case .failed(let reason):
                entry.outcome = "failed"
                entry.error = reason
                lastError = reason
            }
            entries.append(entry)
            switch next {
            case .delivered:
                state = .delivered
            case .retry(let at):
                state = .scheduled
                dueAt = at
                entries[entries.count - 1].detail = "next try at \(Timestamp.format(at, in: .gmt))"
            case .expired(let reason):
                (state, lastError) = (.expired, reason)
                entries.append(stateRow(.expired, reason))
            case .dead(let reason):
                (state, lastError) = (.dead, reason)
                var dead = stateRow(.dead, reason)
                dead.attempt = reminder.attempt
                entries.append(dead)
            case .nextRoute(let at, let reason):
                (state, dueAt) = (.scheduled, at)
                failedRoutes.insert("\(attempt.channel):\(attempt.destination)")
                entries[entries.count - 1].detail = reason
            }
        case .expired(let reason):
            (state, lastError) = (.expired, reason)
            entries.append(stateRow(.expired, reason))
        case .deferred(let until, let reason):
            (state, dueAt) = (.scheduled, until)
            entries.append(stateRow(.deferred, reason))
        case .skipped(let reason):
            (state, lastError) = (.skipped, reason)
            entries.append(stateRow(.skipped, reason))
        case .dead(let reason):
            (state, lastError) = (.dead, reason)
            entries.append(stateRow(.dead, reason))
        case .released:
            state = .scheduled
        }
        (self.state, self.dueAt, self.attempts, self.lastError, self.failedRoutes, self.entries) = (
            state, dueAt, attempts, lastError, failedRoutes, entries
        )
        (self.message, self.messageHash) = (sent, messageHash)
    }

    /// The failed-routes column: sorted keys, one a line, or nil.
    var failedRoutesText: String? { failedRoutes.isEmpty ? nil : failedRoutes.sorted().joined(separator: "\n") }

    var hasAttempt: Bool { entries.contains { $0.event == .attempt } }

    /// What a delivery whose lease was lost says, given the reminder's state now; nil when that state
    /// (delivered, expired, dead, skipped) stands.
    static func deliveredNote(current: ReminderState?) -> String? {
        switch current {
        case .cancelled: "delivered after cancel request: the message was already under way"
        case .scheduled: "delivered after its lease lapsed: marked delivered, not sent again"
        case .claimed:
            "delivered after its lease lapsed and it was claimed again: marked delivered; "
                + "the newer try does not change that"
        default: nil
        }
    }

    /// Appends `note` to the attempt row's detail.
    mutating func noteOnAttempt(_ note: String) {
        guard let index = entries.firstIndex(where: { $0.event == .attempt }) else { return }
        entries[index].detail = (entries[index].detail.map { $0 + "; " } ?? "") + note
    }

    /// The lease was lost: the attempt happened and is logged; the reminder's state belongs to
    /// whoever holds it now.
    mutating func fenceOff() {
        for index in entries.indices where entries[index].event != .attempt {
            entries[index].detail = (entries[index].detail ?? "") + " (not applied: lease lost)"
        }
        noteOnAttempt("lease lost before recording")
    }
}

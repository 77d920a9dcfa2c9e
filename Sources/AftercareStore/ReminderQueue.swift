import AftercareCore
import Foundation

/// The reminder queue and its delivery log, as the daemon and the staff commands use it, whichever
/// engine keeps it: ``ReminderStore`` (one SQLite file, one daemon; the default) or
/// ``PostgresReminderStore`` (one PostgreSQL database shared by several daemons on several hosts).
///
/// Every change to a reminder is written in the same transaction as its delivery-log row, and the
/// log is one hash chain on both engines, so `audit verify`, `head`, `--expect-head` and `prune`
/// mean the same thing on each.
public protocol ReminderQueue: AnyObject, Sendable {
    /// Where the queue lives, for messages (a file path, or a URL without its password).
    var location: String { get }

    /// Takes this daemon's place on the queue for as long as the store is open, before it returns
    /// its earlier claims (``recoverClaims(now:all:)`` with `all`). On a shared database a second
    /// live daemon under the same node name is refused here: its start-up recovery would take the
    /// first one's claims while they are being sent.
    func joinQueue() async throws

    // MARK: Intake

    /// Applies intake files in one transaction, each file all-or-nothing, one outcome per file in
    /// order. Throws only if the database itself fails, in which case nothing was applied.
    func ingest(_ files: [IntakeBatchFile], now: Date, plan: @escaping PlanFunction) async throws
        -> [IntakeFileOutcome]

    /// Closes booked appointments never marked performed within `closeAfter` of their planned time.
    func closeUnconfirmedAppointments(now: Date, closeAfter: TimeInterval) async throws -> AppointmentSweepResult

    // MARK: Dispatch

    /// Claims up to `limit` reminders due at `now`, earliest first, under a fresh fenced lease.
    func claimDue(now: Date, limit: Int, leaseSeconds: Double) async throws -> [ClaimedReminder]

    /// Records how claimed reminders left the dispatcher, with their log rows, in one transaction.
    /// Returns how many outcomes were fenced off (logged, not applied).
    @discardableResult
    func record(_ outcomes: [(ClaimedReminder, Resolution)], now: Date) async throws -> Int

    /// Returns lapsed claims to the queue; with `all`, also every claim this daemon's earlier run
    /// held (on an unshared queue: every claim). Returns how many came back.
    @discardableResult
    func recoverClaims(now: Date, all: Bool) async throws -> Int

    /// When the earliest scheduled reminder falls due, if any.
    func nextDueTime() async throws -> Date?

    /// The earliest due time or lease expiry, in one read.
    func nextDueOrLeaseExpiry() async throws -> Date?

    /// When the earliest lease lapses, if any claim is held.
    func nextLeaseExpiry() async throws -> Date?

    /// Appends a daemon-level event (such as a config reload) to the log.
    func logEvent(_ entry: LogEntry) async throws

    /// Keeps the texts of the protocol versions in use, so every attempt row can name its version.
    func rememberProtocols(_ versions: [ProtocolVersion], now: Date) async throws

    /// Calls `onChange` whenever another daemon may have made work due sooner (new reminders, a
    /// replay, a retry), until the store is closed. An unshared queue never calls it.
    func watchQueue(_ onChange: @escaping @Sendable () -> Void) async

    // MARK: Queries

    func status(now: Date) async throws -> QueueStatus
    func dueOrClaimedCount(now: Date) async throws -> Int
    func hasDueOrClaimed(now: Date) async throws -> Bool
    func procedure(_ id: String) async throws -> (ProcedureView, [ReminderView])?
    func procedures(patientID: String?, pendingOnly: Bool, limit: Int) async throws -> [(ProcedureView, [ReminderView])]
    func replayable(_ scope: ReplayScope, now: Date) async throws -> Int

    // MARK: The delivery log

    func auditLog(_ filter: AuditFilter) async throws -> [LogRecord]
    func logHead() async throws -> (seq: Int64, hash: String)?
    func pruneLog(before: Date, now: Date, actor: String) async throws -> PruneResult
    func verifyLog(anchor: LogAnchor?) async throws -> ChainReport
    func attemptMessage(seq: Int64) async throws -> AttemptMessage

    /// Releases the store's connections. Calls after it fail.
    func close() async
}

extension ReminderQueue {
    /// Returns lapsed claims to the queue.
    @discardableResult
    public func recoverClaims(now: Date) async throws -> Int {
        try await recoverClaims(now: now, all: false)
    }

    /// Recomputes the chain from its first row to the head. A pruned log starts where its newest
    /// checkpoint row says, after the hash it names; rows before that must be gone.
    public func verifyLog() async throws -> ChainVerdict {
        try await verifyLog(anchor: nil).verdict
    }
}

extension ReminderStore: ReminderQueue {
    public var location: String { path }

    /// One file, one daemon: the state directory's lock already keeps a second daemon out.
    public func joinQueue() async throws {}

    /// The only daemon is the one that changes the queue, and it wakes its own pipeline.
    public func watchQueue(_ onChange: @escaping @Sendable () -> Void) async {}

    /// GRDB closes the file when the store is released.
    public func close() async {}
}

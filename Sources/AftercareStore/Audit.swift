import AftercareCore
import Foundation
import GRDB

/// A delivery-log row as read back, with its place in the chain.
public struct LogRecord: Sendable, Hashable {
    public var seq: Int64
    public var entry: LogEntry
    public var hash: String

    public init(seq: Int64, entry: LogEntry, hash: String) {
        self.seq = seq
        self.entry = entry
        self.hash = hash
    }
}

/// Which delivery-log rows to read.
public struct AuditFilter: Sendable, Hashable {
    public var patientID: String?
    public var procedureID: String?
    public var stepID: String?
    /// An attempt outcome (`delivered`, `retry`, `failed`) or an event name (`expired`, `cancelled`, …).
    public var outcome: String?
    public var channel: String?
    public var since: Date?
    public var until: Date?
    public var limit: Int?

    public init(
        patientID: String? = nil, procedureID: String? = nil, stepID: String? = nil, outcome: String? = nil,
        channel: String? = nil, since: Date? = nil, until: Date? = nil, limit: Int? = nil
    ) {
        self.patientID = patientID
        self.procedureID = procedureID
        self.stepID = stepID
        self.outcome = outcome
        self.channel = channel
        self.since = since
        self.until = until
        self.limit = limit
    }
}

extension ReminderStore {
    /// Log rows matching `filter`, oldest first.
    public func auditLog(_ filter: AuditFilter) async throws -> [LogRecord] {
        try await read { db in
            var conditions: [String] = []
            var arguments: StatementArguments = []
            if let value = filter.patientID {
                conditions.append("patient_id = ?")
                arguments += [value]
            }
            if let value = filter.procedureID {
                conditions.append("procedure_id = ?")
                arguments += [value]
            }
            if let value = filter.stepID {
                conditions.append("step_id = ?")
                arguments += [value]
            }
            if let value = filter.outcome {
                conditions.append("(outcome = ? OR event = ?)")
                arguments += [value, value]
            }
            if let value = filter.channel {
                conditions.append("channel = ?")
                arguments += [value]
            }
            if let value = filter.since {
                conditions.append("at >= ?")
                arguments += [value.timeIntervalSince1970]
            }
            if let value = filter.until {
                conditions.append("at < ?")
                arguments += [value.timeIntervalSince1970]
            }
            var sql = "SELECT \(Self.logColumns) FROM delivery_log"
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            sql += " ORDER BY seq"
            if let limit = filter.limit {
                // The newest `limit` rows, still shown oldest first.
                sql = "SELECT * FROM (\(sql.replacingOccurrences(of: "ORDER BY seq", with: "ORDER BY seq DESC")) LIMIT ?) ORDER BY seq"
                arguments += [limit]
            }
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
                LogRecord(seq: row["seq"], entry: Self.logEntry(row), hash: row["hash"])
            }
        }
    }

    /// The chain's head: the last row's sequence number and hash (`nil` for an empty log).
    public func logHead() async throws -> (seq: Int64, hash: String)? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT seq, hash FROM delivery_log ORDER BY seq DESC LIMIT 1").map {
                (seq: $0["seq"], hash: $0["hash"])
            }
        }
    }

    /// Removes rows older than `before` and appends a checkpoint row, itself part of the chain, that
    /// names the first kept row and the hash it follows, so what remains still verifies.
    ///
    /// Refused, with nothing removed, when the chain does not verify (a prune would turn tampering
    /// into an "intact" log) or when `before` is in the future. Always kept: the newest row (the
    /// chain needs a head) and every row from the first one about a procedure that still has a
    /// reminder scheduled or under way, so the story of a patient still in care stays whole.
    public func pruneLog(before: Date, now: Date, actor: String) async throws -> PruneResult {
        try PruneRules.checkCutoff(before, now: now)
        return try await transaction { db in
            let report = try Self.walkChain(db, anchor: nil)
            try PruneRules.requireIntact(report.verdict)
            guard
                let last = try Int64.fetchOne(
                    db, sql: "SELECT MAX(seq) FROM delivery_log WHERE at < ?",
                    arguments: [before.timeIntervalSince1970]),
                let head = try Int64.fetchOne(db, sql: "SELECT MAX(seq) FROM delivery_log")
            else { return PruneResult(removed: 0, head: nil, keptForPending: nil) }
            let pending = try Int64.fetchOne(
                db,
                sql: """
                    SELECT MIN(seq) FROM delivery_log WHERE procedure_id IN
                        (SELECT procedure_id FROM reminder WHERE state IN ('scheduled', 'claimed'))
                    """)
            let (cut, keptForPending) = PruneRules.cut(last: last, head: head, pending: pending)
            let first = try Int64.fetchOne(db, sql: "SELECT MIN(seq) FROM delivery_log") ?? 1
            guard cut >= first,
                let anchor = try String.fetchOne(
                    db, sql: "SELECT hash FROM delivery_log WHERE seq = ?", arguments: [cut])
            else { return PruneResult(removed: 0, head: nil, keptForPending: keptForPending) }
            try db.execute(sql: "INSERT OR REPLACE INTO store_flag (name, value) VALUES ('pruning', 1)")
            try db.execute(sql: "DELETE FROM delivery_log WHERE seq <= ?", arguments: [cut])
            let removed = db.changesCount
            try db.execute(sql: "DELETE FROM store_flag WHERE name = 'pruning'")
            var log = try LogAppender(db)
            try log.append(
                LogEntry(
                    at: now, event: .checkpoint, actor: actor,
                    detail: "pruned rows \(first)-\(cut) (before \(Timestamp.format(before, in: .gmt))); "
                        + "chain resumes at row \(cut + 1) after hash \(anchor)"
                )
            )
            let newHead = try Row.fetchOne(db, sql: "SELECT seq, hash FROM delivery_log ORDER BY seq DESC LIMIT 1")
                .map { LogAnchor(seq: $0["seq"], hash: $0["hash"]) }
            return PruneResult(removed: removed, head: newHead, keptForPending: keptForPending)
        }
    }
}

/// What a prune did.
public struct PruneResult: Sendable, Hashable {
    /// How many rows were removed (0: nothing was old enough, and no checkpoint was written).
    public var removed: Int
    /// The new head, the checkpoint row, to keep outside the database; `nil` when nothing was removed.
    public var head: LogAnchor?
    /// The first row kept only because its procedure still has a reminder pending, if that held the cut back.
    public var keptForPending: Int64?
}

/// What a prune refuses, on either engine.
enum PruneRules {
    static func checkCutoff(_ before: Date, now: Date) throws {
        guard before <= now else {
            throw StoreError(
                "the cut-off \(Timestamp.format(before, in: .gmt)) is in the future; only rows older than now "
                    + "(\(Timestamp.format(now, in: .gmt))) can be pruned")
        }
    }

    /// The last row to remove: the newest before the cut-off, never the head (the checkpoint chains
    /// on from it), and nothing from the first row of a procedure with reminders still pending
    /// (`pending`), which is then returned as kept.
    static func cut(last: Int64, head: Int64, pending: Int64?) -> (cut: Int64, keptForPending: Int64?) {
        let cut = min(last, head - 1)
        if let pending, pending - 1 < cut { return (pending - 1, pending) }
        return (cut, nil)
    }

    /// A broken chain is never pruned: that would hide where it broke.
    static func requireIntact(_ verdict: ChainVerdict) throws {
        if case .broken(let seq, let reason) = verdict {
            throw StoreError(
                "the delivery log is BROKEN at row \(seq) (\(reason)); nothing pruned, since pruning would "
                    + "hide it. Keep a copy of the database and investigate ('aftercare audit verify')")
        }
    }
}

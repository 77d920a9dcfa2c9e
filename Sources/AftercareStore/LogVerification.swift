import AftercareCore
import Foundation
import GRDB

/// The result of walking the delivery log's hash chain.
public enum ChainVerdict: Sendable, Hashable {
    /// Every row's hash matches; `rows` rows, ending in `head`.
    case intact(rows: Int, head: String)
    /// The first row that does not match, and why.
    case broken(seq: Int64, reason: String)
}

extension ReminderStore {
    /// Recomputes the chain from the first row (or the last checkpoint's predecessor) to the head.
    public func verifyLog() async throws -> ChainVerdict {
        try await read { db in
            var previous = LogChain.genesis
            var expectedSeq: Int64?
            var count = 0
            let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM delivery_log ORDER BY seq")
            while let row = try cursor.next() {
                let seq: Int64 = row["seq"]
                if let expected = expectedSeq, seq != expected {
                    return .broken(seq: expected, reason: "row \(expected) is missing (next row is \(seq))")
                }
                let entry = Self.logEntry(row)
                if entry.event == .checkpoint, count == 0 {
                    // A pruned log starts at a checkpoint that carries the hash of the last pruned row.
                    previous = entry.detail.flatMap { $0.split(separator: " ").last.map(String.init) } ?? previous
                }
                let stored: String = row["hash"]
                let computed = LogChain.hash(previous: previous, seq: seq, entry)
                guard computed == stored else {
                    return .broken(seq: seq, reason: "row \(seq) does not match its hash (edited, reordered or inserted)")
                }
                previous = stored
                expectedSeq = seq + 1
                count += 1
            }
            return .intact(rows: count, head: previous)
        }
    }

    static func logEntry(_ row: Row) -> LogEntry {
        func date(_ column: String) -> Date? { (row[column] as Double?).map(Date.init(timeIntervalSince1970:)) }
        return LogEntry(
            at: date("at")!, event: LogEvent(rawValue: row["event"]) ?? .attempt, procedureID: row["procedure_id"],
            patientID: row["patient_id"], stepID: row["step_id"], channel: row["channel"], sender: row["sender"],
            destination: row["destination"], attempt: row["attempt"], startedAt: date("started_at"),
            endedAt: date("ended_at"), outcome: row["outcome"], responseCode: row["response_code"],
            error: row["error"], latencyMilliseconds: row["latency_ms"], actor: row["actor"], detail: row["detail"]
        )
    }
}

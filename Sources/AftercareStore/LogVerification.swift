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
    /// Recomputes the chain from its first row to the head. A pruned log starts where its newest
    /// checkpoint row says, after the hash it names; rows before that must be gone.
    public func verifyLog() async throws -> ChainVerdict {
        try await read { db in
            var previous = LogChain.genesis
            var expectedSeq: Int64 = 1
            if let detail = try String.fetchOne(
                db, sql: "SELECT detail FROM delivery_log WHERE event = 'checkpoint' ORDER BY seq DESC LIMIT 1"),
                let anchor = Self.checkpointAnchor(detail)
            {
                expectedSeq = anchor.seq
                previous = anchor.previous
            }
            var count = 0
            let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM delivery_log ORDER BY seq")
            while let row = try cursor.next() {
                let seq: Int64 = row["seq"]
                if seq < expectedSeq, count == 0 {
                    return .broken(seq: seq, reason: "row \(seq) precedes the checkpoint's first kept row \(expectedSeq)")
                }
                if seq != expectedSeq {
                    return .broken(
                        seq: expectedSeq,
                        reason: count == 0
                            ? "row \(expectedSeq) is missing (the log starts at row \(seq))"
                            : "row \(expectedSeq) is missing (next row is \(seq))"
                    )
                }
                let stored: String = row["hash"]
                guard LogChain.hash(previous: previous, seq: seq, Self.logEntry(row)) == stored else {
                    return .broken(seq: seq, reason: "row \(seq) does not match its hash (edited, reordered or replaced)")
                }
                previous = stored
                expectedSeq = seq + 1
                count += 1
            }
            return .intact(rows: count, head: previous)
        }
    }

    /// The first kept row and the hash before it, from a checkpoint's detail text.
    static func checkpointAnchor(_ detail: String) -> (seq: Int64, previous: String)? {
        guard let resumes = detail.range(of: "chain resumes at row ") else { return nil }
        let rest = detail[resumes.upperBound...].split(separator: " ")
        guard rest.count == 4, let seq = Int64(rest[0]), rest[1] == "after", rest[2] == "hash" else { return nil }
        return (seq, String(rest[3]))
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

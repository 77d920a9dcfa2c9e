import AftercareCore
import Foundation
import GRDB
import GRDBSQLite

/// The result of walking the delivery log's hash chain.
public enum ChainVerdict: Sendable, Hashable {
    /// Every row's hash matches; `rows` rows, ending in `head`.
    case intact(rows: Int, head: String)
    /// The first row that does not match, and why.
    case broken(seq: Int64, reason: String)
}

/// A head kept outside the database (`aftercare audit head`, the daemon's journal lines, the
/// output of a prune), to hold the log to: `seq:hash` or just the hash.
public struct LogAnchor: Sendable, Hashable, CustomStringConvertible {
    public var seq: Int64?
    /// Lower-case hex SHA-256.
    public var hash: String

    public init(seq: Int64?, hash: String) {
        self.seq = seq
        self.hash = hash
    }

    /// Parses `seq:hash` or `hash`; the hash must be 64 hex digits.
    public init(parsing text: String) throws(StoreError) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        var seq: Int64?
        if parts.count == 2 {
            guard let number = Int64(parts[0]), number >= 1 else {
                throw StoreError(
                    "'\(Self.shown(text))' is not a head: expected ROW:HASH or HASH (row a positive number)")
            }
            seq = number
        }
        let hash = String(parts[parts.count - 1]).lowercased()
        guard hash.utf8.count == 64, hash.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw StoreError(
                "'\(Self.shown(text))' is not a head: the hash must be 64 hexadecimal digits "
                    + "(as 'aftercare audit head' prints it)")
        }
        self.init(seq: seq, hash: hash)
    }

    public var description: String { seq.map { "\($0):\(hash)" } ?? hash }

    /// Untrusted text, bounded and with control characters escaped, for an error line.
    private static func shown(_ text: String) -> String { UntrustedText.escaped(text, limit: 80) }
}

/// The checkpoint a pruned chain starts from, as its row says.
public struct LogCheckpoint: Sendable, Hashable {
    /// The checkpoint row itself.
    public var seq: Int64
    /// The first row the chain kept, and the hash it follows.
    public var firstKept: Int64
    public var previousHash: String
    /// Which rows it says were removed (`nil` if its text does not say).
    public var pruned: ClosedRange<Int64>?
    public var at: Date
    public var actor: String?

    /// "checkpoint at row 812 (rows 1-700 pruned on 2026-12-01T09:00:00Z by root)".
    public var summary: String {
        let range = pruned.map { "rows \($0.lowerBound)-\($0.upperBound)" } ?? "rows before \(firstKept)"
        return "checkpoint at row \(seq) (\(range) pruned on \(Timestamp.format(at, in: .gmt))"
            + (actor.map { " by \($0)" } ?? "") + ")"
    }
}

/// What a walk of the chain found.
public struct ChainReport: Sendable, Hashable {
    public var verdict: ChainVerdict
    /// The newest checkpoint, when the log has been pruned: the chain is proven only from there on.
    public var checkpoint: LogCheckpoint?
    /// The row an anchor matched, when one was given and held.
    public var anchoredSeq: Int64?
}

extension ReminderStore {
    /// Recomputes the chain from its first row to the head. A pruned log starts where its newest
    /// checkpoint row says, after the hash it names; rows before that must be gone.
    public func verifyLog() async throws -> ChainVerdict {
        try await verifyLog(anchor: nil).verdict
    }

    /// Walks the chain and, with an `anchor`, holds it to a head kept elsewhere: the anchored row
    /// must still be in the chain with that hash, and no checkpoint may come after it. A prune
    /// after the anchor was kept (legitimate or forged by someone with the file) removes history
    /// the anchor vouched for, so the anchor no longer passes; a legitimate prune prints the new
    /// head to keep instead.
    public func verifyLog(anchor: LogAnchor?) async throws -> ChainReport {
        try await read { db in try Self.walkChain(db, anchor: anchor) }
    }

    static let logColumns = """
        seq, at, event, CAST(procedure_id AS BLOB) AS procedure_id, CAST(patient_id AS BLOB) AS patient_id,
        CAST(step_id AS BLOB) AS step_id, CAST(channel AS BLOB) AS channel, CAST(sender AS BLOB) AS sender,
        CAST(destination AS BLOB) AS destination, attempt, started_at, ended_at, CAST(outcome AS BLOB) AS outcome,
        response_code, CAST(error AS BLOB) AS error, latency_ms, CAST(actor AS BLOB) AS actor,
        CAST(detail AS BLOB) AS detail, CAST(protocol_version AS BLOB) AS protocol_version,
        CAST(message_hash AS BLOB) AS message_hash, hash
        """

    static func walkChain(_ db: Database, anchor: LogAnchor?) throws -> ChainReport {
        var previous = LogChain.genesis
        var expectedSeq: Int64 = 1
        var checkpoint: LogCheckpoint?
        if let row = try Row.fetchOne(
            db,
            sql: """
                SELECT seq, at, CAST(actor AS BLOB) AS actor, CAST(detail AS BLOB) AS detail FROM delivery_log
                WHERE event = 'checkpoint' ORDER BY seq DESC LIMIT 1
                """),
            let found = checkpointAnchor(row.text("detail") ?? "")
        {
            expectedSeq = found.seq
            previous = found.previous
            checkpoint = LogCheckpoint(
                seq: row["seq"], firstKept: found.seq, previousHash: found.previous,
                pruned: prunedRange(row.text("detail") ?? ""), at: Date(timeIntervalSince1970: row["at"]),
                actor: row.text("actor"))
        }
        func broken(_ seq: Int64, _ reason: String) -> ChainReport {
            ChainReport(verdict: .broken(seq: seq, reason: reason), checkpoint: checkpoint, anchoredSeq: nil)
        }
        var count = 0
        var anchoredSeq: Int64?
        // The walk reads SQLite's columns directly (see ChainRowHasher), byte for byte as stored.
        var previousBytes = [UInt8](Data(hexString: previous) ?? Data(count: 32))
        var hasher = ChainRowHasher()
        let statement = try db.makeStatement(sql: "SELECT \(ChainRowHasher.columns) FROM delivery_log ORDER BY seq")
        let raw = statement.sqliteStatement
        defer { sqlite3_reset(raw) }
        while true {
            let code = sqlite3_step(raw)
            if code == SQLITE_DONE { break }
            guard code == SQLITE_ROW else {
                throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
            }
            let seq = sqlite3_column_int64(raw, 0)
            if seq < expectedSeq, count == 0 {
                return broken(seq, "row \(seq) precedes the checkpoint's first kept row \(expectedSeq)")
            }
            if seq != expectedSeq {
                return broken(
                    expectedSeq,
                    count == 0
                        ? "row \(expectedSeq) is missing (the log starts at row \(seq))"
                        : "row \(expectedSeq) is missing (next row is \(seq))"
                )
            }
            let digest = hasher.hash(raw, previous: previousBytes)
            let stored = ChainRowHasher.storedHash(raw)
            // A column of a type the appender never writes is an edit, whatever its value.
            guard !hasher.foreignType, let stored, digest.elementsEqual(stored) else {
                return broken(seq, "row \(seq) does not match its hash (edited, reordered or replaced)")
            }
            if let anchor {
                let storedText = Hex.encode(stored)
                if anchor.seq == seq, storedText != anchor.hash {
                    return broken(seq, "row \(seq) is not the anchored row: its hash is \(storedText), not \(anchor.hash)")
                }
                if anchor.seq == nil || anchor.seq == seq, storedText == anchor.hash { anchoredSeq = seq }
            }
            previousBytes = stored
            expectedSeq = seq + 1
            count += 1
        }
        previous = count == 0 ? previous : Hex.encode(previousBytes)
        if let anchor {
            guard let anchoredSeq else {
                return broken(
                    anchor.seq ?? expectedSeq,
                    "the anchored head \(anchor) is not in the chain "
                        + "(pruned, truncated or rewritten since it was kept)")
            }
            if let checkpoint, checkpoint.seq > anchoredSeq {
                return broken(
                    checkpoint.seq,
                    "\(checkpoint.summary) was written after the anchored row \(anchoredSeq): history the anchor "
                        + "vouched for is gone; if you ran that prune, anchor the head it printed instead")
            }
        }
        return ChainReport(
            verdict: .intact(rows: count, head: previous), checkpoint: checkpoint, anchoredSeq: anchoredSeq)
    }

    /// The first kept row and the hash before it, from a checkpoint's detail text.
    static func checkpointAnchor(_ detail: String) -> (seq: Int64, previous: String)? {
        guard let resumes = detail.range(of: "chain resumes at row ") else { return nil }
        let rest = detail[resumes.upperBound...].split(separator: " ")
        guard rest.count == 4, let seq = Int64(rest[0]), rest[1] == "after", rest[2] == "hash" else { return nil }
        return (seq, String(rest[3]))
    }

    /// "pruned rows 1-700 (…" → 1...700.
    static func prunedRange(_ detail: String) -> ClosedRange<Int64>? {
        guard detail.hasPrefix("pruned rows ") else { return nil }
        let bounds = detail.dropFirst("pruned rows ".count).prefix { $0 != " " }.split(separator: "-")
        guard bounds.count == 2, let low = Int64(bounds[0]), let high = Int64(bounds[1]), low <= high else {
            return nil
        }
        return low...high
    }

    /// A row selected with ``logColumns``.
    static func logEntry(_ row: Row) -> LogEntry {
        func date(_ column: String) -> Date? { (row[column] as Double?).map(Date.init(timeIntervalSince1970:)) }
        return LogEntry(
            at: date("at")!, event: LogEvent(rawValue: row["event"]) ?? .attempt, procedureID: row.text("procedure_id"),
            patientID: row.text("patient_id"), stepID: row.text("step_id"), channel: row.text("channel"),
            sender: row.text("sender"), destination: row.text("destination"), attempt: row["attempt"],
            startedAt: date("started_at"), endedAt: date("ended_at"), outcome: row.text("outcome"),
            responseCode: row["response_code"], error: row.text("error"), latencyMilliseconds: row["latency_ms"],
            actor: row.text("actor"), detail: row.text("detail"), protocolVersion: row.text("protocol_version"),
            messageHash: row.text("message_hash")
        )
    }
}

extension Row {
    /// A text column read byte for byte. GRDB reads text as a C string, which ends at the first NUL,
    /// so text that must round-trip exactly is selected `CAST(column AS BLOB)` and decoded here.
    func text(_ column: String) -> String? {
        (self[column] as Data?).map { String(decoding: $0, as: UTF8.self) }
    }
}

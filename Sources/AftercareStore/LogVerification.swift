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

    public var isIntact: Bool {
        if case .intact = self { return true }
        return false
    }
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
    /// Walks the chain and, with an `anchor`, holds it to a head kept elsewhere: the anchored row
    /// must still be in the chain with that hash, and no checkpoint may come after it. A prune
    /// after the anchor was kept (legitimate or forged by someone with the file) removes history
    /// the anchor vouched for, so the anchor no longer passes; a legitimate prune prints the new
    /// head to keep instead.
    ///
    /// On a large log the rows' hashes are checked first in two halves at once, each on a reader of
    /// its own: a row's hash only needs the hash stored in the row before it, so the halves need
    /// nothing from each other. The walk then follows the chain in order (the seqs, the checkpoint,
    /// the anchor), reading only the seq and hash of the rows already checked. If either half finds
    /// a row that does not match, the walk hashes every row itself, so the report names the first
    /// broken row exactly as a plain walk does.
    public func verifyLog(anchor: LogAnchor?) async throws -> ChainReport {
        try await verifyLog(anchor: anchor, halvesFrom: Self.halvesFrom)
    }

    /// ``verifyLog(anchor:)`` checking in halves from `halvesFrom` rows (tests use small logs).
    func verifyLog(anchor: LogAnchor?, halvesFrom: Int64) async throws -> ChainReport {
        let checkedThrough = try await checkHashesInHalves(from: halvesFrom)
        return try await read { db in try Self.walkChain(db, anchor: anchor, hashesCheckedThrough: checkedThrough) }
    }

    /// Below this many rows one walk is quick enough.
    static let halvesFrom: Int64 = 50_000

    /// Checks every row's hash against the row before it in two halves at once. Returns the last
    /// row checked when every row matched, `nil` when one did not (or the log is small or has gaps).
    func checkHashesInHalves(from minimum: Int64) async throws -> Int64? {
        let bounds = try await read { db -> [Int64]? in
            guard let row = try Row.fetchOne(db, sql: "SELECT MIN(seq), MAX(seq), COUNT(*) FROM delivery_log"),
                let low: Int64 = row[0], let high: Int64 = row[1], let count: Int64 = row[2]
            else { return nil }
            return [low, high, count]
        }
        guard let bounds, bounds[2] >= minimum, bounds[1] - bounds[0] + 1 == bounds[2] else { return nil }
        let (low, high) = (bounds[0], bounds[1])
        let middle = low + (high - low) / 2
        async let first = read { db in try Self.hashesMatch(db, from: low, through: middle) }
        async let second = read { db in try Self.hashesMatch(db, from: middle + 1, through: high) }
        let matched = try await (first, second)
        return matched.0 && matched.1 ? high : nil
    }

    /// Whether every row from `low` through `high` hashes, chained to the hash stored in the row
    /// before it (or the chain's start), to its own stored hash.
    static func hashesMatch(_ db: Database, from low: Int64, through high: Int64) throws -> Bool {
        var previous: [UInt8]
        if let text = try String.fetchOne(db, sql: "SELECT hash FROM delivery_log WHERE seq = ?", arguments: [low - 1]) {
            guard let bytes = Data(hexString: text), bytes.count == 32 else { return false }
            previous = [UInt8](bytes)
        } else {
            let start = try chainStart(db)
            guard start.seq == low, let bytes = Data(hexString: start.previous), bytes.count == 32 else { return false }
            previous = [UInt8](bytes)
        }
        var hasher = ChainRowHasher()
        let statement = try db.makeStatement(
            sql: "SELECT \(ChainRowHasher.columns) FROM delivery_log WHERE seq BETWEEN ? AND ? ORDER BY seq")
        let raw = statement.sqliteStatement
        defer { sqlite3_reset(raw) }
        sqlite3_bind_int64(raw, 1, low)
        sqlite3_bind_int64(raw, 2, high)
        var expected = low
        while true {
            let code = sqlite3_step(raw)
            if code == SQLITE_DONE { break }
            guard code == SQLITE_ROW else {
                throw DatabaseError(
                    resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
            }
            guard sqlite3_column_int64(raw, 0) == expected else { return false }
            let digest = hasher.hash(raw, previous: previous)
            guard !hasher.foreignType, let stored = ChainRowHasher.storedHash(raw), digest.elementsEqual(stored) else {
                return false
            }
            previous = stored
            expected += 1
        }
        return expected == high + 1
    }

    /// Where the chain starts: the first kept row and the hash before it from the latest checkpoint,
    /// or row 1 after the genesis hash.
    static func chainStart(_ db: Database) throws -> ChainStart {
        guard let row = try Row.fetchOne(
            db,
            sql: """
                SELECT seq, at, CAST(actor AS BLOB) AS actor, CAST(detail AS BLOB) AS detail FROM delivery_log
                WHERE event = 'checkpoint' ORDER BY seq DESC LIMIT 1
                """)
        else { return .genesis }
        return ChainStart(
            checkpointSeq: row["seq"], at: row["at"], actor: row.text("actor"), detail: row.text("detail"))
    }

    static let logColumns = """
        seq, at, event, CAST(procedure_id AS BLOB) AS procedure_id, CAST(patient_id AS BLOB) AS patient_id,
        CAST(step_id AS BLOB) AS step_id, CAST(channel AS BLOB) AS channel, CAST(sender AS BLOB) AS sender,
        CAST(destination AS BLOB) AS destination, attempt, started_at, ended_at, CAST(outcome AS BLOB) AS outcome,
        response_code, CAST(error AS BLOB) AS error, latency_ms, CAST(actor AS BLOB) AS actor,
        CAST(detail AS BLOB) AS detail, CAST(protocol_version AS BLOB) AS protocol_version,
        CAST(message_hash AS BLOB) AS message_hash, hash
        """

    static func walkChain(_ db: Database, anchor: LogAnchor?, hashesCheckedThrough: Int64? = nil) throws -> ChainReport {
        var walker = ChainWalker(try chainStart(db), anchor: anchor)
        // The walk reads SQLite's columns directly (see ChainRowHasher), byte for byte as stored.
        var hasher = ChainRowHasher()
        // Rows whose hashes were checked already are read as seq and hash only.
        let checked = hashesCheckedThrough ?? 0
        let light = try db.makeStatement(sql: "SELECT seq, hash FROM delivery_log WHERE seq <= ? ORDER BY seq")
        let full = try db.makeStatement(
            sql: "SELECT \(ChainRowHasher.columns) FROM delivery_log WHERE seq > ? ORDER BY seq")
        sqlite3_bind_int64(light.sqliteStatement, 1, checked)
        sqlite3_bind_int64(full.sqliteStatement, 1, checked)
        defer {
            sqlite3_reset(light.sqliteStatement)
            sqlite3_reset(full.sqliteStatement)
        }
        var raw = light.sqliteStatement
        var hashing = false
        while true {
            var code = sqlite3_step(raw)
            if code == SQLITE_DONE, !hashing {
                raw = full.sqliteStatement
                hashing = true
                code = sqlite3_step(raw)
            }
            if code == SQLITE_DONE { break }
            guard code == SQLITE_ROW else {
                throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
            }
            let broken: ChainReport?
            if hashing {
                broken = walker.take(sqlite3_column_int64(raw, 0)) { previous in
                    let digest = hasher.hash(raw, previous: previous)
                    // A column of a type the appender never writes is an edit, whatever its value.
                    guard !hasher.foreignType, let found = ChainRowHasher.storedHash(raw), digest.elementsEqual(found)
                    else { return nil }
                    return found
                }
            } else {
                broken = walker.take(sqlite3_column_int64(raw, 0)) { _ in ChainRowHasher.storedHash(raw, column: 1) }
            }
            if let broken { return broken }
        }
        return walker.finish()
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

/// Where the chain starts: the first kept row and the hash it follows, as the newest checkpoint row
/// says, or row 1 after the genesis hash.
struct ChainStart: Sendable {
    var seq: Int64
    var previous: String
    var checkpoint: LogCheckpoint?

    static let genesis = ChainStart(seq: 1, previous: LogChain.genesis, checkpoint: nil)

    init(seq: Int64, previous: String, checkpoint: LogCheckpoint?) {
        self.seq = seq
        self.previous = previous
        self.checkpoint = checkpoint
    }

    /// From the newest checkpoint row; the genesis start if its text names no first kept row.
    init(checkpointSeq: Int64, at: Double, actor: String?, detail: String?) {
        guard let found = Self.checkpointAnchor(detail ?? "") else {
            self = .genesis
            return
        }
        let checkpoint = LogCheckpoint(
            seq: checkpointSeq, firstKept: found.seq, previousHash: found.previous,
            pruned: Self.prunedRange(detail ?? ""), at: Date(timeIntervalSince1970: at), actor: actor)
        self.init(seq: found.seq, previous: found.previous, checkpoint: checkpoint)
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
}

/// The chain's rules, whichever engine reads the rows: fed every row from the chain's start in seq
/// order, it decides where the chain breaks (a missing row, a row before the checkpoint, a row that
/// does not match its hash, an anchor that does not hold) and words the report. How a row's hash is
/// recomputed is the engine's: ``take(_:_:)`` asks for it with the hash the row must follow.
struct ChainWalker {
    private let anchor: LogAnchor?
    private let checkpoint: LogCheckpoint?
    private let startPrevious: String
    private var expectedSeq: Int64
    /// The hash the next row follows, as bytes.
    private var previous: [UInt8]
    private var count = 0
    private var anchoredSeq: Int64?

    init(_ start: ChainStart, anchor: LogAnchor?) {
        self.anchor = anchor
        checkpoint = start.checkpoint
        startPrevious = start.previous
        expectedSeq = start.seq
        previous = [UInt8](Data(hexString: start.previous) ?? Data(count: 32))
    }

    /// The last row taken and its hash (before any row: the row before the start and the hash it
    /// left, as the checkpoint names it).
    var last: (seq: Int64, hash: String) {
        (expectedSeq - 1, count == 0 ? startPrevious : Hex.encode(previous))
    }

    /// Takes the next row. `verify` gets the hash the row must follow and returns the row's stored
    /// hash (32 bytes) if the row matches it, `nil` if not. Returns the report if the chain breaks here.
    @inline(__always)
    mutating func take(_ seq: Int64, _ verify: (_ previous: [UInt8]) -> [UInt8]?) -> ChainReport? {
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
        guard let stored = verify(previous) else {
            return broken(seq, "row \(seq) does not match its hash (edited, reordered or replaced)")
        }
        if let anchor {
            let storedText = Hex.encode(stored)
            if anchor.seq == seq, storedText != anchor.hash {
                return broken(seq, "row \(seq) is not the anchored row: its hash is \(storedText), not \(anchor.hash)")
            }
            if anchor.seq == nil || anchor.seq == seq, storedText == anchor.hash { anchoredSeq = seq }
        }
        previous = stored
        expectedSeq = seq + 1
        count += 1
        return nil
    }

    /// The report once every row was taken: intact, unless an anchor was given and does not hold.
    func finish() -> ChainReport {
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
            verdict: .intact(rows: count, head: last.hash), checkpoint: checkpoint, anchoredSeq: anchoredSeq)
    }

    /// A broken report at `seq`, with the checkpoint the walk started from.
    func broken(_ seq: Int64, _ reason: String) -> ChainReport {
        ChainReport(verdict: .broken(seq: seq, reason: reason), checkpoint: checkpoint, anchoredSeq: nil)
    }
}

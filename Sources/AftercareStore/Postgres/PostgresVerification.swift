import AftercareCore
import Foundation
import PostgresNIO

extension PostgresReminderStore {
    /// Walks the chain as ``ReminderStore/verifyLog(anchor:)`` does, with the same rules and words
    /// (``ChainWalker``), in one snapshot; then holds the `log_head` row to the last row: appenders
    /// move the two together, so a head row that disagrees is tampering (rows cut off the end, or
    /// added behind the appender's back) or a bug, and the log is reported broken.
    public func verifyLog(anchor: LogAnchor?) async throws -> ChainReport {
        try await read { connection in try await Self.walkChain(connection, anchor: anchor) }
    }

    /// Rows per query of the walk: a page at a time, by seq, so memory stays flat on a large log.
    static let walkPageRows = 10_000

    /// Where the chain starts (see ``ChainStart``), from the newest checkpoint row.
    static func chainStart(_ connection: PostgresConnection) async throws -> ChainStart {
        let rows = try await connection.rows(
            "SELECT seq, at, actor, detail FROM delivery_log WHERE event = 'checkpoint' ORDER BY seq DESC LIMIT 1"
        ) { try $0.decode((Int64, Double, String?, String?).self) }
        guard let (seq, at, actor, detail) = rows.first else { return .genesis }
        return ChainStart(checkpointSeq: seq, at: at, actor: actor, detail: detail)
    }

    /// Recomputes every row's hash from its start, in pages of `pageRows`, then checks the head row.
    static func walkChain(
        _ connection: PostgresConnection, anchor: LogAnchor?, pageRows: Int = walkPageRows
    ) async throws -> ChainReport {
        var walker = ChainWalker(try await chainStart(connection), anchor: anchor)
        var encoder = LogRowEncoder()
        var after = Int64.min
        while true {
            let page = try await connection.rows(
                """
                SELECT \(unescaped: PostgresLog.columns) FROM delivery_log WHERE seq > \(after)
                ORDER BY seq LIMIT \(pageRows)
                """
            ) { try ChainRow($0) }
            for row in page {
                let broken = walker.take(row.seq) { previous in
                    guard let entry = row.entry, let stored = row.storedHash else { return nil }
                    return encoder.hash(previous: previous, seq: row.seq, entry).elementsEqual(stored) ? stored : nil
                }
                if let broken { return broken }
            }
            guard page.count == pageRows, let last = page.last else { break }
            after = last.seq
        }
        let report = walker.finish()
        guard case .intact = report.verdict else { return report }
        let head = try await connection.rows("SELECT seq, hash FROM log_head WHERE id = 1") {
            try $0.decode((Int64, String).self)
        }
        if let reason = headDisagreement(head.first, last: walker.last) {
            return walker.broken(reason.seq, reason.text)
        }
        return report
    }

    /// Why the `log_head` row does not name the chain's last row, and the row to report; `nil` if it does.
    static func headDisagreement(
        _ head: (seq: Int64, hash: String)?, last: (seq: Int64, hash: String)
    ) -> (seq: Int64, text: String)? {
        let ends = last.seq == 0 ? "the log has no rows" : "the last row is \(last.seq)"
        guard let head else {
            return (last.seq + 1, "the log's head row (log_head) is missing; \(ends)")
        }
        if head.seq > last.seq {
            return (
                last.seq + 1,
                "row \(last.seq + 1) is missing: the log's head row says the chain ends at row \(head.seq), but "
                    + "\(ends) (rows cut off the end)"
            )
        }
        if head.seq < last.seq {
            return (
                head.seq + 1,
                "row \(head.seq + 1) is past the log's head row, which says the chain ends at row \(head.seq) "
                    + "(rows added behind the appender's back, or the head row rewound)"
            )
        }
        if head.hash.lowercased() != last.hash.lowercased() {
            return (
                head.seq,
                "the log's head row says row \(head.seq) hashes to \(head.hash), but the row's hash is \(last.hash) "
                    + "(the head row or the row was rewritten)"
            )
        }
        return nil
    }
}

/// A delivery-log row as the walk needs it: its seq, its entry (`nil` when its event is not one the
/// appender writes, so the row cannot match), and its stored hash as 32 bytes (`nil` if not 64 hex digits).
private struct ChainRow {
    var seq: Int64
    var entry: LogEntry?
    var storedHash: [UInt8]?

    init(_ row: PostgresRow) throws {
        let record = try PostgresLog.record(row)
        let event = try row.makeRandomAccess()[2].decode(String.self)
        seq = record.seq
        entry = record.entry.event.rawValue == event ? record.entry : nil
        storedHash = record.hash.utf8.count == 64 ? Data(hexString: record.hash).map { [UInt8]($0) } : nil
    }
}

import AftercareCore
import Foundation
import PostgresNIO

/// Appends to the delivery log's one chain inside the caller's transaction.
enum PostgresLog {
    static let columns = """
        seq, at, event, procedure_id, patient_id, step_id, channel, sender, destination, attempt, started_at,
        ended_at, outcome, response_code, error, latency_ms, actor, detail, protocol_version, message_hash, hash
        """
    private static let columnCount = 21
    /// Rows per `INSERT`: well under the protocol's 65,535 parameters.
    static let chunk = 1000

    /// Chains `entries` after the head and inserts them. Takes the head row's lock, which the
    /// transaction holds until it ends: call it last, just before the commit, so other writers wait
    /// as briefly as possible.
    static func append(_ entries: [LogEntry], on connection: PostgresConnection) async throws {
        guard !entries.isEmpty else { return }
        let head = try await connection.rows("SELECT seq, hash FROM log_head WHERE id = 1 FOR UPDATE") {
            try $0.decode((Int64, String).self)
        }
        guard var (seq, headHash) = head.first else { throw StoreError("the log's head row is missing") }
        // Hashed as SQLite's appender does: one encoder, the previous hash kept as bytes.
        var encoder = LogRowEncoder()
        var previous = [UInt8](Data(hexString: headHash) ?? Data(count: 32))
        var records: [LogRecord] = []
        records.reserveCapacity(entries.count)
        for var entry in entries {
            storable(&entry)
            entry = LogAppender.asStored(entry)
            seq += 1
            previous = Array(encoder.hash(previous: previous, seq: seq, entry))
            headHash = Hex.encode(previous)
            records.append(LogRecord(seq: seq, entry: entry, hash: headHash))
        }
        try await insert(records, on: connection)
        try await connection.run("UPDATE log_head SET seq = \(seq), hash = \(headHash) WHERE id = 1")
    }

    /// PostgreSQL text cannot hold a NUL byte. Every way in already refuses or escapes control
    /// characters, so none should arrive; if one does, it is written as U+FFFD before the row is
    /// hashed (so the row verifies as stored) rather than failing the write, which would stall
    /// delivery.
    static func storable(_ entry: inout LogEntry) {
        func clean(_ text: inout String?) { text = text.map(storable) }
        clean(&entry.procedureID)
        clean(&entry.patientID)
        clean(&entry.stepID)
        clean(&entry.channel)
        clean(&entry.sender)
        clean(&entry.destination)
        clean(&entry.outcome)
        clean(&entry.error)
        clean(&entry.actor)
        clean(&entry.detail)
        clean(&entry.protocolVersion)
        clean(&entry.messageHash)
    }

    static func storable(_ text: String) -> String {
        text.utf8.contains(0) ? text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : text
    }

    /// Inserts rows as they are (their seqs and hashes already chained).
    static func insert(_ records: some Collection<LogRecord>, on connection: PostgresConnection) async throws {
        var start = records.startIndex
        while start != records.endIndex {
            let end = records.index(start, offsetBy: chunk, limitedBy: records.endIndex) ?? records.endIndex
            var binds = PostgresBindings(capacity: columnCount * records.distance(from: start, to: end))
            var values: [String] = []
            var parameter = 0
            for record in records[start..<end] {
                let entry = record.entry
                binds.append(record.seq)
                binds.append(entry.at.seconds)
                binds.append(entry.event.rawValue)
                binds.append(entry.procedureID)
                binds.append(entry.patientID)
                binds.append(entry.stepID)
                binds.append(entry.channel)
                binds.append(entry.sender)
                binds.append(entry.destination)
                binds.append(entry.attempt.map(Int32.init(clamping:)))
                binds.append(entry.startedAt?.seconds)
                binds.append(entry.endedAt?.seconds)
                binds.append(entry.outcome)
                binds.append(entry.responseCode.map(Int32.init(clamping:)))
                binds.append(entry.error)
                binds.append(entry.latencyMilliseconds)
                binds.append(entry.actor)
                binds.append(entry.detail)
                binds.append(entry.protocolVersion)
                binds.append(entry.messageHash)
                binds.append(record.hash)
                let placeholders = (1...columnCount).map { column in "$\(parameter + column)" }
                values.append("(" + placeholders.joined(separator: ", ") + ")")
                parameter += columnCount
            }
            try await connection.run(
                PostgresQuery(
                    unsafeSQL: "INSERT INTO delivery_log (\(columns)) VALUES " + values.joined(separator: ", "),
                    binds: binds))
            start = end
        }
    }

    /// A log row as selected with ``columns``.
    static func record(_ row: PostgresRow) throws -> LogRecord {
        let cells = row.makeRandomAccess()
        func text(_ index: Int) throws -> String? { try cells[index].decode(String?.self) }
        func time(_ index: Int) throws -> Date? { try cells[index].decode(Double?.self).map(Date.init(seconds:)) }
        let event = try text(2) ?? ""
        let entry = LogEntry(
            at: try time(1) ?? Date(seconds: 0), event: LogEvent(rawValue: event) ?? .attempt,
            procedureID: try text(3), patientID: try text(4), stepID: try text(5), channel: try text(6),
            sender: try text(7), destination: try text(8), attempt: try cells[9].decode(Int32?.self).map(Int.init),
            startedAt: try time(10), endedAt: try time(11), outcome: try text(12),
            responseCode: try cells[13].decode(Int32?.self).map(Int.init), error: try text(14),
            latencyMilliseconds: try cells[15].decode(Double?.self), actor: try text(16), detail: try text(17),
            protocolVersion: try text(18), messageHash: try text(19))
        return LogRecord(seq: try cells[0].decode(Int64.self), entry: entry, hash: try text(20) ?? "")
    }

    /// Tells every daemon listening that work may be due sooner; sent when the transaction commits.
    static func notifyQueue(on connection: PostgresConnection) async throws {
        try await connection.run("SELECT pg_notify(\(PostgresReminderStore.queueChannel), '')")
    }
}

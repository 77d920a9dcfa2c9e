import AftercareCore
import Foundation
import PostgresNIO

extension PostgresReminderStore {
    /// Log rows matching `filter`, oldest first (as ``ReminderStore/auditLog(_:)``).
    public func auditLog(_ filter: AuditFilter) async throws -> [LogRecord] {
        var conditions: [String] = []
        var binds = PostgresBindings()
        func parameter(_ value: some PostgresNonThrowingEncodable) -> String {
            binds.append(value)
            return "$\(binds.count)"
        }
        if let value = filter.patientID { conditions.append("patient_id = \(parameter(value))") }
        if let value = filter.procedureID { conditions.append("procedure_id = \(parameter(value))") }
        if let value = filter.stepID { conditions.append("step_id = \(parameter(value))") }
        if let value = filter.outcome {
            let name = parameter(value)
            conditions.append("(outcome = \(name) OR event = \(name))")
        }
        if let value = filter.channel { conditions.append("channel = \(parameter(value))") }
        if let value = filter.since { conditions.append("at >= \(parameter(value.seconds))") }
        if let value = filter.until { conditions.append("at < \(parameter(value.seconds))") }
        var sql = "SELECT \(PostgresLog.columns) FROM delivery_log"
        if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
        if let limit = filter.limit {
            // The newest `limit` rows, still shown oldest first.
            sql = "SELECT * FROM (\(sql) ORDER BY seq DESC LIMIT \(parameter(limit))) AS newest ORDER BY seq"
        } else {
            sql += " ORDER BY seq"
        }
        let query = PostgresQuery(unsafeSQL: sql, binds: binds)
        return try await read { connection in try await connection.rows(query, PostgresLog.record) }
    }

    /// The chain's head: the last row's sequence number and hash (`nil` for an empty log).
    public func logHead() async throws -> (seq: Int64, hash: String)? {
        let head = try await read { connection in
            try await connection.rows("SELECT seq, hash FROM delivery_log ORDER BY seq DESC LIMIT 1") {
                try $0.decode((Int64, String).self)
            }.first
        }
        return head.map { (seq: $0.0, hash: $0.1) }
    }

    /// Removes rows older than `before` and appends a checkpoint row, with the rules and words of
    /// ``ReminderStore/pruneLog(before:now:actor:)``. It takes the `log_head` row's lock first and
    /// holds it to the commit, so no other daemon appends between the walk, the cut and the checkpoint.
    public func pruneLog(before: Date, now: Date, actor: String) async throws -> PruneResult {
        try PruneRules.checkCutoff(before, now: now)
        return try await transaction { connection in
            try await connection.run("SELECT seq FROM log_head WHERE id = 1 FOR UPDATE")
            let report = try await Self.walkChain(connection, anchor: nil)
            try PruneRules.requireIntact(report.verdict)
            guard
                let last = try await connection.value(
                    Int64.self, "SELECT MAX(seq) FROM delivery_log WHERE at < \(before.seconds)"),
                let head = try await connection.value(Int64.self, "SELECT MAX(seq) FROM delivery_log")
            else { return PruneResult(removed: 0, head: nil, keptForPending: nil) }
            let pending = try await connection.value(
                Int64.self,
                """
                SELECT MIN(seq) FROM delivery_log WHERE procedure_id IN
                    (SELECT procedure_id FROM reminder WHERE state IN ('scheduled', 'claimed'))
                """)
            let (cut, keptForPending) = PruneRules.cut(last: last, head: head, pending: pending)
            let first = try await connection.value(Int64.self, "SELECT MIN(seq) FROM delivery_log") ?? 1
            guard cut >= first,
                let anchor = try await connection.value(
                    String.self, "SELECT hash FROM delivery_log WHERE seq = \(cut)")
            else { return PruneResult(removed: 0, head: nil, keptForPending: keptForPending) }
            try await connection.run("SELECT set_config('aftercare.pruning', 'on', true)")
            let removed = try await connection.value(
                Int64.self,
                "WITH gone AS (DELETE FROM delivery_log WHERE seq <= \(cut) RETURNING 1) SELECT count(*) FROM gone")
            ?? 0
            try await connection.run("SELECT set_config('aftercare.pruning', 'off', true)")
            try await PostgresLog.append(
                [
                    LogEntry(
                        at: now, event: .checkpoint, actor: actor,
                        detail: "pruned rows \(first)-\(cut) (before \(Timestamp.format(before, in: .gmt))); "
                            + "chain resumes at row \(cut + 1) after hash \(anchor)"
                    )
                ], on: connection)
            let newHead = try await connection.rows("SELECT seq, hash FROM delivery_log ORDER BY seq DESC LIMIT 1") {
                let (seq, hash) = try $0.decode((Int64, String).self)
                return LogAnchor(seq: seq, hash: hash)
            }.first
            return PruneResult(removed: Int(removed), head: newHead, keptForPending: keptForPending)
        }
    }

    /// The message an attempt row sent, with its protocol version (as ``ReminderStore/attemptMessage(seq:)``).
    public func attemptMessage(seq: Int64) async throws -> AttemptMessage {
        try await read { connection in
            guard
                let record = try await connection.rows(
                    "SELECT \(unescaped: PostgresLog.columns) FROM delivery_log WHERE seq = \(seq)", PostgresLog.record
                ).first
            else { throw StoreError("no log row \(seq) (pruned, or not written yet)") }
            guard record.entry.event == .attempt else {
                throw StoreError("log row \(seq) is a '\(record.entry.event.rawValue)' row, not an attempt")
            }
            guard let messageHash = record.entry.messageHash else {
                throw StoreError(
                    "log row \(seq) is an attempt from before messages were kept; its words were not recorded")
            }
            let message = try await connection.rows(
                "SELECT subject, body FROM message WHERE hash = \(messageHash)"
            ) { try $0.decode((String, String).self) }.first
            var version: ProtocolVersion?
            if let hash = record.entry.protocolVersion,
                let (protocolID, content) = try await connection.rows(
                    "SELECT protocol_id, content FROM protocol_version WHERE hash = \(hash)"
                ) { try $0.decode((String, String).self) }.first
            {
                version = ProtocolVersion(protocolID: protocolID, content: content)
            }
            return AttemptMessage(
                record: record, subject: message?.0, body: message?.1, protocolVersion: version)
        }
    }
}

import AftercareCore
import Foundation

/// The three ways the log is shown.
public enum AuditFormat {
    /// The columns of the CSV and JSON forms, in order.
    public static let columns = ["seq", "at", "event", "procedure_id", "patient_id", "step_id", "channel", "sender",
                          "destination", "attempt", "started_at", "ended_at", "outcome", "response_code", "error",
                          "latency_ms", "actor", "detail", "protocol_version", "message_hash", "hash"]

    static func fields(_ record: LogRecord, unmask: Bool) -> [String?] {
        let entry = record.entry
        func time(_ date: Date?) -> String? { date.map { Timestamp.format($0, in: .gmt) } }
        return [
            String(record.seq), time(entry.at), entry.event.rawValue, entry.procedureID, entry.patientID, entry.stepID,
            entry.channel, entry.sender, entry.destination.map { unmask ? $0 : ContactMask.mask($0) },
            entry.attempt.map(String.init), time(entry.startedAt), time(entry.endedAt), entry.outcome,
            entry.responseCode.map(String.init), entry.error, entry.latencyMilliseconds.map { String(format: "%.3f", $0) },
            entry.actor, entry.detail, entry.protocolVersion, entry.messageHash, record.hash,
        ]
    }

    /// One row as a JSON object on one line.
    public static func json(_ record: LogRecord, unmask: Bool) -> String {
        var object: [String: Any] = [:]
        for (name, value) in zip(columns, fields(record, unmask: unmask)) {
            guard let value else { continue }
            switch name {
            case "seq", "attempt", "response_code": object[name] = Int(value) ?? value
            case "latency_ms": object[name] = Double(value) ?? value
            default: object[name] = value
            }
        }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// RFC 4180: fields holding a comma, a quote or a line break are quoted, quotes doubled.
    public static func csv(_ records: [LogRecord], unmask: Bool) -> String {
        func quote(_ field: String?) -> String {
            guard let field else { return "" }
            if field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
                return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            }
            return field
        }
        var lines = [columns.joined(separator: ",")]
        for record in records { lines.append(fields(record, unmask: unmask).map(quote).joined(separator: ",")) }
        return lines.joined(separator: "\r\n")
    }

    /// A table of fixed-width time, event, reminder and destination columns, then the result whole (escaped, on
    /// one line) so a relay's reply is never cut off.
    public static func table(_ records: [LogRecord], zone: TimeZone, unmask: Bool) -> String {
        guard !records.isEmpty else { return "No matching log rows." }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = zone
        formatter.dateFormat = "MM-dd HH:mm:ss"
        func cut(_ text: String, _ width: Int) -> String {
            let flat = UntrustedText.escaped(text, limit: width)
            return flat.count <= width ? flat.padding(toLength: width, withPad: " ", startingAt: 0)
                : String(flat.prefix(width - 1)) + "…"
        }
        var lines = [
            cut("TIME", 14) + "  " + cut("EVENT", 9) + "  " + cut("REMINDER", 20) + "  " + cut("TO", 16) + "  RESULT"
        ]
        for record in records {
            let entry = record.entry
            let reminder = [entry.procedureID, entry.stepID].compactMap { $0 }.joined(separator: ".")
            let destination = entry.destination.map { unmask ? $0 : ContactMask.mask($0) } ?? entry.actor.map { "by \($0)" } ?? ""
            var result: String
            if entry.event == .attempt {
                result = (entry.outcome ?? "?") + (entry.responseCode.map { " \($0)" } ?? "")
                if let error = entry.error { result += " " + error }
            } else {
                result = entry.detail ?? ""
            }
            lines.append(
                cut(formatter.string(from: entry.at), 14) + "  " + cut(entry.event.rawValue, 9) + "  "
                    + cut(reminder, 20) + "  " + cut(destination, 16) + "  "
                    + UntrustedText.escaped(result, limit: UntrustedText.reasonLimit)
            )
        }
        lines.append("(\(records.count) row(s); times in \(zone.identifier); --format jsonl shows every field)")
        return lines.joined(separator: "\n")
    }
}

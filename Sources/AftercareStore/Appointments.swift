import AftercareCore
import Foundation
import GRDB

/// What one sweep over booked appointments did.
public struct AppointmentSweepResult: Sendable, Hashable {
    /// The appointments closed as not performed, by procedure id.
    public var closed: [String]
    /// When the next booked appointment falls due for closing, if any is booked.
    public var nextClosing: Date?
}

extension ReminderStore {
    /// Closes every booked appointment whose planned time lies more than `closeAfter` seconds before
    /// `now` and was never marked performed: its status becomes `not_performed`, a `not_performed`
    /// row says so, and no reminder is ever planned for it. One transaction.
    public func closeUnconfirmedAppointments(now: Date, closeAfter: TimeInterval) async throws
        -> AppointmentSweepResult
    {
        let earliest = try await read { db in
            try Double.fetchOne(
                db, sql: "SELECT MIN(performed_at) FROM procedure INDEXED BY procedure_booked WHERE status = 'booked'")
        }
        // The common case, nothing to close, takes no write lock.
        guard let earliest else { return AppointmentSweepResult(closed: [], nextClosing: nil) }
        if earliest + closeAfter > now.timeIntervalSince1970 {
            return AppointmentSweepResult(
                closed: [], nextClosing: Date(timeIntervalSince1970: earliest + closeAfter))
        }
        return try await transaction { db in
            let cutoff = now.timeIntervalSince1970 - closeAfter
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT CAST(id AS BLOB) AS id, CAST(patient_id AS BLOB) AS patient_id, performed_at,
                        CAST(patient_json AS BLOB) AS patient_json
                    FROM procedure INDEXED BY procedure_booked WHERE status = 'booked' AND performed_at <= ?
                    ORDER BY performed_at, id
                    """,
                arguments: [cutoff]
            )
            var closed: [String] = []
            if !rows.isEmpty {
                var log = try LogAppender(db)
                for row in rows {
                    let id = row.text("id") ?? ""
                    let planned = Date(timeIntervalSince1970: row["performed_at"])
                    let zone = (try? JSONDecoder().decode(Patient.self, from: row["patient_json"] as Data))
                        .flatMap { TimeZone(identifier: $0.timeZone) } ?? .gmt
                    try db.execute(
                        sql: """
                            UPDATE procedure SET status = 'not_performed', updated_at = ?
                            WHERE id = CAST(? AS TEXT) AND status = 'booked'
                            """,
                        arguments: [now.timeIntervalSince1970, exact(id)]
                    )
                    try log.append(
                        LogEntry(
                            at: now, event: .notPerformed, procedureID: id, patientID: row.text("patient_id"),
                            detail: "planned for \(Timestamp.format(planned, in: zone)), never marked performed "
                                + "within \(Self.hours(closeAfter)); closed, no aftercare will be sent"
                        )
                    )
                    closed.append(id)
                }
            }
            let next = try Double.fetchOne(
                db, sql: "SELECT MIN(performed_at) FROM procedure INDEXED BY procedure_booked WHERE status = 'booked'")
            return AppointmentSweepResult(
                closed: closed, nextClosing: next.map { Date(timeIntervalSince1970: $0 + closeAfter) })
        }
    }

    static func hours(_ seconds: TimeInterval) -> String {
        seconds.truncatingRemainder(dividingBy: 3600) == 0 ? "\(Int(seconds / 3600)) h" : "\(Int(seconds / 60)) min"
    }
}

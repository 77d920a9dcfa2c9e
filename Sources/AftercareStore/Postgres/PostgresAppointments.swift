import AftercareCore
import Foundation
import PostgresNIO

extension PostgresReminderStore {
    /// Closes booked appointments never marked performed within `closeAfter` of their planned time,
    /// as ``ReminderStore/closeUnconfirmedAppointments(now:closeAfter:)`` does. Daemons on several
    /// hosts sweep at once: each takes only the rows no other sweep holds (`FOR UPDATE SKIP
    /// LOCKED`), so every appointment is closed, and logged, once.
    public func closeUnconfirmedAppointments(now: Date, closeAfter: TimeInterval) async throws
        -> AppointmentSweepResult
    {
        let earliest = try await read { connection in
            try await connection.value(Double.self, "SELECT MIN(performed_at) FROM procedure WHERE status = 'booked'")
        }
        // The common case, nothing to close, takes no lock.
        guard let earliest else { return AppointmentSweepResult(closed: [], nextClosing: nil) }
        if earliest + closeAfter > now.seconds {
            return AppointmentSweepResult(closed: [], nextClosing: Date(seconds: earliest + closeAfter))
        }
        return try await transaction { connection in
            let rows = try await connection.rows(
                """
                WITH due AS (
                    SELECT id FROM procedure WHERE status = 'booked' AND performed_at <= \(now.seconds - closeAfter)
                    FOR UPDATE SKIP LOCKED)
                UPDATE procedure p SET status = 'not_performed', updated_at = \(now.seconds)
                FROM due WHERE p.id = due.id
                RETURNING p.id, p.patient_id, p.performed_at, p.patient_json
                """
            ) { row in try row.decode((String, String, Double, String).self) }
            // In SQLite's order: planned time, then id as bytes.
            let closed = rows.sorted { a, b in
                a.2 != b.2 ? a.2 < b.2 : a.0.utf8.lexicographicallyPrecedes(b.0.utf8)
            }
            let entries = closed.map { id, patientID, performedAt, patientJSON in
                let zone = (try? JSONDecoder().decode(Patient.self, from: Data(patientJSON.utf8)))
                    .flatMap { TimeZone(identifier: $0.timeZone) } ?? .gmt
                return LogEntry(
                    at: now, event: .notPerformed, procedureID: id, patientID: patientID,
                    detail: "planned for \(Timestamp.format(Date(seconds: performedAt), in: zone)), never marked "
                        + "performed within \(ReminderStore.hours(closeAfter)); closed, no aftercare will be sent")
            }
            let next = try await connection.value(
                Double.self, "SELECT MIN(performed_at) FROM procedure WHERE status = 'booked'")
            try await PostgresLog.append(entries, on: connection)
            return AppointmentSweepResult(
                closed: closed.map(\.0), nextClosing: next.map { Date(seconds: $0 + closeAfter) })
        }
    }
}

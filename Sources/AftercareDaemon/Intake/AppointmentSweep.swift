import AftercareConfig
import AftercareCore
import AftercareStore
import Foundation
import Logging

/// Closes booked appointments nobody marked performed, some hours after their planned time, so a
/// no-show never gets aftercare. Run from the intake loop on every wake-up; it says when it next has
/// work, for the loop to wake then on the injected clock.
struct AppointmentSweep: Sendable {
    let store: any ReminderQueue
    let clock: any WallClock
    let logger: Logger

    /// Closes what is due for closing; returns when the next booked appointment will be, if any.
    /// A database error is logged and the sweep is tried again in a minute.
    func run(settings: AppointmentSettings) async -> Date? {
        do {
            let result = try await store.closeUnconfirmedAppointments(
                now: clock.now(), closeAfter: settings.closeUnconfirmedAfter)
            for id in result.closed {
                logger.notice("appointment \(id) was never marked performed: closed as not performed, no aftercare")
            }
            return result.nextClosing
        } catch {
            logger.error("cannot close unconfirmed appointments, will retry: \(error)")
            return clock.now().addingTimeInterval(60)
        }
    }
}

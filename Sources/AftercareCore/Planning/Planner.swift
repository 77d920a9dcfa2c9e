import Foundation

/// Turns a procedure into its reminder plan. Pure: the same inputs give the same plan.
///
/// For each step of the protocol:
/// - its **nominal time** is the procedure time plus the step's offset: elapsed offsets are real
///   time (`+24h` is 86,400 s, across any DST change), wall-clock offsets are local time in the
///   patient's zone (`next day 09:00` is 09:00 there, whatever DST does);
/// - its **window** closes at the nominal time plus the step's validity; for a step sent at the
///   procedure (``Step/nightHold``) the validity counts only hours outside the night hours;
/// - its **due time** is the nominal time (or now, if that has passed), moved out of the hours
///   that hold it: the night hours for a step sent at the procedure, the urgent quiet hours for an
///   `urgent` step, the clinic's quiet hours for any other;
/// - if the due time falls after the window closes it is planned `expired`: never sent stale, and
///   ``unsendableSteps(_:protocol:procedure:channels:)`` names it so staff are told at once.
public enum Planner {
    /// The plan for `procedure` under `careProtocol` and `policy`, as seen at `now`: one reminder per
    /// step, in step order.
    public static func plan(
        _ procedure: Procedure,
        protocol careProtocol: CareProtocol,
        policy: ClinicPolicy,
        now: Date
    ) -> [PlannedReminder] {
        let zone = procedure.patientTimeZone
        return careProtocol.steps.map { step in
            let nominal = nominalTime(of: step.offset, after: procedure.performedAt, zone: zone)
            let expires = windowEnd(of: step, nominal: nominal, zone: zone, policy: policy)
            let candidate = max(nominal, now)
            let due = allowedTime(for: step, at: candidate, zone: zone, policy: policy)
            if candidate > expires {
                // It was due at its own time; shown that way, next to the window it missed.
                return PlannedReminder(
                    stepID: step.id, nominalAt: nominal, dueAt: nominal, expiresAt: expires, state: .expired,
                    note: "window closed at \(Timestamp.format(expires, in: zone)) before it could be sent"
                )
            }
            let hold = step.sendsAtProcedure ? "night hours" : "quiet hours"
            if due > expires {
                return PlannedReminder(
                    stepID: step.id, nominalAt: nominal, dueAt: due, expiresAt: expires, state: .expired,
                    note: "\(hold) last until \(Timestamp.format(due, in: zone)), after its window closes at "
                        + Timestamp.format(expires, in: zone)
                )
            }
            let note = due > candidate ? "\(hold): held until \(LocalTime(due, in: zone).clockText)" : nil
            return PlannedReminder(
                stepID: step.id, nominalAt: nominal, dueAt: due, expiresAt: expires, state: .scheduled, note: note)
        }
    }

    /// The step's own time for a procedure performed at `performedAt`, in the patient's `zone`.
    public static func nominalTime(of offset: StepOffset, after performedAt: Date, zone: TimeZone) -> Date {
        switch offset {
        case .elapsed(let seconds):
            return performedAt.addingTimeInterval(Double(seconds))
        case .wallClock(let days, let hour, let minute):
            let procedureDay = LocalTime(performedAt, in: zone).day
            return LocalTime(day: procedureDay + days, secondOfDay: hour * 3600 + minute * 60).instant(in: zone)
        }
    }

    /// The last moment the step may still go out. Ordinarily `valid_for` after its nominal time; for a
    /// step sent at the procedure, `valid_for` of time outside the night hours, so that its window
    /// never runs out while it is held through the night.
    public static func windowEnd(of step: Step, nominal: Date, zone: TimeZone, policy: ClinicPolicy) -> Date {
        guard let night = nightHours(for: step, policy: policy), night.startMinute != night.endMinute else {
            return nominal.addingTimeInterval(Double(step.validForSeconds))
        }
        var remaining = Double(step.validForSeconds)
        var time = nominal
        // One turn per night; valid_for is at most 30 days.
        for _ in 0...64 {
            time = endOfHold(night, at: time, zone: zone)
            let nightStarts = nextStart(of: night, after: time, zone: zone)
            let awake = nightStarts.timeIntervalSince(time)
            if remaining <= awake { return time.addingTimeInterval(remaining) }
            remaining -= awake
            time = nightStarts
        }
        return time
    }

    /// The earliest moment at or after `earliest` when `step` may go out to a patient in `zone`:
    /// `earliest` itself, or the end of the hours that hold it. A step sent at the procedure waits
    /// only through its night hours; ordinary steps follow the clinic's quiet hours; `urgent` ones
    /// follow its urgent rule (none, unless configured).
    public static func allowedTime(for step: Step, at earliest: Date, zone: TimeZone, policy: ClinicPolicy) -> Date {
        let quiet = step.sendsAtProcedure
            ? nightHours(for: step, policy: policy) : step.urgent ? policy.urgentQuietHours : policy.quietHours
        guard let quiet else { return earliest }
        return endOfHold(quiet, at: earliest, zone: zone)
    }

    /// The night hours that hold a step sent at the procedure: a narrower quiet time, so a clinic that
    /// keeps no quiet hours at all holds nothing, these steps included.
    public static func nightHours(for step: Step, policy: ClinicPolicy) -> QuietHours? {
        policy.quietHours == nil ? nil : step.nightHold
    }

    /// `earliest`, or the end of `window` if `earliest` falls inside it.
    static func endOfHold(_ window: QuietHours, at earliest: Date, zone: TimeZone) -> Date {
        let local = LocalTime(earliest, in: zone)
        guard window.contains(secondOfDay: local.secondOfDay) else { return earliest }
        let start = window.startMinute * 60
        let end = window.endMinute * 60
        let endDay = start > end && local.secondOfDay >= start ? local.day + 1 : local.day
        return max(earliest, LocalTime(day: endDay, secondOfDay: end).instant(in: zone))
    }

    /// The first moment after `time` at which `window` begins.
    static func nextStart(of window: QuietHours, after time: Date, zone: TimeZone) -> Date {
        let local = LocalTime(time, in: zone)
        for day in local.day...(local.day + 2) {
            let start = LocalTime(day: day, secondOfDay: window.startMinute * 60).instant(in: zone)
            if start > time { return start }
        }
        return time.addingTimeInterval(86400)
    }

    /// Every step of `plan` that will not be sent at all, and why: planned expired (its window
    /// closes before it may go out), or no contact route of the patient can carry it (none on the
    /// step's channels with a configured sender, or all opted out). Staff must be told at once.
    ///
    /// - Parameter channels: the channels the configuration has a sender for.
    public static func unsendableSteps(
        _ plan: [PlannedReminder],
        protocol careProtocol: CareProtocol,
        procedure: Procedure,
        channels: Set<String>
    ) -> [PlanWarning] {
        plan.compactMap { reminder in
            if reminder.state == .expired {
                return PlanWarning(stepID: reminder.stepID, reason: reminder.note ?? "its window has closed")
            }
            guard let step = careProtocol.step(reminder.stepID) else { return nil }
            let carried = procedure.patient.routes.filter {
                (step.channels.isEmpty || step.channels.contains($0.channel)) && channels.contains($0.channel)
            }
            if carried.isEmpty {
                let allowed = step.channels.isEmpty ? channels.sorted() : step.channels
                return PlanWarning(
                    stepID: step.id,
                    reason: "no contact route on a channel it may use (\(allowed.joined(separator: ", ")))")
            }
            if carried.allSatisfy(\.optedOut) {
                let optedOut = carried.map(\.channel).joined(separator: ", ")
                return PlanWarning(
                    stepID: step.id, reason: "the patient opted out of every route it may use (\(optedOut))")
            }
            return nil
        }
    }
}

/// A step of a plan that will not be sent at all, and why; shown loudly at `aftercare add`.
public struct PlanWarning: Sendable, Hashable, CustomStringConvertible {
    /// The step that will not go out.
    public var stepID: String
    /// Why, in staff's words.
    public var reason: String

    public init(stepID: String, reason: String) {
        self.stepID = stepID
        self.reason = reason
    }

    public var description: String { "step \(stepID) will not be sent: \(reason)" }
}

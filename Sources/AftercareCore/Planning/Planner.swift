import Foundation

/// Turns a procedure into its reminder plan. Pure: the same inputs give the same plan.
///
/// For each step of the protocol:
/// - its **nominal time** is the procedure time plus the step's offset: elapsed offsets are real
///   time (`+24h` is 86,400 s, across any DST change), wall-clock offsets are local time in the
///   patient's zone (`next day 09:00` is 09:00 there, whatever DST does);
/// - its **window** closes at the nominal time plus the step's validity;
/// - its **due time** is the nominal time (or now, if that has passed), moved out of the quiet
///   hours that apply to it;
/// - if the due time falls after the window closes it is planned `expired`: never sent stale.
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
            let expires = nominal.addingTimeInterval(Double(step.validForSeconds))
            let candidate = max(nominal, now)
            let due = allowedTime(for: step, at: candidate, zone: zone, policy: policy)
            if candidate > expires {
                // It was due at its own time; shown that way, next to the window it missed.
                return PlannedReminder(
                    stepID: step.id, nominalAt: nominal, dueAt: nominal, expiresAt: expires, state: .expired,
                    note: "window closed at \(Timestamp.format(expires, in: zone)) before it could be sent"
                )
            }
            if due > expires {
                return PlannedReminder(
                    stepID: step.id, nominalAt: nominal, dueAt: due, expiresAt: expires, state: .expired,
                    note: "quiet hours last until \(Timestamp.format(due, in: zone)), after its window closes at "
                        + Timestamp.format(expires, in: zone)
                )
            }
            let note = due > candidate ? "quiet hours: held until \(LocalTime(due, in: zone).clockText)" : nil
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

    /// The earliest moment at or after `earliest` when `step` may go out to a patient in `zone`:
    /// `earliest` itself, or the end of the quiet hours it falls in. Ordinary steps follow the
    /// clinic's quiet hours; `urgent` ones follow its urgent rule (none, unless configured).
    public static func allowedTime(for step: Step, at earliest: Date, zone: TimeZone, policy: ClinicPolicy) -> Date {
        guard let quiet = step.urgent ? policy.urgentQuietHours : policy.quietHours,
            quiet.startMinute != quiet.endMinute
        else { return earliest }
        let local = LocalTime(earliest, in: zone)
        let second = local.secondOfDay
        let start = quiet.startMinute * 60
        let end = quiet.endMinute * 60
        let endDay: Int
        if start < end {
            guard second >= start && second < end else { return earliest }
            endDay = local.day
        } else {
            if second >= start {
                endDay = local.day + 1
            } else if second < end {
                endDay = local.day
            } else {
                return earliest
            }
        }
        return max(earliest, LocalTime(day: endDay, secondOfDay: end).instant(in: zone))
    }
}

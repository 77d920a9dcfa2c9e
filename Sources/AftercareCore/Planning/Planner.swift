import Foundation

/// Turns a procedure into its reminder plan. Pure: same inputs, same plan.
///
/// PLACEHOLDER: implemented in the planner/templates work.
public enum Planner {
    /// The plan for `procedure` under `careProtocol` and `policy`, as seen at `now`: one reminder per
    /// step, in step order. Steps whose window has already passed come back `expired`.
    public static func plan(
        _ procedure: Procedure,
        protocol careProtocol: CareProtocol,
        policy: ClinicPolicy,
        now: Date
    ) -> [PlannedReminder] {
        []
    }

    /// The earliest moment at or after `earliest` when `step` may go out to a patient in `zone`:
    /// `earliest` itself, or the end of the quiet hours it falls in.
    public static func allowedTime(for step: Step, at earliest: Date, zone: TimeZone, policy: ClinicPolicy) -> Date {
        earliest
    }
}

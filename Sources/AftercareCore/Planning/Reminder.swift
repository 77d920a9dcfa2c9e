import Foundation

/// Where a reminder stands. The store enforces the transitions; see `AftercareStore`.
///
/// ```
/// scheduled ─claim→ claimed ─delivered→ delivered
///     ↑                 ├─retry→ scheduled (attempt + 1, later due time)
///     │                 ├─failed / last retry→ dead ─replay→ scheduled
///     │                 └─lease lapses→ scheduled (recovered)
///     ├─window passed→ expired
///     ├─cancel→ cancelled
///     └─every route opted out→ skipped
/// ```
public enum ReminderState: String, Sendable, Codable, CaseIterable {
    /// Waiting for its due time (including a retry's due time).
    case scheduled
    /// Held by a dispatcher under a lease while it is being sent.
    case claimed
    /// A sender accepted it.
    case delivered
    /// Every try failed, or a sender refused it outright; `replay` can re-queue it.
    case dead
    /// Its validity window passed before it could go out; never sent stale.
    case expired
    /// Its procedure was cancelled.
    case cancelled
    /// No contact route was usable (all opted out, or none on the step's channels).
    case skipped

    /// Still to be sent (or being sent).
    public var isPending: Bool { self == .scheduled || self == .claimed }
}

/// One reminder as the planner lays it out: a step of the protocol put on the patient's calendar.
public struct PlannedReminder: Sendable, Hashable {
    /// The step it delivers.
    public var stepID: String
    /// The step's own time: procedure time plus the step's offset.
    public var nominalAt: Date
    /// When it should go out: the nominal time, moved out of quiet hours (and never before `now`).
    public var dueAt: Date
    /// The last moment it may still go out: nominal time plus the step's validity window.
    public var expiresAt: Date
    /// `scheduled`, or `expired` when the window cannot be made.
    public var state: ReminderState
    /// Why the due time differs from the nominal time, or why it expired; `nil` when neither.
    public var note: String?

    public init(
        stepID: String,
        nominalAt: Date,
        dueAt: Date,
        expiresAt: Date,
        state: ReminderState,
        note: String?
    ) {
        self.stepID = stepID
        self.nominalAt = nominalAt
        self.dueAt = dueAt
        self.expiresAt = expiresAt
        self.state = state
        self.note = note
    }
}

/// A reminder's stable id: the procedure id and the step id. It is the idempotency key every sender
/// uses (`webhook-id`, `Message-ID`, the HTTP email idempotency key), the same on every retry.
public enum ReminderID {
    public static func make(procedureID: String, stepID: String) -> String { "\(procedureID).\(stepID)" }
}

import AftercareCore
import Foundation

/// What `/health` answers: the pipeline makes progress, or it is stuck and why (one line).
public enum HealthVerdict: Sendable, Hashable {
    case healthy(String)
    case stuck(String)

    public var isHealthy: Bool {
        if case .healthy = self { return true }
        return false
    }

    /// The line `/health` sends.
    public var line: String {
        switch self {
        case .healthy(let detail): return "ok: \(detail)"
        case .stuck(let reason): return "stuck: \(reason)"
        }
    }
}

/// The queue as ``QueueGauges`` last read it from the store.
struct QueueSnapshot: Sendable, Hashable {
    /// When it was read, on the monotonic clock.
    var takenAt: ContinuousClock.Instant
    /// The daemon's wall-clock time then (a manual clock in tests).
    var wallNow: Date
    /// Scheduled reminders whose due time has come, not yet claimed.
    var dueNow: Int
    /// The earliest due time of a scheduled reminder.
    var earliestDue: Date?
    /// Why the store could not be read, if it could not.
    var readProblem: String?
}

/// The dispatch pipeline's progress as the daemon reported it, and the last queue reading.
struct PipelineProgress: Sendable, Hashable {
    var startedAt: ContinuousClock.Instant
    var firstTurn: ContinuousClock.Instant?
    var lastTurn: ContinuousClock.Instant?
    var storageFailingSince: ContinuousClock.Instant?
    var storageProblem: String?
    var queue: QueueSnapshot?
}

/// Decides whether the pipeline is stuck. Pure: the same progress and times give the same verdict.
enum PipelineHealth {
    static func judge(_ progress: PipelineProgress, now: ContinuousClock.Instant, stallAfter: Duration)
        -> HealthVerdict
    {
        if let since = progress.storageFailingSince {
            return .stuck(
                "the store has been failing for \(Self.spoken(now - since)): "
                    + (progress.storageProblem ?? "unknown error"))
        }
        guard let firstTurn = progress.firstTurn, let lastTurn = progress.lastTurn else {
            if now - progress.startedAt > stallAfter {
                return .stuck("the dispatch pipeline has not started after \(Self.spoken(now - progress.startedAt))")
            }
            return .healthy("starting")
        }
        let sinceTurn = now - lastTurn
        guard let queue = progress.queue, queue.takenAt >= firstTurn else {
            return .healthy("pipeline turned \(Self.spoken(sinceTurn)) ago")
        }
        if let problem = queue.readProblem {
            return .stuck("the queue cannot be read: \(problem)")
        }
        if queue.dueNow > 0, let earliest = queue.earliestDue {
            let waiting = Duration.seconds(max(0, queue.wallNow.timeIntervalSince(earliest)))
            if waiting > stallAfter {
                var reason = "\(queue.dueNow) reminder(s) due, the oldest for \(Self.spoken(waiting)) "
                    + "(since \(Timestamp.format(earliest, in: .gmt))), not being claimed"
                if sinceTurn > stallAfter {
                    reason += "; the dispatch pipeline last turned \(Self.spoken(sinceTurn)) ago"
                }
                return .stuck(reason)
            }
        }
        return .healthy("pipeline turned \(Self.spoken(sinceTurn)) ago, \(queue.dueNow) due")
    }

    /// A duration as people say it: 12s, 4m, 3h.
    static func spoken(_ duration: Duration) -> String {
        let seconds = max(0, duration.components.seconds)
        if seconds < 120 { return "\(seconds)s" }
        if seconds < 7200 { return "\(seconds / 60)m" }
        return "\(seconds / 3600)h"
    }
}

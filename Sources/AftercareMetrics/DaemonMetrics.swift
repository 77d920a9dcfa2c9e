import AftercareStore
import Foundation
import Metrics
import Synchronization

/// What the daemon tells about its work as it goes: outcomes as they are recorded, each turn of the
/// dispatch pipeline, and whether the store works. It counts through swift-metrics, so with no
/// backend (metrics off) the counts go nowhere at no cost; it also keeps the pipeline's progress
/// for `/health`.
///
/// The daemon calls it from its loop; ``QueueGauges`` adds what it reads from the store.
public final class DaemonMetrics: Sendable {
    /// The metric names, as Prometheus shows them.
    public enum Name {
        public static let attempts = "aftercare_attempts_total"
        public static let outcomes = "aftercare_reminder_outcomes_total"
        public static let sendDuration = "aftercare_send_duration_seconds"
        public static let lateness = "aftercare_lateness_seconds"
    }

    /// Histogram buckets for the send time: a quick webhook to a relay that takes its time.
    public static let sendDurationBuckets: [Duration] = [
        .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]
    /// Histogram buckets for lateness: on time, to a day behind.
    public static let latenessBuckets: [Duration] = [
        .seconds(1), .seconds(10), .seconds(30), .seconds(60), .seconds(300), .seconds(900), .seconds(1800),
        .seconds(3600), .seconds(7200), .seconds(6 * 3600), .seconds(24 * 3600),
    ]

    /// Every way a claimed reminder can come out of the pipeline.
    static let outcomeLabels = ["delivered", "retry", "next_route", "dead", "expired", "deferred", "skipped", "released"]

    let factory: any MetricsFactory
    /// How long due reminders may wait unclaimed before the pipeline counts as stuck.
    public let stallAfter: Duration
    private let outcomes: [String: Counter]
    private let lateness: Metrics.Timer
    private let perSender = Mutex<[String: SenderCounters]>([:])
    private let progress: Mutex<PipelineProgress>

    /// - Parameters:
    ///   - factory: where the counts go; swift-metrics' global factory (a no-op unless bootstrapped)
    ///     by default.
    ///   - stallAfter: how long due reminders may wait unclaimed before `/health` fails.
    public init(factory: any MetricsFactory = MetricsSystem.factory, stallAfter: Duration = .seconds(900)) {
        self.factory = factory
        self.stallAfter = stallAfter
        // Made up front so every outcome shows (as 0) before it first happens: rate() and
        // increase() need a series to exist before its first step.
        outcomes = Dictionary(uniqueKeysWithValues: Self.outcomeLabels.map {
            ($0, Counter(label: Name.outcomes, dimensions: [("outcome", $0)], factory: factory))
        })
        lateness = Metrics.Timer(label: Name.lateness, dimensions: [], factory: factory)
        progress = Mutex(PipelineProgress(startedAt: .now))
    }

    // MARK: What the daemon calls

    /// Outcomes were written to the store (called once per group, after the write succeeded, so
    /// a group the store refused and is written again later is counted once).
    public func recorded(_ group: [(ClaimedReminder, Resolution)]) {
        for (reminder, resolution) in group {
            outcomes[Self.outcome(of: resolution)]?.increment()
            guard case .attempted(let attempt, _) = resolution else { continue }
            let counters = counters(forSender: attempt.sender)
            let result: String
            switch attempt.result.outcome {
            case .delivered:
                result = "delivered"
                lateness.record(duration: Self.duration(max(0, attempt.endedAt.timeIntervalSince(reminder.dueAt))))
            case .retry: result = "retry"
            case .failed: result = "failed"
            }
            counters.attempts[result]?.increment()
            let sendTime = attempt.endedAt.timeIntervalSince(attempt.startedAt)
            counters.duration.record(duration: Self.duration(max(0, sendTime)))
        }
    }

    /// The dispatch pipeline went round once.
    public func pipelineTurned() {
        progress.withLock { state in
            let now = ContinuousClock.now
            if state.firstTurn == nil { state.firstTurn = now }
            state.lastTurn = now
        }
    }

    /// The store refused work; `problem` says what and why. Kept until ``storageWorks()``.
    public func storageFailing(_ problem: String) {
        progress.withLock { state in
            if state.storageFailingSince == nil { state.storageFailingSince = .now }
            state.storageProblem = problem
        }
    }

    /// The store took work again.
    public func storageWorks() {
        progress.withLock { state in
            state.storageFailingSince = nil
            state.storageProblem = nil
        }
    }

    // MARK: Health

    /// The queue as last read from the store, for judging health between scrapes.
    func remember(_ snapshot: QueueSnapshot) { progress.withLock { $0.queue = snapshot } }

    /// Whether the pipeline makes progress, judged now.
    public func health() -> HealthVerdict {
        let state = progress.withLock { $0 }
        return PipelineHealth.judge(state, now: .now, stallAfter: stallAfter)
    }

    // MARK: Parts

    private struct SenderCounters: Sendable {
        var attempts: [String: Counter]
        var duration: Metrics.Timer
    }

    private func counters(forSender sender: String) -> SenderCounters {
        perSender.withLock { known in
            if let counters = known[sender] { return counters }
            let counters = SenderCounters(
                attempts: Dictionary(uniqueKeysWithValues: ["delivered", "retry", "failed"].map {
                    ($0, Counter(
                        label: Name.attempts, dimensions: [("sender", sender), ("outcome", $0)], factory: factory))
                }),
                duration: Metrics.Timer(label: Name.sendDuration, dimensions: [("sender", sender)], factory: factory))
            known[sender] = counters
            return counters
        }
    }

    /// Where a claimed reminder went: delivered, back for a retry, on to the patient's next route,
    /// dead, expired, deferred, skipped, or released at shutdown.
    static func outcome(of resolution: Resolution) -> String {
        switch resolution {
        case .attempted(_, let next):
            switch next {
            case .delivered: return "delivered"
            case .retry: return "retry"
            case .nextRoute: return "next_route"
            case .expired: return "expired"
            case .dead: return "dead"
            }
        case .expired: return "expired"
        case .deferred: return "deferred"
        case .skipped: return "skipped"
        case .dead: return "dead"
        case .released: return "released"
        }
    }

    private static func duration(_ seconds: TimeInterval) -> Duration {
        .nanoseconds(Int64(min(seconds, 1e9) * 1e9))
    }
}

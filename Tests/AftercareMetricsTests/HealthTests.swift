@testable import AftercareMetrics
import AftercareStore
import Foundation
import Testing

@Suite("/health's judgement: progress, a failing store, due reminders left unclaimed")
struct HealthTests {
    static let start = ContinuousClock.now
    static let noon = Date(timeIntervalSince1970: 1_795_000_000)
    static let stallAfter = Duration.seconds(900)

    func progress(turnedAt: Duration? = .seconds(1), queue: QueueSnapshot? = nil) -> PipelineProgress {
        PipelineProgress(
            startedAt: Self.start, firstTurn: turnedAt.map { _ in Self.start },
            lastTurn: turnedAt.map { Self.start + $0 },
            queue: queue)
    }

    func queue(at: Duration = .seconds(2), due: Int, oldestWaiting seconds: Double) -> QueueSnapshot {
        QueueSnapshot(
            takenAt: Self.start + at, wallNow: Self.noon, dueNow: due,
            earliestDue: Self.noon.addingTimeInterval(-seconds))
    }

    func judge(_ progress: PipelineProgress, at offset: Duration) -> HealthVerdict {
        PipelineHealth.judge(progress, now: Self.start + offset, stallAfter: Self.stallAfter)
    }

    @Test("a pipeline that turns and claims what is due is healthy, however long it has been idle")
    func healthy() {
        #expect(judge(progress(queue: queue(due: 0, oldestWaiting: 0)), at: .seconds(3)).isHealthy)
        // Idle for a day with nothing due: nothing to claim, nothing stuck.
        let idle = progress(queue: queue(at: .seconds(86400), due: 0, oldestWaiting: 0))
        #expect(judge(idle, at: .seconds(86400)).isHealthy)
        // A backlog younger than stall_after is work in progress.
        #expect(judge(progress(queue: queue(due: 500, oldestWaiting: 899)), at: .seconds(3)).isHealthy)
    }

    @Test("a failing store is stuck at once, saying for how long and why; working again, healthy")
    func failingStore() {
        var state = progress(queue: queue(due: 0, oldestWaiting: 0))
        state.storageFailingSince = Self.start + .seconds(10)
        state.storageProblem = "dispatch: database is locked"
        let verdict = judge(state, at: .seconds(22))
        #expect(verdict == .stuck("the store has been failing for 12s: dispatch: database is locked"))
        #expect(verdict.line == "stuck: the store has been failing for 12s: dispatch: database is locked")
        state.storageFailingSince = nil
        #expect(judge(state, at: .seconds(23)).isHealthy)
    }

    @Test("due reminders waiting past stall_after are stuck; the reason says whether the pipeline turns")
    func unclaimed() {
        let turning = judge(
            progress(turnedAt: .seconds(1000), queue: queue(due: 3, oldestWaiting: 960)), at: .seconds(1001))
        guard case .stuck(let reason) = turning else {
            Issue.record("\(turning)")
            return
        }
        #expect(reason.hasPrefix("3 reminder(s) due, the oldest for 16m"), "\(reason)")
        #expect(reason.hasSuffix("not being claimed"), "\(reason)")

        let asleep = judge(
            progress(turnedAt: .seconds(1), queue: queue(at: .seconds(2000), due: 1, oldestWaiting: 1800)),
            at: .seconds(2001))
        guard case .stuck(let why) = asleep else {
            Issue.record("\(asleep)")
            return
        }
        #expect(why.hasSuffix("; the dispatch pipeline last turned 33m ago"), "\(why)")
    }

    @Test("a queue read from before the pipeline's first turn does not count against it (start-up backlog)")
    func readingBeforeFirstTurn() {
        var state = progress(queue: queue(at: .seconds(0), due: 40, oldestWaiting: 7200))
        state.firstTurn = Self.start + .seconds(1)
        #expect(judge(state, at: .seconds(2)).isHealthy)
    }

    @Test("a pipeline that never starts is stuck after stall_after, not before")
    func neverStarted() {
        let state = progress(turnedAt: nil)
        #expect(judge(state, at: .seconds(10)) == .healthy("starting"))
        #expect(judge(state, at: .seconds(901)) == .stuck("the dispatch pipeline has not started after 15m"))
    }

    @Test("a queue that cannot be read is reported, not taken for an empty one")
    func unreadable() {
        var snapshot = queue(due: 0, oldestWaiting: 0)
        snapshot.readProblem = "cannot open database"
        let verdict = judge(progress(queue: snapshot), at: .seconds(3))
        #expect(verdict == .stuck("the queue cannot be read: cannot open database"))
    }
}

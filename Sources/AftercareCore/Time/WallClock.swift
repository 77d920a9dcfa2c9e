import Foundation
import Synchronization

/// The time source the scheduler runs on. Injected, so tests run a 72-hour plan in milliseconds.
///
/// Implementers guarantee that `now()` never goes backwards within one process for a
/// ``ManualClock``, and that `sleep(until:)` returns no earlier than the deadline (by `now()`), or
/// throws `CancellationError` promptly when the calling task is cancelled.
public protocol WallClock: Sendable {
    /// The current instant.
    func now() -> Date
    /// Suspends until `deadline`, or throws `CancellationError` if the task is cancelled first.
    func sleep(until deadline: Date) async throws
    /// Time elapsed on this clock since an arbitrary origin, for intervals (a flush every 20 ms, a
    /// retry in 5 s, the watchdog's cadence): it never goes backwards, even when `now()` is stepped.
    func uptime() -> Duration
    /// Suspends until ``uptime()`` reaches `deadline`, or throws `CancellationError` if the task is
    /// cancelled first.
    func sleep(untilUptime deadline: Duration) async throws
}

/// The real clock. Sleeps in one piece until the deadline, re-checking the wall clock every 10
/// minutes at most, so a stepped system clock delays a reminder by minutes, never by hours.
public struct SystemClock: WallClock {
    /// Where this process's ``uptime()`` counts from.
    private static let origin = ContinuousClock.now

    public init() {}

    public func uptime() -> Duration { ContinuousClock.now - Self.origin }

    public func sleep(untilUptime deadline: Duration) async throws {
        try await Task.sleep(until: Self.origin + deadline, clock: .continuous)
    }

    public func now() -> Date { Date() }

    public func sleep(until deadline: Date) async throws {
        while true {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { return }
            try await Task.sleep(for: .seconds(min(remaining, 600)))
        }
    }
}

/// A clock that moves only when told to. Sleepers wake when ``advance(by:)`` or ``set(_:)`` passes
/// their deadline.
public final class ManualClock: WallClock {
    private struct Sleeper {
        let deadline: Date
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now: Date
        var sleepers: [UInt64: Sleeper] = [:]
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>

    private let start: Date

    public init(_ start: Date) {
        self.start = start
        state = Mutex(State(now: start))
    }

    /// Moves with ``now()``: a manual clock is never stepped backwards.
    public func uptime() -> Duration {
        let seconds = now().timeIntervalSince(start)
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    public func sleep(untilUptime deadline: Duration) async throws {
        let seconds = Double(deadline.components.seconds) + Double(deadline.components.attoseconds) / 1e18
        try await sleep(until: start.addingTimeInterval(seconds))
    }

    public func now() -> Date { state.withLock { $0.now } }

    /// How many tasks are asleep on this clock: tests wait for the scheduler to settle with it.
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    /// The earliest deadline anyone sleeps until, if any.
    public var nextDeadline: Date? { state.withLock { $0.sleepers.values.map(\.deadline).min() } }

    public func advance(by seconds: TimeInterval) { set(now().addingTimeInterval(seconds)) }

    /// Moves this clock along with real time, every `step`, until the returned task is cancelled:
    /// for a test whose fault lasts real seconds (a lock held by another process, a full disk)
    /// while the daemon's timers run on this clock.
    public func followRealTime(step: Duration = .milliseconds(10)) -> Task<Void, Never> {
        Task { [self] in
            var last = ContinuousClock.now
            while !Task.isCancelled {
                try? await Task.sleep(for: step)
                let now = ContinuousClock.now
                let elapsed = now - last
                last = now
                advance(by: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
            }
        }
    }

    /// Moves the clock to `date` (never backwards) and wakes every sleeper whose deadline passed.
    public func set(_ date: Date) {
        let woken: [CheckedContinuation<Void, any Error>] = state.withLock { state in
            if date > state.now { state.now = date }
            let due = state.sleepers.filter { $0.value.deadline <= state.now }
            for id in due.keys { state.sleepers[id] = nil }
            return due.values.map(\.continuation)
        }
        for continuation in woken { continuation.resume() }
    }

    public func sleep(until deadline: Date) async throws {
        let id: UInt64 = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow: Bool = state.withLock { state in
                    if deadline <= state.now || Task.isCancelled { return true }
                    state.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return false
                }
                if resumeNow {
                    if Task.isCancelled { continuation.resume(throwing: CancellationError()) } else {
                        continuation.resume()
                    }
                }
            }
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }
}

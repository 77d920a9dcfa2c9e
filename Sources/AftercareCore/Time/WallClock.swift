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
}

/// The real clock. Sleeps in one piece until the deadline, re-checking the wall clock every 10
/// minutes at most, so a stepped system clock delays a reminder by minutes, never by hours.
public struct SystemClock: WallClock {
    public init() {}

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

    public init(_ start: Date) {
        state = Mutex(State(now: start))
    }

    public func now() -> Date { state.withLock { $0.now } }

    /// How many tasks are asleep on this clock: tests wait for the scheduler to settle with it.
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    /// The earliest deadline anyone sleeps until, if any.
    public var nextDeadline: Date? { state.withLock { $0.sleepers.values.map(\.deadline).min() } }

    public func advance(by seconds: TimeInterval) { set(now().addingTimeInterval(seconds)) }

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

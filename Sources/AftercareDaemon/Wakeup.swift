import AftercareCore
import Foundation
import Synchronization

/// Why the scheduler was woken before its deadline.
enum WakeReason: Sendable, Hashable {
    /// A file arrived in the spool.
    case spool
    /// SIGHUP: re-read the configuration.
    case reload
    /// Graceful shutdown began.
    case shutdown
    /// An outcome waits to be recorded: re-arm the timer that records it.
    case flush
}

/// Lets the scheduler sleep until its next deadline while anything else can wake it early.
final class Wakeup: Sendable {
    private struct State {
        var pending: Set<WakeReason> = []
        var waiter: CheckedContinuation<Void, Never>?
        /// Counts signals, so a waiter created earlier knows it missed one even if the reasons were
        /// already taken by someone else.
        var generation: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Wakes the scheduler (now, or as soon as it next waits) and remembers why.
    func signal(_ reason: WakeReason) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            state.pending.insert(reason)
            state.generation &+= 1
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Takes the reasons signalled since the last call.
    func take() -> Set<WakeReason> {
        state.withLock { state in
            defer { state.pending = [] }
            return state.pending
        }
    }

    func peek() -> Set<WakeReason> { state.withLock { $0.pending } }

    /// The current signal count; pass it to `wait(…since:)` to return at once on any later signal.
    var generation: UInt64 { state.withLock { $0.generation } }

    /// Returns at `deadline` on `clock`, after `realTimeLimit` of real time (the watchdog's cadence),
    /// or as soon as something is signalled, whichever is first.
    func wait(until deadline: Date?, realTimeLimit: Duration?, clock: any WallClock, since: UInt64? = nil) async {
        await withTaskGroup(of: Void.self) { group in
            if let deadline {
                group.addTask { try? await clock.sleep(until: deadline) }
            }
            if let realTimeLimit {
                group.addTask { try? await Task.sleep(for: realTimeLimit) }
            }
            group.addTask { await self.waitForSignal(since: since) }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForSignal(since: UInt64?) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if !state.pending.isEmpty || Task.isCancelled { return true }
                    if let since, since != state.generation { return true }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}

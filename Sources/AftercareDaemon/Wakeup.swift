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
///
/// Any number of tasks may wait at once (the pipeline's ticker and a back-off after a storage error,
/// say): a signal wakes them all, and cancelling one waiter resumes only that one.
final class Wakeup: Sendable {
    private struct State {
        var pending: Set<WakeReason> = []
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
        /// Counts signals, so a waiter created earlier knows it missed one even if the reasons were
        /// already taken by someone else.
        var generation: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Wakes every waiter (now, or the next one as soon as it waits) and remembers why.
    func signal(_ reason: WakeReason) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.pending.insert(reason)
            state.generation &+= 1
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Takes the reasons signalled since the last call.
    func take() -> Set<WakeReason> {
        state.withLock { state in
            defer { state.pending = [] }
            return state.pending
        }
    }

    /// The current signal count; pass it to `wait(…since:)` to return at once on any later signal.
    var generation: UInt64 { state.withLock { $0.generation } }

    /// How many tasks wait for a signal right now (for tests).
    var waiterCount: Int { state.withLock { $0.waiters.count } }

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
        let id = state.withLock { state -> UInt64 in
            defer { state.nextWaiter &+= 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if !state.pending.isEmpty || Task.isCancelled { return true }
                    if let since, since != state.generation { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state in state.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}

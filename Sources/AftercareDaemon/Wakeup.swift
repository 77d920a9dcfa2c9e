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
}

/// Lets the scheduler sleep until its next deadline while anything else can wake it early.
final class Wakeup: Sendable {
    private struct State {
        var pending: Set<WakeReason> = []
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    /// Wakes the scheduler (now, or as soon as it next waits) and remembers why.
    func signal(_ reason: WakeReason) {
        let waiter: CheckedContinuation<Void, Never>? = state.withLock { state in
            state.pending.insert(reason)
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

    /// Returns at `deadline` on `clock`, after `realTimeLimit` of real time (the watchdog's cadence),
    /// or as soon as something is signalled, whichever is first.
    func wait(until deadline: Date?, realTimeLimit: Duration?, clock: any WallClock) async {
        await withTaskGroup(of: Void.self) { group in
            if let deadline {
                group.addTask { try? await clock.sleep(until: deadline) }
            }
            if let realTimeLimit {
                group.addTask { try? await Task.sleep(for: realTimeLimit) }
            }
            group.addTask { await self.waitForSignal() }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForSignal() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if !state.pending.isEmpty || Task.isCancelled { return true }
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

import AftercareCore
import Foundation
import Synchronization

/// Why a loop was woken before its deadline (the dispatch pipeline gets these through its mailbox).
enum WakeReason: Sendable, Hashable {
    /// A file arrived in the spool.
    case spool
    /// SIGHUP: re-read the configuration.
    case reload
    /// Graceful shutdown began.
    case shutdown
    /// Another daemon sharing the queue added or re-queued work.
    case queue
}

/// Lets the intake loop sleep until its next deadline (an appointment to close, the next folder
/// check) while a new spool file or a shutdown can wake it early. (The dispatch pipeline's events
/// arrive through its ``Mailbox``.)
///
/// Any number of tasks may wait at once: a signal wakes them all, and cancelling one waiter resumes
/// only that one.
final class Wakeup: Sendable {
    private struct State {
        var pending: Set<WakeReason> = []
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())

    /// Wakes every waiter (now, or the next one as soon as it waits) and remembers why.
    func signal(_ reason: WakeReason) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.pending.insert(reason)
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

    /// How many tasks wait for a signal right now (for tests).
    var waiterCount: Int { state.withLock { $0.waiters.count } }

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
        let id = state.withLock { state -> UInt64 in
            defer { state.nextWaiter &+= 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state in
                    if !state.pending.isEmpty || Task.isCancelled { return true }
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

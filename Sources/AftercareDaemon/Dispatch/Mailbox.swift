import Synchronization

/// Where the dispatch pipeline's events arrive from any thread: the curl thread finishing sends,
/// background writes, signals, timers. The one reader takes everything that waits at once, so a
/// burst of completions costs one wake-up, not one each.
final class Mailbox<Message: Sendable>: Sendable {
    private struct State {
        var messages: [Message] = []
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    init() {}

    /// Adds a message and wakes the reader if it waits.
    func post(_ message: Message) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.messages.append(message)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Everything posted since the last call, in order; empty if nothing was.
    func takeAll() -> [Message] {
        state.withLock { state in
            var taken: [Message] = []
            swap(&taken, &state.messages)
            return taken
        }
    }

    /// Returns once a message waits (at once if one does), or when the task is cancelled.
    /// One reader at a time.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if !state.messages.isEmpty || Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}

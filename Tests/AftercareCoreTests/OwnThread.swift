import Foundation

/// Runs CPU-bound test work on a thread of its own, so it never holds the cooperative pool's few
/// threads that the in-process daemon suites, running beside it, need to make progress.
enum OwnThread {
    static func run<Result: Sendable>(_ work: @escaping @Sendable () -> Result) async -> Result {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: work()) }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }
}

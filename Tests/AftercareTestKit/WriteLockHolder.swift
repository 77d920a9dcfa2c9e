import Foundation
import GRDB
import Synchronization

/// Another process's view of the database, as far as SQLite can tell: a connection of its own that
/// takes the write lock (`BEGIN EXCLUSIVE`) and keeps it until ``release()``. It runs on a thread of
/// its own: a lock holder must not occupy the test's cooperative pool.
public final class WriteLockHolder: Sendable {
    private let releaseWanted = Mutex(false)
    private let releasedFlag = Mutex(false)

    /// Opens `path` and takes its write lock from a new thread; returns once the lock is held.
    public init(path: String) throws {
        let intruder = try DatabaseQueue(path: path)
        let held = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let thread = Thread { [self] in
            do {
                try intruder.writeWithoutTransaction { db in
                    try db.execute(sql: "BEGIN EXCLUSIVE")
                    held.signal()
                    while !self.releaseWanted.withLock({ $0 }) { usleep(10_000) }
                    try db.execute(sql: "COMMIT")
                }
            } catch {
                failure.withLock { $0 = "\(error)" }
                held.signal()
            }
            self.releasedFlag.withLock { $0 = true }
        }
        thread.start()
        held.wait()
        if let message = failure.withLock({ $0 }) { throw LockNotTaken(message: message) }
    }

    /// The write lock could not be taken.
    public struct LockNotTaken: Error, CustomStringConvertible {
        public var message: String
        public var description: String { "cannot take the write lock: \(message)" }
    }

    /// Lets the lock go (at once: the holder looks every 10 ms).
    public func release() { releaseWanted.withLock { $0 = true } }

    /// Whether the lock has been let go.
    public var released: Bool { releasedFlag.withLock { $0 } }
}

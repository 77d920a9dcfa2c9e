import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Watches `incoming/` with inotify and calls back when a file is renamed in or closed after
/// writing, or when the folder itself goes (removed, moved, unmounted). A dedicated thread blocks in
/// `poll(2)`: no busy polling, no CPU while nothing arrives.
///
/// A watch follows an inode, not a path: once the folder is gone, a new folder of the same name is
/// not watched until ``ensureWatching(_:)`` re-arms it. The daemon calls that on every wake-up and
/// on a timer, so intake also recovers when nothing told the watcher (the spool root moved away).
final class SpoolWatcher: @unchecked Sendable {
    private let inotifyFD: Int32
    private let stopFD: Int32
    private let stopReadFD: Int32
    private let thread: Thread
    private let watched: WatchState

    /// The current watch, shared with the watcher's thread.
    private final class WatchState: Sendable {
        let watch: Mutex<Watch?>
        init(_ watch: Watch) { self.watch = Mutex(watch) }
    }

    /// The folder being watched: the watch descriptor and the inode it follows.
    private struct Watch: Sendable {
        var descriptor: Int32
        var device: UInt64
        var inode: UInt64
        /// inotify said the watch ended (`IN_IGNORED`, `IN_DELETE_SELF`, `IN_MOVE_SELF`, `IN_UNMOUNT`).
        var lost = false
    }

    private static let fileEvents = UInt32(IN_MOVED_TO) | UInt32(IN_CLOSE_WRITE)
    private static let folderEvents = UInt32(IN_DELETE_SELF) | UInt32(IN_MOVE_SELF)
    private static let endEvents = folderEvents | UInt32(IN_IGNORED) | UInt32(IN_UNMOUNT)

    /// Starts watching `folder`; `onChange` runs on the watcher's thread.
    init(folder: String, onChange: @escaping @Sendable () -> Void) throws {
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw SpoolError("inotify_init1 failed: \(String(cString: strerror(errno)))") }
        let first: Watch
        do {
            first = try Self.addWatch(fd, folder)
        } catch {
            close(fd)
            throw error
        }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            close(fd)
            throw SpoolError("pipe failed: \(String(cString: strerror(errno)))")
        }
        let stop = pipeFDs[0]
        _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        inotifyFD = fd
        stopReadFD = pipeFDs[0]
        stopFD = pipeFDs[1]
        let watched = WatchState(first)
        self.watched = watched
        thread = Thread { [watched] in
            var fds = [
                pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0),
            ]
            // Aligned for inotify_event; big enough for many events at once.
            let capacity = 64 * 1024
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
            defer { buffer.deallocate() }
            while true {
                let ready = poll(&fds, 2, -1)
                if ready < 0 {
                    if errno == EINTR { continue }
                    return
                }
                if fds[1].revents != 0 { return }
                if fds[0].revents != 0 {
                    var sawEvent = false
                    while true {
                        let count = read(fd, buffer, capacity)
                        if count <= 0 { break }
                        sawEvent = true
                        Self.noteEnds(in: UnsafeRawBufferPointer(start: buffer, count: count), watched: watched)
                    }
                    if sawEvent { onChange() }
                }
            }
        }
        thread.name = "aftercare-spool-watcher"
        thread.start()
    }

    /// Marks the watch lost if one of `events` says it ended.
    private static func noteEnds(in events: UnsafeRawBufferPointer, watched: WatchState) {
        let header = MemoryLayout<inotify_event>.size
        var offset = 0
        while offset + header <= events.count {
            let descriptor = events.loadUnaligned(fromByteOffset: offset, as: Int32.self)
            let mask = events.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
            let nameLength = events.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)
            if mask & endEvents != 0 {
                watched.watch.withLock { watch in
                    if watch?.descriptor == descriptor { watch?.lost = true }
                }
            }
            offset += header + Int(nameLength)
        }
    }

    private static func addWatch(_ fd: Int32, _ folder: String) throws -> Watch {
        let mask = fileEvents | folderEvents | UInt32(IN_ONLYDIR) | UInt32(IN_DONT_FOLLOW)
        let descriptor = inotify_add_watch(fd, folder, mask)
        guard descriptor >= 0 else { throw SpoolError("cannot watch \(folder): \(String(cString: strerror(errno)))") }
        var info = stat()
        guard lstat(folder, &info) == 0 else {
            throw SpoolError("cannot watch \(folder): \(String(cString: strerror(errno)))")
        }
        return Watch(descriptor: descriptor, device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// What ``ensureWatching(_:)`` found.
    enum FolderCheck: Equatable {
        /// The folders are there and `incoming/` is the folder being watched.
        case intact
        /// Something was wrong and is mended: folders recreated, the watch re-armed; says what.
        case restored(String)
        /// Something is wrong and cannot be mended now; says what.
        case broken(String)
    }

    /// Makes sure the spool's folders exist and that the watch follows the `incoming/` that is
    /// there now, recreating and re-arming as needed.
    func ensureWatching(_ spool: Spool) -> FolderCheck {
        let created: [String]
        do {
            created = try spool.prepare()
        } catch {
            return .broken("\(error)")
        }
        let folder = spool.incoming.path
        var info = stat()
        let current = lstat(folder, &info) == 0 ? (UInt64(info.st_dev), UInt64(info.st_ino)) : nil
        let stale = watched.watch.withLock { watch -> Int32? in
            guard let watch else { return -1 }
            if watch.lost || current.map({ $0 != (watch.device, watch.inode) }) ?? true { return watch.descriptor }
            return nil
        }
        guard !created.isEmpty || stale != nil else { return .intact }
        if let stale {
            if stale >= 0 { inotify_rm_watch(inotifyFD, stale) }
            do {
                let fresh = try Self.addWatch(inotifyFD, folder)
                watched.watch.withLock { $0 = fresh }
            } catch {
                watched.watch.withLock { $0 = nil }
                return .broken("\(error)")
            }
        }
        let what = created.isEmpty
            ? "\(folder) was replaced"
            : "spool folder(s) \(created.map { $0 + "/" }.joined(separator: ", ")) were missing under "
                + spool.root.path
        return .restored("\(what) (removed or moved while the daemon ran?); recreated, watching \(folder) again")
    }

    /// Stops the thread and closes the descriptors.
    func stop() {
        var one: UInt8 = 1
        _ = write(stopFD, &one, 1)
        // The thread exits on its own; give it a moment before closing what it polls.
        for _ in 0..<100 where !thread.isFinished { usleep(1000) }
        close(inotifyFD)
        close(stopFD)
        close(stopReadFD)
    }
}

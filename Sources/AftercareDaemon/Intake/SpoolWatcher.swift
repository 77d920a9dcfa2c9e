import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Watches `incoming/` with inotify and calls back when a file is renamed in or closed after
/// writing. A dedicated thread blocks in `poll(2)`: no busy polling, no CPU while nothing arrives.
final class SpoolWatcher: @unchecked Sendable {
    private let inotifyFD: Int32
    private let stopFD: Int32
    private let stopReadFD: Int32
    private let thread: Thread

    /// Starts watching `folder`; `onChange` runs on the watcher's thread.
    init(folder: String, onChange: @escaping @Sendable () -> Void) throws {
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw SpoolError("inotify_init1 failed: \(String(cString: strerror(errno)))") }
        let mask = UInt32(IN_MOVED_TO) | UInt32(IN_CLOSE_WRITE)
        guard inotify_add_watch(fd, folder, mask) >= 0 else {
            let code = errno
            close(fd)
            throw SpoolError("cannot watch \(folder): \(String(cString: strerror(code)))")
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
        thread = Thread {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let ready = poll(&fds, 2, -1)
                if ready < 0 {
                    if errno == EINTR { continue }
                    return
                }
                if fds[1].revents != 0 { return }
                if fds[0].revents != 0 {
                    var sawEvent = false
                    while read(fd, &buffer, buffer.count) > 0 { sawEvent = true }
                    if sawEvent { onChange() }
                }
            }
        }
        thread.name = "aftercare-spool-watcher"
        thread.start()
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

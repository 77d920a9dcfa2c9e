import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs `aftercare daemon` as systemd would: with `$NOTIFY_SOCKET` pointing at a datagram socket the
/// benchmark owns, so start-up is timed from the spawn to the `READY=1` datagram. Its VmRSS and
/// VmHWM (the kernel's own high-water mark, so no peak slips between samples) are read from /proc
/// every 20 ms until it exits. (`wait4`'s `ru_maxrss` would not do: it counts the memory of the
/// benchmark process the daemon was spawned from, before its exec.)
final class DaemonProcess {
    let pid: Int32
    let logPath: String
    let spawnedAt: ContinuousClock.Instant
    private let notify: NotifyListener
    private let sampler: MemorySampler
    private var exitStatus: Int32?

    init(configPath: String, logPath: String, environment: [String: String] = [:]) throws {
        self.logPath = logPath
        notify = try NotifyListener()
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notify.path
        for (key, value) in environment { env[key] = value }
        let executable = Workbench.binFolder.appendingPathComponent("aftercare").path
        let words: [String] = [executable, "daemon", "--config", configPath, "--log-level", "notice"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) }
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") }
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // As systemd starts a service: no signal blocked, every handler at its default.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        var all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var child: pid_t = 0
        spawnedAt = .now
        let result = posix_spawn(&child, executable, &actions, &attributes, argv + [nil], envp + [nil])
        guard result == 0 else {
            notify.close()
            throw BenchError("cannot start \(executable): \(String(cString: strerror(result)))")
        }
        pid = child
        sampler = MemorySampler(pid: child)
    }

    deinit { stop() }

    /// Whether the daemon is still running (reaps it, keeping its peak, if it has exited).
    var isRunning: Bool {
        if exitStatus != nil { return false }
        return !reap(blocking: false)
    }

    /// Waits for `READY=1` (or the ready line in the log, should no datagram come); returns the
    /// seconds from the spawn to the datagram.
    @discardableResult
    func waitUntilReady(timeout: Double = 600) throws -> Double {
        let deadline = ContinuousClock.now + .seconds(timeout)
        while ContinuousClock.now < deadline {
            if let ready = notify.readyAt { return seconds(from: spawnedAt, to: ready) }
            guard isRunning else { throw BenchError("the daemon exited: \(tail())") }
            usleep(5_000)
        }
        throw BenchError("the daemon sent no READY=1 within \(Int(timeout)) s: \(tail())")
    }

    /// Sends SIGTERM and waits for the daemon to exit.
    func stop() {
        if exitStatus == nil {
            kill(pid, SIGTERM)
            _ = reap(blocking: true)
        }
        sampler.stop()
        notify.close()
    }

    /// The most resident memory the daemon had, in KiB: its VmHWM as last read, at most 20 ms
    /// before it exited.
    var peakKiB: Int { sampler.peakKiB }

    /// A line saying how the peak was taken.
    var memoryLine: String {
        "peak RSS \(mebibytes(peakKiB)) (VmHWM last read \(exitStatus == nil ? "while running" : "before exit"); "
            + "highest VmRSS in \(sampler.sampleCount) samples every 20 ms: \(mebibytes(sampler.highestRSSKiB)))"
    }

    private func reap(blocking: Bool) -> Bool {
        var status: Int32 = 0
        let result = waitpid(pid, &status, blocking ? 0 : WNOHANG)
        guard result == pid else { return false }
        exitStatus = status
        sampler.stop()
        return true
    }

    func tail() -> String {
        ((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "").split(separator: "\n").suffix(5)
            .joined(separator: " | ")
    }
}

func mebibytes(_ kib: Int) -> String { String(format: "%.1f MiB", Double(kib) / 1024) }

/// Reads a process's VmRSS and VmHWM every 20 ms on a thread of its own.
final class MemorySampler: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private var highestRSS = 0
    private var highestHWM = 0
    private var samples = 0

    init(pid: Int32) {
        let thread = Thread { [self] in
            while lock.withLock({ running }) {
                let memory = ProcessProbe.memory(pid)
                lock.withLock {
                    if memory.rss > 0 { samples += 1 }
                    highestRSS = max(highestRSS, memory.rss)
                    highestHWM = max(highestHWM, memory.peak)
                }
                usleep(20_000)
            }
        }
        thread.start()
    }

    func stop() { lock.withLock { running = false } }
    var peakKiB: Int { lock.withLock { max(highestRSS, highestHWM) } }
    var highestRSSKiB: Int { lock.withLock { highestRSS } }
    var sampleCount: Int { lock.withLock { samples } }
}

/// A unix datagram socket standing in for systemd's notify socket: notes when `READY=1` arrives.
final class NotifyListener: @unchecked Sendable {
    let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var ready: ContinuousClock.Instant?
    private var open = true

    init() throws {
        path = NSTemporaryDirectory() + "aftercare-bench-notify-" + UUID().uuidString.prefix(8)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BenchError("cannot create a notify socket") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw BenchError("cannot bind the notify socket \(path)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let thread = Thread { [self] in listen() }
        thread.start()
    }

    /// When `READY=1` arrived, if it has.
    var readyAt: ContinuousClock.Instant? { lock.withLock { ready } }

    private func listen() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while lock.withLock({ open }) {
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { continue }
            let now = ContinuousClock.now
            let text = String(decoding: buffer[0..<count], as: UTF8.self)
            if text.split(separator: "\n").contains("READY=1") {
                lock.withLock { if ready == nil { ready = now } }
            }
        }
        Glibc.close(fd)
        unlink(path)
    }

    func close() { lock.withLock { open = false } }
}

func seconds(from start: ContinuousClock.Instant, to end: ContinuousClock.Instant) -> Double {
    let elapsed = end - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

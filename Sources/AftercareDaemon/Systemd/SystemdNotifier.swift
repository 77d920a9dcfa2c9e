import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Talks to systemd over `$NOTIFY_SOCKET`, written against the `sd_notify` datagram protocol
/// itself: newline-separated `KEY=VALUE` fields in one datagram to an `AF_UNIX` socket, given as a
/// path (`/run/systemd/notify`) or, with a leading `@`, in the abstract namespace.
///
/// With no `$NOTIFY_SOCKET` every call does nothing and nothing fails. Sends never block (the
/// socket is non-blocking) and never throw; a lost datagram is only logged by systemd's absence.
public final class SystemdNotifier: ServiceManagerNotifier {
    private let address: Data?
    private let socketFD: Int32
    /// Half of `$WATCHDOG_USEC`, when the watchdog is armed for this process.
    public let watchdogInterval: Duration?
    private let lastPing = Mutex<ContinuousClock.Instant?>(nil)

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        address = environment["NOTIFY_SOCKET"].flatMap(Self.socketAddress)
        socketFD = address == nil ? -1 : socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        watchdogInterval = Self.watchdogInterval(environment: environment)
    }

    deinit {
        if socketFD >= 0 { close(socketFD) }
    }

    /// Whether there is a service manager to tell.
    public var isEnabled: Bool { address != nil && socketFD >= 0 }

    /// Half of `$WATCHDOG_USEC`, if set and meant for this process (`$WATCHDOG_PID` unset or ours).
    static func watchdogInterval(environment: [String: String]) -> Duration? {
        guard let text = environment["WATCHDOG_USEC"], let micros = UInt64(text), micros > 0 else { return nil }
        if let pid = environment["WATCHDOG_PID"], !pid.isEmpty, Int32(pid) != getpid() { return nil }
        return .microseconds(Int64(micros / 2))
    }

    /// `sockaddr_un` bytes for a path or an `@abstract` name; `nil` if it cannot be one.
    static func socketAddress(_ value: String) -> Data? {
        guard value.hasPrefix("/") || value.hasPrefix("@") else { return nil }
        var path = Array(value.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        var address = sockaddr_un()
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else { return nil }
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
        }
        // Abstract names are exactly as long as given; paths carry their terminating NUL.
        let length = MemoryLayout<sa_family_t>.size + path.count + (path.first == 0 ? 0 : 1)
        return withUnsafeBytes(of: &address) { Data($0.prefix(length)) }
    }

    /// Sends raw fields; returns whether the datagram went out. Values are kept to one line.
    @discardableResult
    public func send(_ fields: [(String, String)]) -> Bool {
        guard isEnabled, let address else { return false }
        let text = fields.map { key, value in
            key + "=" + value.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "\r", with: " ")
        }.joined(separator: "\n") + "\n"
        let bytes = Array(text.utf8)
        let sent = address.withUnsafeBytes { raw in
            bytes.withUnsafeBytes { payload in
                sendto(
                    socketFD, payload.baseAddress, payload.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL),
                    raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
            }
        }
        return sent == bytes.count
    }

    public func ready(status: String?) {
        send([("READY", "1")] + (status.map { [("STATUS", $0)] } ?? []))
    }

    public func status(_ text: String) { send([("STATUS", text)]) }

    public func reloading(status: String?) {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let micros = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        send([("RELOADING", "1"), ("MONOTONIC_USEC", String(micros))] + (status.map { [("STATUS", $0)] } ?? []))
    }

    public func stopping(status: String?) {
        send([("STOPPING", "1")] + (status.map { [("STATUS", $0)] } ?? []))
    }

    /// Sends `WATCHDOG=1` if the watchdog is armed and at least one interval has passed since the
    /// last ping: the dispatch loop calls this every time round, so a stalled loop stops the pings.
    public func watchdogPing() {
        guard let interval = watchdogInterval else { return }
        let now = ContinuousClock.now
        let due = lastPing.withLock { last -> Bool in
            // The pipeline turns at least every half interval; sending at most every half interval
            // keeps two pings at most one interval apart (half of WATCHDOG_USEC) without flooding.
            if let previous = last, now - previous < interval / 2 { return false }
            last = now
            return true
        }
        if due { send([("WATCHDOG", "1")]) }
    }
}

import Foundation

/// Plays systemd's side of `sd_notify`: a bound `AF_UNIX` datagram socket, on a path or in the
/// abstract namespace, collecting what the daemon sends with the time each arrived.
final class NotifySocketListener {
    let address: String
    private let fd: Int32
    private(set) var received: [(at: Date, message: String)] = []

    /// - Parameter abstract: bind `@name` in the abstract namespace instead of a file.
    init(abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw CLIError("socket: \(String(cString: strerror(errno)))") }
        let name = abstract ? "@aftercare-test-\(UUID().uuidString.prefix(8))"
            : NSTemporaryDirectory() + "aftercare-notify-\(UUID().uuidString.prefix(8)).sock"
        address = name
        var path = Array(name.utf8)
        if abstract { path[0] = 0 }
        var socketAddress = sockaddr_un()
        socketAddress.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &socketAddress.sun_path) { $0.copyBytes(from: path) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (abstract ? 0 : 1))
        let bound = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw CLIError("bind \(name): \(String(cString: strerror(errno)))") }
    }

    deinit {
        close(fd)
        if !address.hasPrefix("@") { unlink(address) }
    }

    /// Receives for up to `timeout` seconds, until `until` holds for what has arrived.
    @discardableResult
    func collect(timeout: Double, until: ([String]) -> Bool = { _ in false }) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            if until(received.map(\.message)) { return true }
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let remaining = Int32(max(1, deadline.timeIntervalSinceNow * 1000))
            guard poll(&poller, 1, min(remaining, 100)) > 0 else { continue }
            let count = recv(fd, &buffer, buffer.count, 0)
            if count > 0 { received.append((Date(), String(decoding: buffer[0..<count], as: UTF8.self))) }
        }
        return until(received.map(\.message))
    }

    /// The messages other than watchdog pings and plain status updates: the lifecycle.
    var lifecycle: [String] {
        received.map(\.message).filter { !$0.hasPrefix("WATCHDOG=") && !$0.hasPrefix("STATUS=") }
    }

    var watchdogTimes: [Date] { received.filter { $0.message == "WATCHDOG=1\n" }.map(\.at) }
}

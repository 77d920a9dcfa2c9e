import AftercareCore
import Foundation

/// The `[metrics]` section: an HTTP listener serving `/metrics` (Prometheus text format) and
/// `/health`. Absent, nothing listens. Loopback only unless `allow_remote = true`: the figures tell
/// how busy the clinic is, so they are not for the network by default.
public struct MetricsSettings: Sendable, Hashable {
    /// The address to bind: an IPv4 or IPv6 literal, or `localhost`.
    public var host: String
    /// The port; 0 lets the system choose one (the daemon logs it and writes it to `metrics.address`
    /// in the state folder).
    public var port: Int
    /// Whether a non-loopback address was explicitly allowed.
    public var allowRemote: Bool
    /// How long due reminders may wait unclaimed before `/health` says the pipeline is stuck.
    public var stallAfterSeconds: Int
    /// How often the queue gauges are read from the store.
    public var refreshSeconds: Int

    public init(
        host: String = "127.0.0.1", port: Int = 9464, allowRemote: Bool = false, stallAfterSeconds: Int = 900,
        refreshSeconds: Int = 10
    ) {
        self.host = host
        self.port = port
        self.allowRemote = allowRemote
        self.stallAfterSeconds = stallAfterSeconds
        self.refreshSeconds = refreshSeconds
    }

    /// `host:port`, with an IPv6 host in brackets.
    public var listen: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Whether `host` is a loopback address: 127.0.0.0/8, ::1 or `localhost`.
    public static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { bytes in bytes.dropLast().allSatisfy { $0 == 0 } && bytes.last == 1 }
        }
        return false
    }

    /// Splits `host:port` (`[v6]:port` for IPv6); the host must be an IP literal or `localhost`.
    static func parseListen(_ text: String) -> (host: String, port: Int)? {
        let host: Substring
        let port: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                return nil
            }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
            if host.contains(":") { return nil }
        }
        guard !port.isEmpty, port.allSatisfy(\.isASCII), port.allSatisfy(\.isNumber), port.count <= 5,
            let number = Int(port), (0...65535).contains(number)
        else { return nil }
        let name = String(host)
        var v4 = in_addr()
        var v6 = in6_addr()
        guard name == "localhost" || inet_pton(AF_INET, name, &v4) == 1 || inet_pton(AF_INET6, name, &v6) == 1 else {
            return nil
        }
        return (name, number)
    }

    /// Reads `[metrics]`, or `nil` when the section is absent.
    static func read(_ section: Section?) throws(ConfigError) -> MetricsSettings? {
        guard let section else { return nil }
        let text = try section.requiredString("listen")
        guard let (host, port) = parseListen(text) else {
            throw section.error(
                "listen", "'\(section.keyPath("listen"))' = \"\(InputRules.printable(text))\" is not an address "
                    + "such as 127.0.0.1:9464 or [::1]:9464 (an IP address or localhost, and a port 0-65535)")
        }
        let allowRemote = try section.bool("allow_remote") ?? false
        if !allowRemote && !isLoopback(host) {
            throw section.error(
                "listen", "'\(section.keyPath("listen"))' = \"\(InputRules.printable(text))\" is not a loopback "
                    + "address: the metrics tell how busy the clinic is; listen on 127.0.0.1 and let a local "
                    + "Prometheus or proxy scrape it, or set allow_remote = true")
        }
        var settings = MetricsSettings(host: host, port: port, allowRemote: allowRemote)
        settings.stallAfterSeconds = try section.duration("stall_after", in: 60...86400) ?? settings.stallAfterSeconds
        settings.refreshSeconds = try section.duration("refresh", in: 1...300) ?? settings.refreshSeconds
        try section.rejectUnknownKeys()
        return settings
    }
}

import Foundation

/// What the daemon tells its service manager (systemd's `sd_notify` protocol, or nothing).
///
/// Implementers guarantee that no call blocks for long or throws, and that every call is a no-op
/// when there is no service manager to tell.
public protocol ServiceManagerNotifier: Sendable {
    /// Start-up is complete: the database is open, crashed claims recovered, the spool ingested.
    func ready(status: String?)
    /// A one-line human status with live figures.
    func status(_ text: String)
    /// A configuration reload has begun; `ready` follows when it ends.
    func reloading(status: String?)
    /// Shutdown has begun.
    func stopping(status: String?)
    /// The dispatch loop is alive.
    func watchdogPing()
    /// How often the loop must ping, or `nil` when no watchdog is armed for this process.
    var watchdogInterval: Duration? { get }
}

/// The notifier for a daemon with no service manager (a terminal, a test).
public struct SilentNotifier: ServiceManagerNotifier {
    public init() {}
    public func ready(status: String?) {}
    public func status(_ text: String) {}
    public func reloading(status: String?) {}
    public func stopping(status: String?) {}
    public func watchdogPing() {}
    public var watchdogInterval: Duration? { nil }
}

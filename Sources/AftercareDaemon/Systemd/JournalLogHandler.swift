import Foundation
import Logging
import Synchronization

/// A swift-log handler writing one event per line to stderr, in the form journald reads well.
///
/// Under systemd (`$JOURNAL_STREAM` set) each line starts with its syslog severity, `<6>` for info
/// and so on, and carries no timestamp (the journal adds its own). In a terminal each line starts
/// with an ISO 8601 UTC time and the level name. Newlines inside a message or a value are escaped,
/// so one event is always one line; metadata follows as sorted `key=value` pairs.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let journal: Bool

    public init(label: String, level: Logger.Level = .info,
                environment: [String: String] = ProcessInfo.processInfo.environment)
    {
        self.label = label
        self.logLevel = level
        self.journal = !(environment["JOURNAL_STREAM"] ?? "").isEmpty
    }

    /// Makes this the process's log handler.
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in JournalLogHandler(label: label, level: level) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// The syslog severity prefix for a level (`sd-daemon(3)`).
    static func prefix(_ level: Logger.Level) -> String {
        switch level {
        case .trace, .debug: return "<7>"
        case .info: return "<6>"
        case .notice: return "<5>"
        case .warning: return "<4>"
        case .error: return "<3>"
        case .critical: return "<2>"
        }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let line = format(level: event.level, message: "\(event.message)", metadata: merged, date: Date())
        Self.write(line)
    }

    func format(level: Logger.Level, message: String, metadata: Logger.Metadata, date: Date) -> String {
        var line = journal ? Self.prefix(level) : ISO8601DateFormatter().string(from: date) + " \(level) "
        line += Self.oneLine(message)
        for key in metadata.keys.sorted() {
            line += " \(key)=\(Self.oneLine("\(metadata[key]!)"))"
        }
        return line + "\n"
    }

    static func oneLine(_ text: String) -> String {
        guard text.contains(where: { $0 == "\n" || $0 == "\r" }) else { return text }
        return text.replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\n", with: "\\n")
    }

    private static let lock = Mutex(())

    /// One write(2) per line, so lines from different threads never interleave.
    static func write(_ line: String) {
        var bytes = Array(line.utf8)
        lock.withLock { _ in
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeMutableBytes { Foundation.write(2, $0.baseAddress! + offset, $0.count - offset) }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}

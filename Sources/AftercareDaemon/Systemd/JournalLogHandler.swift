import AftercareCore
import Foundation
import Logging
import Synchronization

/// A swift-log handler writing one event per line to stderr, in the form journald reads well.
///
/// Under systemd (`$JOURNAL_STREAM` set) each line starts with its syslog severity, `<6>` for info
/// and so on, and carries no timestamp (the journal adds its own). In a terminal each line starts
/// with an ISO 8601 UTC time and the level name. Messages and metadata may carry untrusted text (file
/// names, ids, receivers' errors): line breaks, NUL, ESC, every other control and the bidi controls
/// are escaped and each part is bounded (``UntrustedText``), so one event is always one line that
/// cannot forge another or rewrite the terminal; metadata follows as sorted `key=value` pairs.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let journal: Bool
    private let output: @Sendable (String) -> Void

    /// The bound on a message, in Unicode scalars: generous, as the untrusted parts inside were
    /// bounded where they were quoted; this only keeps one event from flooding the journal.
    static let messageLimit = 4_000
    /// The bound on one metadata value.
    static let valueLimit = 1_000

    /// - Parameter output: where finished lines go (tests capture them); by default stderr, one
    ///   `write(2)` per line.
    public init(label: String, level: Logger.Level = .info,
                environment: [String: String] = ProcessInfo.processInfo.environment,
                output: @escaping @Sendable (String) -> Void = JournalLogHandler.write)
    {
        self.label = label
        self.logLevel = level
        self.journal = !(environment["JOURNAL_STREAM"] ?? "").isEmpty
        self.output = output
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
        output(line)
    }

    func format(level: Logger.Level, message: String, metadata: Logger.Metadata, date: Date) -> String {
        var line = journal ? Self.prefix(level) : ISO8601DateFormatter().string(from: date) + " \(level) "
        line += UntrustedText.escaped(message, limit: Self.messageLimit)
        for key in metadata.keys.sorted() {
            let value = UntrustedText.escaped("\(metadata[key]!)", limit: Self.valueLimit)
            line += " \(UntrustedText.escaped(key))=\(value)"
        }
        return line + "\n"
    }

    private static let lock = Mutex(())

    /// Writes a line to stderr: one write(2) per line, so lines from different threads never interleave.
    @Sendable public static func write(_ line: String) {
        var bytes = Array(line.utf8)
        lock.withLock { _ in
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeMutableBytes {
                    Foundation.write(2, $0.baseAddress! + offset, $0.count - offset)
                }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}

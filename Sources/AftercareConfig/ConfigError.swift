import AftercareCore
import Foundation

/// A configuration or protocol file problem: the file, the line when known, and what was wrong.
/// Rendered as one line: `/etc/aftercare/aftercare.toml:12: unknown key 'quiet_hour' in [clinic]`.
public struct ConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var message: String

    public init(file: String, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// One line: parser messages can quote what they choked on, so control and bidi characters are
    /// escaped and a long message is cut short.
    public var description: String {
        let file = InputRules.printable(file, limit: 400)
        let message = InputRules.printable(message, limit: 400)
        return line.map { "\(file):\($0): \(message)" } ?? "\(file): \(message)"
    }
}

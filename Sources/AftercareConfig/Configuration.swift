import AftercareCore
import Foundation

// TEMPORARY interface stand-in, replaced by the real loader from the config work before merge.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var message: String
    public var description: String { line.map { "\(file):\($0): \(message)" } ?? "\(file): \(message)" }
}
public struct StoragePaths: Sendable, Hashable {
    public var stateDirectory: String
    public var database: String
    public var spool: String
}
public struct DispatchSettings: Sendable, Hashable {
    public var batchSize: Int = 256
    public var leaseSeconds: Double = 300
    public var maxConcurrent: Int = 64
    public var maxPerHost: Int = 16
    public var shutdownGrace: Double = 10
}
public struct AftercareConfiguration: Sendable {
    public var file: String
    public var policy: ClinicPolicy
    public var protocols: [String: CareProtocol]
    public var paths: StoragePaths
    public var senders: [String: SenderSettings]
    public var channels: [String: String]
    public var retry: RetryPolicy
    public var dispatch: DispatchSettings
    public static func load(path: String) throws(ConfigError) -> AftercareConfiguration {
        throw ConfigError(file: path, line: nil, message: "stand-in")
    }
}
public enum Credentials {
    public static func read(
        _ source: CredentialSource, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigError) -> String { "" }
}

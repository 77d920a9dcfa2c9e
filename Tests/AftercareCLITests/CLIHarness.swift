import Foundation

/// Runs the built `aftercare` binary the way staff and systemd do, in a temporary clinic set-up.
final class CLIHarness: Sendable {
    let root: String

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The binary next to the test bundle (swift test builds both into the same folder).
    static var binary: String {
        if let explicit = ProcessInfo.processInfo.environment["AFTERCARE_BIN"] { return explicit }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var folder = URL(fileURLWithPath: executable).deletingLastPathComponent()
        while folder.path != "/" {
            let candidate = folder.appendingPathComponent("aftercare").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            folder.deleteLastPathComponent()
        }
        return repositoryRoot.appendingPathComponent(".build/debug/aftercare").path
    }

    /// - Parameter extra: TOML appended to the config (more senders, a [retry] table).
    /// - Parameter channels: the [channels] table's lines.
    init(quietHours: Bool = false, channels: String = "sms = \"outbox\"\nemail = \"outbox\"", extra: String = "") throws {
        root = NSTemporaryDirectory() + "aftercare-cli-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let protocolFile = Self.repositoryRoot.appendingPathComponent("Config/protocols/trigger-point-injection.toml").path
        let config = """
            [clinic]
            name = "Riverside Pain Clinic"
            phone = "+1 555-010-2030"
            time_zone = "America/New_York"
            \(quietHours ? "[quiet_hours]\nstart = \"21:00\"\nend = \"08:00\"" : "")

            [paths]
            state_directory = "state"

            [protocols]
            files = ["\(protocolFile)"]

            [channels]
            \(channels)

            [senders.outbox]
            kind = "file"
            outbox = "state/outbox"

            \(extra)
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    var configPath: String { root + "/aftercare.toml" }
    var state: String { root + "/state" }
    var outbox: String { state + "/outbox" }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `aftercare ARGS --config <ours>` to completion.
    func run(_ arguments: [String], config: Bool = true) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments + (config ? ["--config", configPath] : [])
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self)
        )
    }

    /// Starts `aftercare daemon` in the background; its stderr goes to `daemon.log`.
    func startDaemon() throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["daemon", "--config", configPath]
        FileManager.default.createFile(atPath: root + "/daemon.log", contents: nil)
        let log = FileHandle(forWritingAtPath: root + "/daemon.log")!
        log.seekToEndOfFile()
        process.standardError = log
        process.standardOutput = log
        try process.run()
        return process
    }

    var daemonLog: String { (try? String(contentsOfFile: root + "/daemon.log", encoding: .utf8)) ?? "" }

    func outboxFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: outbox)) ?? [])
            .filter { $0.hasSuffix(".txt") && !$0.hasPrefix(".") }.sorted()
    }

    func incomingFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: state + "/spool/incoming")) ?? []).sorted()
    }

    /// Polls in real time until `condition` holds or `timeout` seconds pass.
    func eventually(timeout: Double = 15, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }
}

import Foundation
import Synchronization

/// A throwaway PostgreSQL server for the tests, driven by `scripts/pg-cluster`: the one `scripts/test`
/// started (its folder in `AFTERCARE_TEST_POSTGRES_DIR`), or else one of this process's own, started on
/// first use in `/tmp/aftercare-pg-*` and stopped when the process exits (or, if it crashes, by the
/// script's watcher a second later). There is no skipping: when PostgreSQL cannot start, every
/// ``makeDatabase()`` throws why.
public actor PostgresCluster {
    /// The server every test in this process shares.
    public static let shared = PostgresCluster()

    private var starting: Task<Server, any Error>?

    private init() {}

    /// A new empty database, with a name no other call has had.
    public func makeDatabase() async throws -> PostgresTestDatabase {
        let server = try await server()
        let name = "test_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(20).lowercased()
        let output = try await Self.pgCluster(["createdb", server.directory, name])
        guard let url = output.split(separator: "\n").last.map(String.init), url.hasPrefix("postgres://") else {
            throw PostgresClusterError(message: "pg-cluster createdb printed no URL: \(output)")
        }
        return PostgresTestDatabase(
            name: name, url: url, port: server.port, password: server.password, caFile: server.caFile)
    }

    private func server() async throws -> Server {
        if let starting { return try await starting.value }
        let task = Task { try await Self.startOrAttach() }
        starting = task
        return try await task.value
    }

    private struct Server: Sendable {
        var directory: String
        var port: Int
        var password: String
        var caFile: String
    }

    private static func startOrAttach() async throws -> Server {
        let environment = ProcessInfo.processInfo.environment
        if let directory = environment["AFTERCARE_TEST_POSTGRES_DIR"], !directory.isEmpty {
            return try read(directory)
        }
        var template = Array("/tmp/aftercare-pg-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw PostgresClusterError(message: "cannot make a folder in /tmp: \(String(cString: strerror(errno)))")
        }
        let directory = String(cString: made)
        ownedDirectory.withLock { $0 = directory }
        atexit { stopOwnedCluster() }
        _ = try await pgCluster(["start", directory], owner: getpid())
        return try read(directory)
    }

    private static func read(_ directory: String) throws -> Server {
        func text(_ file: String) throws -> String {
            do {
                return try String(contentsOfFile: "\(directory)/\(file)", encoding: .utf8)
                    .trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw PostgresClusterError(
                    message: "cannot read \(directory)/\(file): is there a cluster started by scripts/pg-cluster?")
            }
        }
        let url = try text("url")
        guard let port = URLComponents(string: url)?.port else {
            throw PostgresClusterError(message: "no port in \(directory)/url: \(url)")
        }
        return Server(directory: directory, port: port, password: try text("password"), caFile: "\(directory)/ca.crt")
    }

    static var script: String { TestClinic.repositoryRoot.appendingPathComponent("scripts/pg-cluster").path }

    /// Runs `scripts/pg-cluster`; returns what it printed, or throws its error line.
    private static func pgCluster(_ arguments: [String], owner: pid_t? = nil) async throws -> String {
        var environment = ProcessInfo.processInfo.environment
        environment["AFTERCARE_PG_OWNER"] = owner.map { String($0) }
        let run = try await ExternalCommand.run("/bin/bash", [script] + arguments, environment: environment)
        guard run.status == 0 else {
            throw PostgresClusterError(
                message: run.output.isEmpty ? "pg-cluster \(arguments[0]) failed (exit \(run.status))" : run.output)
        }
        return run.output
    }
}

/// A program run to its end without holding a thread of the cooperative pool while it works.
public enum ExternalCommand {
    /// How a run ended: its exit status and what it printed (stdout and stderr together, trimmed).
    public struct Result: Sendable {
        /// The exit status (or the signal that ended it).
        public var status: Int32
        /// stdout and stderr, interleaved as written.
        public var output: String
    }

    /// Runs `executable` with `arguments` and `environment` (the test process's own when nil).
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil
    ) async throws -> Result {
        // Output goes to a file, not a pipe: a server started meanwhile could inherit a pipe's write end
        // and keep it open, and the reader would wait for its end forever.
        let outputFile = FileManager.default.temporaryDirectory
            .appendingPathComponent("aftercare-command-\(UUID().uuidString).out")
        guard FileManager.default.createFile(atPath: outputFile.path, contents: nil),
            let output = try? FileHandle(forWritingTo: outputFile)
        else { throw PostgresClusterError(message: "cannot write \(outputFile.path)") }
        defer { try? FileManager.default.removeItem(at: outputFile) }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = output
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: PostgresClusterError(message: "cannot run \(executable): \(error)"))
            }
        }
        try? output.close()
        let printed = (try? String(contentsOf: outputFile, encoding: .utf8)) ?? ""
        return Result(status: status, output: printed.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// One empty database on the test server, its superuser `aftercare` and how to reach it over TLS.
public struct PostgresTestDatabase: Sendable {
    /// The database's name (also the last part of ``url``).
    public var name: String
    /// `postgres://aftercare@127.0.0.1:PORT/NAME`, without the password.
    public var url: String
    /// The loopback address the server listens on.
    public var host: String { "127.0.0.1" }
    /// Its TCP port.
    public var port: Int
    /// The superuser the URL names.
    public var user: String { "aftercare" }
    /// That user's password.
    public var password: String
    /// The throwaway CA that signed the server's certificate (for `localhost` and 127.0.0.1).
    public var caFile: String
}

/// The test PostgreSQL server could not be started or used; the message says why in one line.
public struct PostgresClusterError: Error, CustomStringConvertible {
    /// What went wrong.
    public var message: String
    /// The message.
    public var description: String { message }
}

/// The folder of the cluster this process started itself, to stop at exit.
private let ownedDirectory = Mutex<String?>(nil)

/// At exit: no pool, no run loop any more, so a plain fork and wait.
private func stopOwnedCluster() {
    guard let directory = ownedDirectory.withLock({ $0 }) else { return }
    let arguments = ["/bin/bash", PostgresCluster.script, "stop", directory]
    var pid: pid_t = 0
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    guard posix_spawn(&pid, "/bin/bash", nil, nil, argv, environ) == 0 else { return }
    var status: Int32 = 0
    guard waitpid(pid, &status, 0) == pid, status == 0 else { return }
    try? FileManager.default.removeItem(atPath: directory)
}

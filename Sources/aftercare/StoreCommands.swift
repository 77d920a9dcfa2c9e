import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import ArgumentParser
import Foundation

struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Move the queue between engines.",
        subcommands: [Migrate.self]
    )

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy the SQLite store into an empty PostgreSQL database, for a clinic group.",
            discussion: """
                Stop the daemon first. Everything is copied in one transaction, the delivery log row for row \
                with its hashes, and the chain is verified on both sides: the head printed at the end is the \
                same head as before, so heads kept elsewhere still hold. A database that already holds \
                anything is refused. Then set [store] kind = "postgres" with this URL and start the daemons.
                """
        )

        @OptionGroup var options: ConfigOption

        @Option(help: "The empty target, postgres://user@host:port/database (no password in it).")
        var to: String

        @Option(help: "A file whose first line is the database password.")
        var passwordFile: String?

        @Option(help: "A PEM file of the CA that signed the server's certificate (default: the system's).")
        var caFile: String?

        @Option(help: "verify-full (default) or disable (only for a server on this host).")
        var tls: String = PostgresSettings.TLS.verifyFull.rawValue

        func run() async throws {
            let config = try options.load()
            guard case .sqlite = config.store else {
                throw CLIError(
                    "the configuration already uses PostgreSQL ([store] kind = \"postgres\"): nothing to move")
            }
            let settings = try cliCheck { () throws -> PostgresSettings in
                let parts = try PostgresSettings.parse(url: to)
                guard let mode = PostgresSettings.TLS(rawValue: tls) else {
                    throw SettingsError("--tls: '\(InputRules.printable(tls))' is not verify-full or disable")
                }
                if mode == .disable, !MetricsSettings.isLoopback(parts.host) {
                    throw SettingsError("--tls disable is only allowed for a server on this host")
                }
                return PostgresSettings(
                    host: parts.host, port: parts.port, user: parts.user, database: parts.database, tls: mode,
                    caFile: caFile, passwordFile: passwordFile, node: "migration")
            }
            guard FileManager.default.fileExists(atPath: config.paths.database) else {
                throw CLIError("no SQLite store at \(config.paths.database): nothing to migrate")
            }
            let lock = try cliCheck { try StateLock(directory: config.paths.stateDirectory) }
            defer { lock.release() }
            let summary = try await cliCheck {
                let source = try ReminderStore(path: config.paths.database, readOnly: true)
                let target = try await PostgresReminderStore(
                    settings: settings, password: try StoreOpener.password(for: settings))
                defer { Task { await target.close() } }
                return try await source.copy(to: target)
            }
            print(
                "copied \(summary.procedures) procedure(s), \(summary.reminders) reminder(s), \(summary.logRows) "
                    + "log row(s), \(summary.messages) message text(s) and \(summary.protocolVersions) protocol "
                    + "version(s) to \(settings.url)")
            if let head = summary.head {
                print("chain verified on both sides; head \(head)")
            } else {
                print("the delivery log was empty")
            }
            print(
                "next: set [store] kind = \"postgres\", url = \"\(settings.url)\" and its password, "
                    + "then start the daemons")
        }
    }
}

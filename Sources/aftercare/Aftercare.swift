import AftercareConfig
import AftercareCore
import ArgumentParser
import Foundation

/// The release version: the one place it is set (`aftercare --version`, and scripts/package reads it here).
let aftercareVersion = "0.1.0"

/// `aftercare`: the daemon and the staff commands in one binary.
@main
struct Aftercare: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aftercare",
        abstract: "Timed aftercare reminders for patients after a trigger point injection.",
        discussion: """
            Staff commands write requests into the daemon's spool and read its database; only the \
            daemon writes the database. The configuration comes from --config, else $AFTERCARE_CONFIG, \
            else /etc/aftercare/aftercare.toml.
            """,
        version: aftercareVersion,
        subcommands: [
            DaemonCommand.self, AddCommand.self, ListCommand.self, ShowCommand.self, CancelCommand.self,
            RescheduleCommand.self, ReplayCommand.self, StatusCommand.self, ConfigCommand.self,
            ProtocolCommand.self, AuditCommand.self, BookCommand.self, MoveCommand.self, PerformedCommand.self,
            UpdateCommand.self, OptOutCommand.self, StoreCommand.self,
        ]
    )
}

/// The option every command shares: which configuration to use.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "The configuration file (default: $AFTERCARE_CONFIG or /etc/aftercare/aftercare.toml).")
    var config: String?

    var path: String {
        if let config { return config }
        if let fromEnvironment = ProcessInfo.processInfo.environment["AFTERCARE_CONFIG"], !fromEnvironment.isEmpty {
            return fromEnvironment
        }
        return "/etc/aftercare/aftercare.toml"
    }

    func load() throws -> AftercareConfiguration {
        do {
            return try AftercareConfiguration.load(path: path)
        } catch {
            throw CLIError("\(error)")
        }
    }
}

/// A command failure: printed as one line on stderr, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareDelivery
import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle

struct DaemonCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Run the reminder scheduler in the foreground (as systemd does).",
        discussion: "SIGTERM or Ctrl-C drains in-flight deliveries and exits; SIGHUP re-reads the configuration."
    )

    @OptionGroup var options: ConfigOption

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "aftercare")
        let daemon = AftercareDaemon(
            configPath: options.path, logger: logger, makeSender: SenderCatalog.make
        )
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: daemon)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await group.run()
        } catch {
            throw CLIError("\(error)")
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Builds senders from their configured settings.
enum SenderCatalog {
    @Sendable static func make(name: String, settings: SenderSettings, config: AftercareConfiguration) throws
        -> any Sender
    {
        switch settings {
        case .file(let outbox):
            return try FileSender(outbox: URL(fileURLWithPath: outbox))
        default:
            throw CLIError("sender kind '\(settings.kind)' is not available in this build")
        }
    }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareDelivery
import AftercareMetrics
import ArgumentParser
import Foundation
import Logging
import Metrics
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
        JournalLogHandler.bootstrap(level: logLevel)
        let logger = Logger(label: "aftercare")
        // The engine's limits and the metrics listener come from the configuration at start-up; a
        // reload keeps them. A configuration that does not load is the daemon's to report.
        let config = try? AftercareConfiguration.load(path: options.path)
        let limits = config?.dispatch ?? DispatchSettings()
        let engine = CurlEngine(maxConnections: limits.maxConcurrent, maxPerHost: limits.maxPerHost)
        let monitoring = config.flatMap { config in
            config.metrics.map {
                Monitoring(
                    settings: $0, paths: config.paths, store: config.store, credentials: config.credentialsFolder,
                    clock: SystemClock(), logger: logger)
            }
        }
        if let monitoring { MetricsSystem.bootstrap(Monitoring.factory(monitoring.registry)) }
        let daemon = AftercareDaemon(
            configPath: options.path, logger: logger, notifier: SystemdNotifier(),
            metrics: monitoring?.metrics ?? DaemonMetrics(), makeSender: SenderCatalog.maker(engine: engine)
        )
        // Shutdown runs in reverse: the daemon drains first while /health still answers, and the
        // curl engine stops last, only once nothing sends through it any more.
        let services = monitoring?.serviceConfigurations ?? []
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: engine)] + services + [.init(service: daemon)],
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

/// Builds the daemon's senders: network senders share one curl engine. Secrets are read and
/// checked by the configuration's `readSecrets`, the same check `aftercare config check` runs.
enum SenderCatalog {
    static func maker(engine: CurlEngine) -> SenderMaker {
        { name, settings, config in
            // The daemon says "sender '<name>': " before this error, as `config check` does.
            let secrets = try config.readSecrets(ofSender: name)
            return try SenderFactory.make(
                name: name, settings: settings, clinicName: config.policy.clinicName,
                readSecret: { source in
                    guard let secret = secrets[source] else { throw SecretNotRead(source: source) }
                    return secret
                },
                engine: engine)
        }
    }
}

/// A secret the configuration's check did not hand over (never expected: every source is read).
struct SecretNotRead: Error, CustomStringConvertible {
    var source: CredentialSource
    var description: String { "\(source): not read" }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import ArgumentParser
import Foundation

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Work with the configuration.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load the configuration, its protocols and secrets; report the first problem or a summary.")

        @OptionGroup var options: ConfigOption

        /// Outside the service there is no `$CREDENTIALS_DIRECTORY`: a credential named
        /// `aftercare_<file>` (what the unit's `LoadCredential=aftercare:…/credentials` provides) is
        /// read from `credentials/<file>` beside the configuration instead.
        static func outsideSystemd(_ source: CredentialSource, config: AftercareConfiguration) -> CredentialSource {
            source.outsideSystemd(credentialsFolder: config.credentialsFolder)
        }

        func run() async throws {
            let config = try options.load()
            for name in config.senders.keys.sorted() {
                do {
                    _ = try config.readSecrets(ofSender: name) { source throws(ConfigError) in
                        try Credentials.read(Self.outsideSystemd(source, config: config))
                    }
                } catch {
                    // Word for word what the daemon says when it refuses the same sender.
                    throw CLIError("sender '\(name)': \(error)")
                }
            }
            let storeLine: String
            switch config.store {
            case .sqlite:
                storeLine = "  database    \(config.paths.database)"
            case .postgres(let settings):
                // Connects once: the password, the certificate and the server are checked here, not
                // at the daemon's first start.
                let schema = try await cliCheck {
                    try await PostgresReminderStore.check(
                        settings, password: try StoreOpener.password(for: settings, credentials: config.credentialsFolder))
                }
                storeLine = "  database    \(settings.url) (node \(settings.node), TLS \(settings.tls.rawValue)"
                    + (settings.caFile.map { " with CA \($0)" } ?? "") + "): connected, "
                    + (schema.map { "schema \($0)" } ?? "no aftercare schema yet (the first daemon creates it)")
            }
            print("\(config.file): OK")
            print("  clinic      \(config.policy.clinicName), \(config.policy.clinicPhone), \(config.policy.clinicTimeZone)")
            print("  quiet hours \(config.policy.quietHours?.description ?? "none")"
                + " (urgent steps: \(config.policy.urgentQuietHours?.description ?? "none"))")
            for careProtocol in config.protocols.values.sorted(by: { $0.id < $1.id }) {
                print("  protocol    \(careProtocol.id): \(careProtocol.steps.count) steps "
                    + "(\(careProtocol.steps.map(\.id).joined(separator: ", ")))")
            }
            for (name, settings) in config.senders.sorted(by: { $0.key < $1.key }) {
                print("  sender      \(name) (\(settings.kind))")
            }
            for (channel, sender) in config.channels.sorted(by: { $0.key < $1.key }) {
                print("  channel     \(channel) → \(sender)")
            }
            print(storeLine)
            print("  spool       \(config.paths.spool)")
            if config.senders.values.contains(where: { $0.kind != "file" }) {
                print("  note        network senders are configured: under systemd the unit allows only loopback "
                    + "until their addresses and your DNS resolvers are allowed (scripts/install --allow-ip)")
            }
        }
    }
}

struct ProtocolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "protocol", abstract: "Work with protocols.", subcommands: [Preview.self])

    struct Preview: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a protocol's reminders for an example procedure: when each goes out and what it says.")

        @OptionGroup var options: ConfigOption

        @Option(name: .customLong("protocol"), help: "The protocol id.")
        var protocolID: String = "trigger-point-injection"

        @Option(help: "The example procedure time: now, RFC 3339, or 2026-11-25 14:30 (patient's time).")
        var performedAt: String = "now"

        @Option(help: "The example patient's IANA time zone (default: the clinic's).")
        var timeZone: String?

        @Option(help: "The example patient's first name.")
        var firstName: String?

        func run() async throws {
            let config = try options.load()
            guard let careProtocol = config.protocols[protocolID] else {
                throw CLIError(
                    "unknown protocol '\(InputRules.printable(protocolID))' "
                        + "(configured: \(config.protocols.keys.sorted().joined(separator: ", ")))")
            }
            let zoneID = timeZone ?? config.policy.clinicTimeZone
            do { try InputRules.checkTimeZone(zoneID, field: "--time-zone") } catch { throw CLIError("\(error)") }
            let zone = TimeZone(identifier: zoneID)!
            let performed = try Show.parseTime(performedAt, zone: zone, option: "--performed-at")
            let procedure = Procedure(
                id: "PREVIEW", protocolID: protocolID, performedAt: performed,
                patient: Patient(id: "PREVIEW", firstName: firstName, timeZone: zoneID,
                                 routes: [ContactRoute(channel: "sms", address: "+15550000000")])
            )
            let plan = Planner.plan(procedure, protocol: careProtocol, policy: config.policy, now: performed)
            print("\(careProtocol.title) — procedure at \(Show.localWithZone(performed, zone))\n")
            if config.policy.quietHours != nil, let night = careProtocol.steps.lazy.compactMap(\.nightHold).first {
                print("Steps sent at the procedure go out at once, quiet hours or not, except during the night hours "
                    + "\(night) (patient's time), when they wait until those end.\n")
            }
            for (step, reminder) in zip(careProtocol.steps, plan) {
                let context = TemplateContext(procedure: procedure, policy: config.policy, sendAt: reminder.dueAt)
                print("── \(step.id)  \(Show.localWithZone(reminder.dueAt, zone))  (at \(step.offset), valid for "
                    + "\(DurationText.format(seconds: step.validForSeconds))\(step.urgent ? ", urgent" : "")"
                    + "\(step.sendsAtProcedure ? ", sent at the procedure" : ""))"
                    + (reminder.note.map { "  — \($0)" } ?? ""))
                print("Subject: \(step.subject.render(context))")
                let body = step.body.render(context)
                print(body)
                print("[SMS: \(SMSLength(body))]")
                print("")
            }
            let channels = Set(config.channels.keys)
            let warnings = Planner.unsendableSteps(
                plan, protocol: careProtocol, procedure: procedure, channels: channels)
            for warning in warnings {
                print("WARNING: \(warning)")
            }
        }
    }
}

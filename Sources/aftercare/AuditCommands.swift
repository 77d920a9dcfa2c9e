import AftercareConfig
import AftercareCore
import AftercareStore
import ArgumentParser
import Foundation

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read, verify and prune the tamper-evident delivery log.",
        discussion: "Without a subcommand, shows log rows ('aftercare audit --patient MRN-77').",
        subcommands: [Show.self, Verify.self, Head.self, Prune.self],
        defaultSubcommand: Show.self
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case table, jsonl, csv
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show", abstract: "Show delivery-log rows, oldest first, filtered.")

        @OptionGroup var options: ConfigOption

        @Option(name: .customLong("patient"), help: "Only this patient.")
        var patientID: String?
        @Option(name: .customLong("procedure"), help: "Only this procedure.")
        var procedureID: String?
        @Option(name: .customLong("step"), help: "Only this step.")
        var stepID: String?
        @Option(help: "Only this outcome or event: delivered, retry, failed, expired, cancelled, dead, opted_out, …")
        var outcome: String?
        @Option(help: "Only this channel (sms, email, …).")
        var channel: String?
        @Option(help: "From this time (RFC 3339, or YYYY-MM-DD in the clinic's zone).")
        var since: String?
        @Option(help: "Before this time (RFC 3339, or YYYY-MM-DD in the clinic's zone).")
        var until: String?
        @Option(help: "Only the newest N rows.")
        var limit: Int?
        @Option(help: "table (80 columns), jsonl or csv.")
        var format: Format = .table
        @Flag(help: "Show destinations in full instead of masked.")
        var unmask = false

        func run() async throws {
            let config = try options.load()
            let zone = TimeZone(identifier: config.policy.clinicTimeZone) ?? .gmt
            if let outcome, !(["delivered", "retry", "failed"] + LogEvent.allCases.map(\.rawValue)).contains(outcome) {
                throw CLIError("--outcome: unknown '\(InputRules.printable(outcome))' (delivered, retry, failed, "
                    + LogEvent.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            }
            if let limit, limit <= 0 { throw CLIError("--limit must be positive") }
            let filter = AuditFilter(
                patientID: patientID, procedureID: procedureID, stepID: stepID, outcome: outcome, channel: channel,
                since: try since.map { try AuditTime.parse($0, zone: zone, option: "--since") },
                until: try until.map { try AuditTime.parse($0, zone: zone, option: "--until") }, limit: limit
            )
            let records = try await openStore(config).auditLog(filter)
            let rendered: String
            switch format {
            case .table: rendered = AuditFormat.table(records, zone: zone, unmask: unmask)
            case .jsonl: rendered = records.map { AuditFormat.json($0, unmask: unmask) }.joined(separator: "\n")
            case .csv: rendered = AuditFormat.csv(records, unmask: unmask)
            }
            if !rendered.isEmpty { print(rendered) }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Walk the hash chain: confirm it (row count and head) or name the first bad row.")

        @OptionGroup var options: ConfigOption

        @Option(help: "A head hash kept earlier ('aftercare audit head'): it must still be in the chain.")
        var expectHead: String?

        func run() async throws {
            let config = try options.load()
            let store = try openStore(config)
            switch try await store.verifyLog() {
            case .broken(let seq, let reason):
                throw CLIError("delivery log BROKEN at row \(seq): \(reason)")
            case .intact(let rows, let head):
                if let expectHead, expectHead != head {
                    let kept = try await store.auditLog(AuditFilter()).first { $0.hash == expectHead }
                    guard let kept else {
                        throw CLIError(
                            "delivery log BROKEN: the expected head \(expectHead) is not in the chain "
                                + "(the log was truncated or rewritten after it)")
                    }
                    print("delivery log intact: \(rows) rows, head \(head); the expected head is row \(kept.seq), "
                        + "and rows after it were appended since")
                    return
                }
                print("delivery log intact: \(rows) rows, head \(head)")
            }
        }
    }

    struct Head: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the chain's head hash, to keep somewhere the daemon cannot write.")

        @OptionGroup var options: ConfigOption

        func run() async throws {
            let config = try options.load()
            guard let head = try await openStore(config).logHead() else { throw CLIError("the delivery log is empty") }
            print("\(head.hash)  row \(head.seq)")
        }
    }

    struct Prune: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove rows older than a date, leaving a checkpoint so the rest still verifies.",
            discussion: "Needs write access to the database (run it as the service user or root)."
        )

        @OptionGroup var options: ConfigOption

        @Option(help: "Remove rows before this time (RFC 3339, or YYYY-MM-DD in the clinic's zone).")
        var before: String

        func run() async throws {
            let config = try options.load()
            let zone = TimeZone(identifier: config.policy.clinicTimeZone) ?? .gmt
            let cutoff = try AuditTime.parse(before, zone: zone, option: "--before")
            let store: ReminderStore
            do {
                store = try ReminderStore(path: config.paths.database)
            } catch {
                throw CLIError("\(error)")
            }
            let user = String(cString: getpwuid(getuid())?.pointee.pw_name ?? strdup("unknown"))
            let removed = try await store.pruneLog(before: cutoff, now: Date(), actor: user)
            print(removed == 0 ? "nothing to prune before \(before)" : "pruned \(removed) row(s); checkpoint appended")
        }
    }
}

enum AuditTime {
    static func parse(_ text: String, zone: TimeZone, option: String) throws -> Date {
        if let date = Timestamp.parse(text) { return date }
        if let date = Show.parseTime(text + " 00:00", zone: zone) { return date }
        throw CLIError("\(option): '\(InputRules.printable(text))' is not a time (2026-11-25 or 2026-11-25T08:00:00-05:00)")
    }
}


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
        subcommands: [Show.self, Verify.self, Head.self, Message.self, Prune.self],
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
            abstract: "Walk the hash chain: confirm it (row count and head) or name the first bad row.",
            discussion: """
                With --expect-head, the log is held to a head kept outside the database (printed by \
                'aftercare audit head', by a prune, or by the daemon in its journal): that row must still \
                be in the chain with that hash, and no prune may have happened after it.
                """)

        @OptionGroup var options: ConfigOption

        @Option(help: "A head kept earlier, as ROW:HASH or HASH: it must still be in the chain, unpruned.")
        var expectHead: String?

        func run() async throws {
            let config = try options.load()
            let anchor: LogAnchor?
            do {
                anchor = try expectHead.map { text throws(StoreError) in try LogAnchor(parsing: text) }
            } catch {
                throw CLIError("--expect-head: \(error)")
            }
            let store = try await openStore(config)
            let report = try await store.verifyLog(anchor: anchor)
            switch report.verdict {
            case .broken(let seq, let reason):
                throw CLIError("delivery log BROKEN at row \(seq): \(reason)")
            case .intact(let rows, let head):
                var line = "delivery log intact: \(rows) rows, head \(head)"
                if let checkpoint = report.checkpoint {
                    line += "; chain intact from row \(checkpoint.firstKept), after \(checkpoint.summary)"
                    if anchor == nil {
                        line += "; hold it to a head kept outside the database with --expect-head"
                    }
                }
                if let anchoredSeq = report.anchoredSeq {
                    line += "; the expected head is row \(anchoredSeq)"
                        + (head == anchor?.hash ? "" : ", and rows after it were appended since")
                }
                print(line)
            }
        }
    }

    struct Message: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the exact subject and body an attempt sent, checked against the hash its log row chained.")

        @OptionGroup var options: ConfigOption

        @Argument(help: "The attempt's row number (the seq column of 'aftercare audit --format jsonl').")
        var seq: String

        @Flag(help: "Also print the protocol version the message was rendered from.")
        var showProtocol = false

        @Flag(help: "Print the subject and body byte for byte, control characters included.")
        var raw = false

        /// Control characters (other than line breaks and tabs) and bidi overrides as `\u{…}`, so
        /// a hostile name in a message cannot drive the terminal.
        func shown(_ text: String) -> String {
            if raw { return text }
            var out = ""
            for scalar in text.unicodeScalars {
                let value = scalar.value
                let unsafe = scalar.properties.generalCategory == .control && value != 0x0A && value != 0x09
                    || (0x202A...0x202E).contains(value) || (0x2066...0x2069).contains(value)
                if unsafe { out += "\\u{" + String(value, radix: 16, uppercase: true) + "}" } else {
                    out.unicodeScalars.append(scalar)
                }
            }
            return out
        }

        func run() async throws {
            guard let number = Int64(seq), number >= 1 else {
                throw CLIError("'\(InputRules.printable(seq))' is not a row number")
            }
            let config = try options.load()
            let message: AttemptMessage
            do {
                message = try await openStore(config).attemptMessage(seq: number)
            } catch let error as StoreError {
                throw CLIError("\(error)")
            }
            let entry = message.record.entry
            guard let subject = message.subject, let body = message.body else {
                throw CLIError(
                    "row \(number): the text with hash \(entry.messageHash ?? "?") is missing from the store")
            }
            guard message.textMatches else {
                throw CLIError(
                    "row \(number): the stored text does NOT match the hash \(entry.messageHash ?? "?") the log "
                        + "chained when it was sent (the message table was altered)")
            }
            let reminder = [entry.procedureID, entry.stepID].compactMap { $0 }.map { InputRules.printable($0) }
                .joined(separator: ".")
            print("row \(number): attempt \(entry.attempt.map(String.init) ?? "?") of \(reminder) at "
                + "\(Timestamp.format(entry.at, in: .gmt)) via \(entry.channel ?? "?") (\(entry.outcome ?? "?"))")
            let version = entry.protocolVersion ?? "?"
            if let stored = message.protocolVersion {
                print("protocol: \(stored.protocolID) version \(version)"
                    + (message.protocolMatches ? "" : " (stored content does NOT match this hash)"))
            } else {
                print("protocol: version \(version) (its content is not in the store)")
            }
            print("message sha256: \(entry.messageHash ?? "?") (matches)")
            print("subject: \(shown(subject))")
            print("body:")
            print(shown(body))
            if showProtocol, let stored = message.protocolVersion {
                print("protocol content:")
                print(shown(stored.content))
            }
            if message.protocolVersion != nil, !message.protocolMatches {
                throw CLIError("row \(number): the stored protocol content does NOT match version \(version)")
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
            discussion: """
                Verifies the chain first and refuses to prune a broken one. The date must be in the past. \
                Kept whatever the date: the newest row, and every row from the first one about a procedure \
                that still has a reminder scheduled or under way. Prints the new head to keep outside the \
                database (and writes it to the system log). Needs write access to the database (run it as \
                the service user or root).
                """
        )

        @OptionGroup var options: ConfigOption

        @Option(help: "Remove rows before this time (RFC 3339, or YYYY-MM-DD in the clinic's zone).")
        var before: String

        func run() async throws {
            let config = try options.load()
            let zone = TimeZone(identifier: config.policy.clinicTimeZone) ?? .gmt
            let cutoff = try AuditTime.parse(before, zone: zone, option: "--before")
            let store: any ReminderQueue
            do {
                store = try await StoreOpener.open(
                    config.store, sqlitePath: config.paths.database, credentials: config.credentialsFolder)
            } catch {
                throw CLIError("\(error)")
            }
            let user = String(cString: getpwuid(getuid())?.pointee.pw_name ?? strdup("unknown"))
            let result: PruneResult
            do {
                result = try await store.pruneLog(before: cutoff, now: Date(), actor: user)
            } catch let error as StoreError {
                throw CLIError("\(error)")
            }
            guard let head = result.head else {
                let kept = result.keptForPending.map { "; rows from \($0) on belong to procedures with reminders pending" }
                print("nothing to prune before \(before)" + (kept ?? ""))
                return
            }
            var line = "pruned \(result.removed) row(s); checkpoint appended"
            if let kept = result.keptForPending {
                line += "; rows from \(kept) on were kept: their procedures have reminders pending"
            }
            print(line)
            let witness = "delivery log head after prune by \(user): \(head) (row:hash)"
            print("new head \(head): keep it outside the database; 'aftercare audit verify --expect-head \(head)' "
                + "holds the log to it")
            Journal.notice(witness)
        }
    }
}

/// The system log, for the lines the journal keeps as witness (as the daemon's head lines are).
enum Journal {
    static func notice(_ message: String) {
        openlog("aftercare", LOG_PID, LOG_USER)
        withVaList([message]) { vsyslog(LOG_NOTICE, "%s", $0) }
        closelog()
    }
}

enum AuditTime {
    static func parse(_ text: String, zone: TimeZone, option: String) throws -> Date {
        if let date = Timestamp.parse(text) { return date }
        if let date = try? Show.parseTime(text + " 00:00", zone: zone, option: option) { return date }
        throw CLIError("\(option): '\(InputRules.printable(text))' is not a time (2026-11-25 or 2026-11-25T08:00:00-05:00)")
    }
}


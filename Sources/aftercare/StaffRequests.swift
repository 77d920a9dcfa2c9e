import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import ArgumentParser
import Foundation

/// Opens the store read-only, or explains why not: a permission problem says what to do about
/// it, apart from a database that does not exist yet.
func openStore(_ config: AftercareConfiguration) async throws -> any ReminderQueue {
    if case .postgres = config.store {
        do {
            return try await StoreOpener.open(
            config.store, sqlitePath: config.paths.database, credentials: config.credentialsFolder, readOnly: true)
        } catch {
            throw CLIError("\(error)")
        }
    }
    let path = config.paths.database
    if let denied = StaffAccess.readDenied(path) { throw CLIError(denied) }
    do {
        return try ReminderStore(path: path, readOnly: true)
    } catch {
        // A reader of a WAL database needs its -shm file; only the daemon (or root) may create it.
        let folder = (path as NSString).deletingLastPathComponent
        if access(path, R_OK) == 0, access(path + "-shm", F_OK) != 0, access(folder, W_OK) != 0 {
            throw CLIError(
                "cannot read \(path) while the daemon is stopped: its shared-memory file \(path)-shm is missing "
                    + "and only the daemon may create it (start the daemon: systemctl start aftercare)")
        }
        throw CLIError("\(error)")
    }
}

/// Checks a request with the daemon's own intake rules, queues it and reports what the daemon made
/// of it.
func submit(_ request: IntakeRequest, label: String, config: AftercareConfiguration, wait: Double) throws {
    do {
        try request.validate()
    } catch {
        throw CLIError("\(error)")
    }
    let spool = Spool(root: config.paths.spool)
    let name = try queue(request, label: label, spool: spool, what: "the request")
    print("Queued (spool file \(name)).")
    try SpoolReceipt.report(spool: spool, name: name, wait: wait)
}

/// Writes a request into the spool; a folder this user may not write is explained as such.
func queue(_ request: IntakeRequest, label: String, spool: Spool, what: String) throws -> String {
    do {
        return try spool.submit([request], label: label)
    } catch {
        for folder in [spool.temporary.path, spool.incoming.path] {
            if let denied = StaffAccess.writeDenied(folder) { throw CLIError(denied) }
        }
        throw CLIError("cannot queue \(what): \(error)")
    }
}

/// What a user outside the staff group hits, said as what is wrong and what to do.
enum StaffAccess {
    static let group = "aftercare-staff"

    static var advice: String {
        let user = Spool.currentUser ?? "USER"
        return "staff commands need membership of the \(group) group: ask your administrator to run "
            + "`usermod -aG \(group) \(user)`, then log in again"
    }

    /// Why this user cannot read `path`, when permissions are the reason; nil when it can, or when
    /// the file simply does not exist (the caller says that its own way).
    static func readDenied(_ path: String) -> String? {
        var info = stat()
        if stat(path, &info) != 0 {
            return errno == EACCES ? "cannot read \(path): permission denied (\(advice))" : nil
        }
        return access(path, R_OK) == 0 ? nil : "cannot read \(path): permission denied (\(advice))"
    }

    /// Why this user cannot write into folder `path`, when permissions are the reason.
    static func writeDenied(_ path: String) -> String? {
        var info = stat()
        if stat(path, &info) != 0 {
            return errno == EACCES ? "cannot write to the spool \(path): permission denied (\(advice))" : nil
        }
        return access(path, W_OK | X_OK) == 0 ? nil : "cannot write to the spool \(path): permission denied (\(advice))"
    }
}

/// Checks a procedure exists before queueing a request about it, when the database is readable.
func checkKnown(_ procedureID: String, config: AftercareConfiguration) async throws -> (ProcedureView, [ReminderView])? {
    do {
        try InputRules.checkIdentifier(procedureID, field: "procedure")
    } catch {
        throw CLIError("\(error)")
    }
    if case .sqlite = config.store, StaffAccess.readDenied(config.paths.database) != nil { return nil }
    guard let store = try? await openStore(config) else { return nil }
    guard let found = try await store.procedure(procedureID) else {
        throw CLIError("no procedure \(procedureID)")
    }
    return found
}

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cancel",
        abstract: "Cancel all of a procedure's pending reminders (in one transaction)."
    )

    @OptionGroup var options: ConfigOption

    @Argument(help: "The procedure id.")
    var procedureID: String

    @Option(help: "Why (recorded in the delivery log).")
    var reason: String?

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        if let reason {
            try cliCheck { try InputRules.checkText(reason, field: "--reason") }
        }
        if let (view, reminders) = try await checkKnown(procedureID, config: config) {
            if view.status == "cancelled" { throw CLIError("procedure \(procedureID) is already cancelled") }
            let pending = reminders.filter { $0.state.isPending }.count
            if pending == 0 && view.status != "booked" {
                throw CLIError("nothing to cancel: procedure \(procedureID) has no pending reminders")
            }
            print("Cancelling \(pending) pending reminder(s) of procedure \(procedureID).")
        }
        try submit(.cancel(procedureID: procedureID, reason: reason), label: procedureID, config: config, wait: receipt.wait)
    }
}

struct RescheduleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reschedule",
        abstract: "Correct a procedure's time or the patient's time zone; pending reminders are re-planned.",
        discussion: "Reminders already sent stay sent."
    )

    @OptionGroup var options: ConfigOption

    @Argument(help: "The procedure id.")
    var procedureID: String

    @Option(help: "The corrected procedure time: 2026-11-25T14:30:00-05:00 or 2026-11-25 14:30 (patient's time).")
    var performedAt: String?

    @Option(help: "The corrected IANA time zone of the patient.")
    var timeZone: String?

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        guard performedAt != nil || timeZone != nil else {
            throw CLIError("give --performed-at, --time-zone or both")
        }
        if let timeZone {
            try cliCheck { try InputRules.checkTimeZone(timeZone, field: "--time-zone") }
        }
        let known = try await checkKnown(procedureID, config: config)
        if known?.0.status == "cancelled" { throw CLIError("procedure \(procedureID) is cancelled") }
        let zone = TimeZone(identifier: timeZone ?? known?.0.procedure.patient.timeZone ?? config.policy.clinicTimeZone)!
        var performed: Date?
        if let performedAt {
            performed = try Show.parseTime(performedAt, zone: zone, option: "--performed-at")
        }
        try submit(
            .reschedule(procedureID: procedureID, performedAt: performed, timeZone: timeZone),
            label: procedureID, config: config, wait: receipt.wait
        )
    }
}

struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Re-queue dead reminders: one, a procedure's, or all that died since a time.",
        discussion: "A reminder whose validity window has closed is not re-sent; it is marked expired instead."
    )

    @OptionGroup var options: ConfigOption

    @Option(help: "One reminder, as PROCEDURE.STEP (see 'aftercare show').")
    var reminder: String?

    @Option(help: "Every dead reminder of this procedure.")
    var procedure: String?

    @Option(help: "Every reminder that died at or after this time (RFC 3339 with offset).")
    var since: String?

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        let scopes = [reminder != nil, procedure != nil, since != nil].filter { $0 }.count
        guard scopes == 1 else { throw CLIError("give exactly one of --reminder, --procedure or --since") }
        let scope: ReplayScope
        if let reminder {
            do {
                try InputRules.checkReminderID(reminder, field: "--reminder")
            } catch {
                throw CLIError("\(error)")
            }
            if let procedureID = IntakeRequest.replay(.reminder(reminder)).procedureID {
                _ = try await checkKnown(procedureID, config: config)
            }
            scope = .reminder(reminder)
        } else if let procedure {
            _ = try await checkKnown(procedure, config: config)
            scope = .procedure(procedure)
        } else {
            guard let date = Timestamp.parse(since!) else {
                throw CLIError("--since: '\(InputRules.printable(since!))' is not a time with offset such as 2026-11-25T08:00:00Z")
            }
            scope = .deadSince(date)
        }
        // Said here, before anything is queued: a replay that would change nothing is a mistake to
        // report, not a request for the daemon to refuse (which would leave a file in rejected/).
        if config.store != .sqlite || StaffAccess.readDenied(config.paths.database) == nil,
            let store = try? await openStore(config),
            try await store.replayable(scope, now: Date()) == 0
        {
            throw CLIError("nothing to replay: \(Self.nothing(scope))")
        }
        try submit(.replay(scope), label: "replay", config: config, wait: receipt.wait)
    }

    private static func nothing(_ scope: ReplayScope) -> String {
        let rule = "(only dead reminders, or expired ones whose window is still open, are replayed)"
        return switch scope {
        case .reminder(let id): "reminder \(id) is neither dead nor expired within its window"
        case .procedure(let id): "procedure \(id) has no dead reminder \(rule)"
        case .deadSince(let date): "no reminder died since \(Timestamp.format(date, in: .gmt)) \(rule)"
        }
    }
}

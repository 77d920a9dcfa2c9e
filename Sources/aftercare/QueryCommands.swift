import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareStore
import ArgumentParser
import Foundation

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List procedures, newest first, with their reminders' states.")

    @OptionGroup var options: ConfigOption

    @Option(name: .customLong("patient"), help: "Only this patient's procedures.")
    var patientID: String?

    @Flag(help: "Only procedures with reminders still to send.")
    var pending = false

    @Option(help: "At most this many procedures.")
    var limit: Int = 50

    func run() async throws {
        let config = try options.load()
        guard limit > 0 else { throw CLIError("--limit must be positive") }
        let store = try await openStore(config)
        let found = try await store.procedures(patientID: patientID, pendingOnly: pending, limit: limit)
        guard !found.isEmpty else {
            print("No procedures.")
            return
        }
        let rows = found.map { view, reminders -> [String] in
            var counts: [ReminderState: Int] = [:]
            for reminder in reminders { counts[reminder.state, default: 0] += 1 }
            let summary = ReminderState.allCases.compactMap { state in counts[state].map { "\($0) \(state.rawValue)" } }
            let time = Show.localWithZone(view.procedure.performedAt, view.procedure.patientTimeZone)
            return [
                view.procedure.id, view.procedure.patient.id, view.isAppointment ? "planned \(time)" : time,
                view.status,
                view.status == "booked" ? "start when performed" : summary.joined(separator: ", "),
            ]
        }
        print(Show.table(["PROCEDURE", "PATIENT", "PERFORMED", "STATUS", "REMINDERS"], rows))
    }
}

struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show one procedure and its reminders with states and times.")

    @OptionGroup var options: ConfigOption

    @Argument(help: "The procedure id.")
    var procedureID: String

    @Flag(help: "Show contact addresses in full.")
    var unmask = false

    func run() async throws {
        let config = try options.load()
        let store = try await openStore(config)
        guard let (view, reminders) = try await store.procedure(procedureID) else {
            throw CLIError("no procedure \(InputRules.printable(procedureID))")
        }
        let procedure = view.procedure
        let zone = procedure.patientTimeZone
        print("Procedure \(procedure.id)  (\(view.status), protocol \(procedure.protocolID))")
        print("Patient   \(procedure.patient.id)\(procedure.patient.firstName.map { " (\($0))" } ?? "")")
        switch view.status {
        case "booked":
            print("Planned   \(Show.localWithZone(procedure.performedAt, zone))  [\(procedure.patient.timeZone)]  "
                + "booked: reminders start once it is marked performed (aftercare performed \(procedure.id))")
        case "not_performed":
            print("Planned   \(Show.localWithZone(procedure.performedAt, zone))  [\(procedure.patient.timeZone)]  "
                + "never marked performed: closed, no aftercare sent")
        default:
            if let planned = view.plannedAt {
                print("Planned   \(Show.localWithZone(planned, zone))")
            }
            print("Performed \(Show.localWithZone(procedure.performedAt, zone))  [\(procedure.patient.timeZone)]")
        }
        for (index, route) in procedure.patient.routes.enumerated() {
            let address = unmask ? route.address : ContactMask.mask(route.address)
            print("Route \(index + 1)   \(route.channel) \(address)\(route.optedOut ? "  (opted out)" : "")")
        }
        print("")
        // The protocol's own step order, which staff know the care by; steps it no longer has come last.
        let order = config.protocols[procedure.protocolID]?.steps.map(\.id) ?? []
        let rank = { (step: String) in order.firstIndex(of: step) ?? order.count }
        let ordered = reminders.enumerated().sorted { left, right in
            (rank(left.element.stepID), left.offset) < (rank(right.element.stepID), right.offset)
        }.map(\.element)
        let rows = ordered.map { reminder -> [String] in
            [
                reminder.stepID, reminder.state.rawValue, Show.localWithZone(reminder.dueAt, zone),
                Show.localWithZone(reminder.expiresAt, zone), String(reminder.attempts), reminder.lastError ?? "",
            ]
        }
        print(Show.table(["STEP", "STATE", "DUE", "WINDOW ENDS", "TRIES", "LAST ERROR"], rows))
    }
}

/// How a command prints what it found.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Queue depth, next due, failures and the last delivery.")

    @OptionGroup var options: ConfigOption

    @Option(help: "text for people, json for scripts (times in RFC 3339 UTC).")
    var format: OutputFormat = .text

    func run() async throws {
        let config = try options.load()
        let spool = Spool(root: config.paths.spool)
        let store = try await openStore(config)
        let now = Date()
        let status = try await store.status(now: now)
        let zone = TimeZone(identifier: config.policy.clinicTimeZone) ?? .gmt
        let waiting = (try? spool.pendingFiles().count) ?? 0
        let rejected = ((try? FileManager.default.contentsOfDirectory(atPath: spool.rejected.path)) ?? [])
            .filter { $0.hasSuffix(".error") }.count
        var folder = stat()
        let intakeStopped = lstat(spool.incoming.path, &folder) != 0 || (folder.st_mode & S_IFMT) != S_IFDIR
        let daemonIdle = status.dueNow > 0 && waiting > 0
        if format == .json {
            let report = StatusReport(
                procedures: status.procedures, booked: status.booked, notPerformed: status.notPerformed,
                reminders: Dictionary(
                    uniqueKeysWithValues: ReminderState.allCases.map { ($0.rawValue, status.count($0)) }),
                dueNow: status.dueNow, retrying: status.retrying, failedTriesLastDay: status.failuresLastDay,
                nextDue: status.nextDue, lastDelivery: status.lastDelivery,
                spool: .init(
                    waiting: waiting, rejected: rejected, rejectedFolder: spool.rejected.path,
                    intakeStopped: intakeStopped),
                workWaiting: daemonIdle)
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            encoder.dateEncodingStrategy = .custom { date, encoder in
                var container = encoder.singleValueContainer()
                try container.encode(date.formatted(Date.ISO8601FormatStyle(timeZone: .gmt)))
            }
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
            return
        }
        var lines: [(String, String)] = [
            ("Procedures", "\(status.procedures)"),
            ("Booked", "\(status.booked) appointment(s) not yet performed"),
            ("Not performed", "\(status.notPerformed) appointment(s) closed unconfirmed"),
            ("Scheduled", "\(status.count(.scheduled)) (due now: \(status.dueNow), retrying: \(status.retrying))"),
            ("In flight", "\(status.count(.claimed))"),
            ("Delivered", "\(status.count(.delivered))"),
            ("Expired", "\(status.count(.expired))"),
            ("Dead", "\(status.count(.dead))\(status.count(.dead) > 0 ? "  (see 'aftercare replay')" : "")"),
            ("Cancelled", "\(status.count(.cancelled))"),
            ("Skipped", "\(status.count(.skipped))"),
            ("Failed tries (24 h)", "\(status.failuresLastDay)"),
            ("Next due", status.nextDue.map { Show.localWithZone($0, zone, now: now) } ?? "nothing scheduled"),
            ("Last delivery", status.lastDelivery.map { Show.localWithZone($0, zone, now: now) } ?? "none yet"),
            ("Spool waiting", "\(waiting) file(s)"),
            ("Spool rejected", "\(rejected) file(s)\(rejected > 0 ? "  (see \(spool.rejected.path))" : "")"),
        ]
        if intakeStopped {
            lines.append(("Spool problem", "\(spool.incoming.path) is missing or not a folder: intake is stopped "
                + "until the daemon recreates it (see its journal)"))
        }
        if daemonIdle {
            lines.append(("Note", "work is waiting: is the daemon running?"))
        }
        let width = lines.map(\.0.count).max() ?? 0
        for (label, value) in lines { print(label.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value) }
    }
}

/// `aftercare status --format json`: every figure of the text form, for scripts.
struct StatusReport: Encodable {
    /// The spool's figures.
    struct SpoolFigures: Encodable {
        var waiting: Int
        var rejected: Int
        var rejectedFolder: String
        var intakeStopped: Bool
    }

    var procedures: Int
    var booked: Int
    var notPerformed: Int
    /// Reminders by state, every state present.
    var reminders: [String: Int]
    var dueNow: Int
    var retrying: Int
    var failedTriesLastDay: Int
    var nextDue: Date?
    var lastDelivery: Date?
    var spool: SpoolFigures
    /// Reminders are due and spool files wait: the daemon may not be running.
    var workWaiting: Bool

    func encode(to encoder: any Encoder) throws {
        // Absent times are written as null rather than left out, so scripts see every key.
        enum Key: String, CodingKey {
            case procedures, booked, notPerformed, reminders, dueNow, retrying, failedTriesLastDay, nextDue,
                lastDelivery, spool, workWaiting
        }
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(procedures, forKey: .procedures)
        try container.encode(booked, forKey: .booked)
        try container.encode(notPerformed, forKey: .notPerformed)
        try container.encode(reminders, forKey: .reminders)
        try container.encode(dueNow, forKey: .dueNow)
        try container.encode(retrying, forKey: .retrying)
        try container.encode(failedTriesLastDay, forKey: .failedTriesLastDay)
        try container.encode(nextDue, forKey: .nextDue)
        try container.encode(lastDelivery, forKey: .lastDelivery)
        try container.encode(spool, forKey: .spool)
        try container.encode(workWaiting, forKey: .workWaiting)
    }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import ArgumentParser
import Foundation

/// `CHANNEL:ADDRESS` options as contact routes, with opt-outs marked; every one checked.
func contactRoutes(_ texts: [String], optOuts: [String] = [], option: String = "--route") throws -> [ContactRoute] {
    var routes: [ContactRoute] = []
    for text in texts {
        guard let colon = text.firstIndex(of: ":") else {
            throw CLIError("\(option): '\(InputRules.printable(text))' is not CHANNEL:ADDRESS, e.g. sms:+15551234567")
        }
        let channel = String(text[..<colon])
        let route = ContactRoute(
            channel: channel, address: String(text[text.index(after: colon)...]), optedOut: optOuts.contains(channel))
        do { try route.validate(field: option) } catch { throw CLIError("\(error)") }
        routes.append(route)
    }
    for channel in optOuts where !routes.contains(where: { $0.channel == channel }) {
        throw CLIError("--opt-out: the patient has no '\(InputRules.printable(channel))' route")
    }
    return routes
}

struct BookCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "book",
        abstract: "Book an appointment: a procedure planned ahead, whose reminders start once it is marked performed.",
        discussion: """
            Nothing is sent for a booked appointment. Mark it performed with 'aftercare performed' (its \
            reminders are then planned from the actual time); one never marked performed is closed as \
            not performed some hours after its planned time ([appointments] close_unconfirmed_after).
            Example:
              aftercare book --procedure P-1002 --patient MRN-77 --time-zone America/New_York \\
                --planned-at "2026-12-01 10:00" --route sms:+15551234567
            """
    )

    @OptionGroup var options: ConfigOption

    @OptionGroup var patient: PatientOptions

    @Option(help: "When it is planned: 2026-12-01T10:00:00-05:00, or 2026-12-01 10:00 (patient's time).")
    var plannedAt: String

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        let (zoneID, zone) = try patient.zone(config)
        let planned = try Show.parseTime(plannedAt, zone: zone, option: "--planned-at")
        if Date().timeIntervalSince(planned) > PerformedTime.aheadTolerance {
            throw CLIError(
                "--planned-at: \(Show.localWithZone(planned, zone)) has passed; if it was performed, record it with "
                    + "'aftercare add'")
        }
        let procedure = try patient.procedure(at: planned, zoneID: zoneID)
        if case .failure(let error) = Intake.plan(procedure, config: config, now: Date()) {
            throw CLIError("\(error)")
        }
        print("Booking procedure \(procedure.id) for \(Show.localWithZone(planned, zone)); nothing is sent until "
            + "it is marked performed.")
        try submit(.book(procedure), label: procedure.id, config: config, wait: receipt.wait)
    }
}

struct MoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move", abstract: "Move a booked appointment to another planned time.")

    @OptionGroup var options: ConfigOption

    @Argument(help: "The procedure id of the appointment.")
    var procedureID: String

    @Option(help: "The new planned time: 2026-12-02T10:00:00-05:00, or 2026-12-02 10:00 (patient's time).")
    var plannedAt: String

    @Option(help: "The patient's IANA time zone, if that changes too.")
    var timeZone: String?

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        if let timeZone {
            try cliCheck { try InputRules.checkTimeZone(timeZone, field: "--time-zone") }
        }
        let known = try await checkKnown(procedureID, config: config)
        if let status = known?.0.status, status != "booked" {
            throw CLIError("procedure \(procedureID) is \(status), not a booked appointment")
        }
        let zoneID = timeZone ?? known?.0.procedure.patient.timeZone ?? config.policy.clinicTimeZone
        let zone = TimeZone(identifier: zoneID) ?? .gmt
        let planned = try Show.parseTime(plannedAt, zone: zone, option: "--planned-at")
        try submit(
            .move(procedureID: procedureID, plannedAt: planned, timeZone: timeZone), label: procedureID,
            config: config, wait: receipt.wait)
    }
}

struct PerformedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "performed",
        abstract: "Mark a booked appointment performed; its reminders are planned from the actual time."
    )

    @OptionGroup var options: ConfigOption

    @Argument(help: "The procedure id of the appointment.")
    var procedureID: String

    @Option(help: "When it was performed: now (default), 2026-12-01T10:20:00-05:00, or 2026-12-01 10:20.")
    var at: String = "now"

    @Flag(help: "Record it even if so far back that every step's window has closed (nothing will be sent).")
    var force = false

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        let known = try await checkKnown(procedureID, config: config)
        if let status = known?.0.status, status != "booked", status != "not_performed" {
            throw CLIError("procedure \(procedureID) is \(status), not a booked appointment")
        }
        let zone = known?.0.procedure.patientTimeZone ?? TimeZone(identifier: config.policy.clinicTimeZone) ?? .gmt
        let now = Date()
        let performed = try Show.parseTime(at, zone: zone, option: "--at", now: now)
        if performed.timeIntervalSince(now) > PerformedTime.aheadTolerance {
            throw CLIError("--at: \(Show.localWithZone(performed, zone)) is more than 5 minutes ahead; "
                + "use 'aftercare move' to change the planned time")
        }
        try submit(
            .performed(procedureID: procedureID, at: performed, force: force), label: procedureID, config: config,
            wait: receipt.wait)
    }
}

import AftercareConfig
import AftercareCore
import AftercareDaemon
import ArgumentParser
import Foundation

struct AddCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Add a patient's procedure; prints the planned reminders in the patient's local time.",
        discussion: """
            Example:
              aftercare add --procedure P-1001 --patient MRN-77 --first-name Ana \\
                --time-zone America/New_York --performed-at now \\
                --route sms:+15551234567 --route email:ana@example.org
            """
    )

    @OptionGroup var options: ConfigOption

    @OptionGroup var patient: PatientOptions

    @Option(help: "When the procedure was performed: now, 2026-11-25T14:30:00-05:00, or 2026-11-25 14:30 (patient's time).")
    var performedAt: String = "now"

    @Flag(help: "Record a procedure so far back that every step's window has closed (nothing will be sent).")
    var force = false

    @Flag(help: "Check and print the plan without queueing anything.")
    var dryRun = false

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        let (zoneID, zone) = try patient.zone(config)
        let performed = try Show.parseTime(performedAt, zone: zone, option: "--performed-at")
        let procedure = try patient.procedure(at: performed, zoneID: zoneID)
        let now = Date()
        if performed.timeIntervalSince(now) > PerformedTime.aheadTolerance {
            throw CLIError(
                "--performed-at: \(Show.localWithZone(performed, zone)) is more than 5 minutes ahead; a procedure "
                    + "not yet performed is an appointment: aftercare book --procedure \(procedure.id) "
                    + "--planned-at TIME …")
        }
        let planned: [PlannedReminder]
        switch Intake.plan(procedure, config: config, now: now) {
        case .success(let reminders): planned = reminders
        case .failure(let error): throw CLIError("\(error)")
        }
        if PerformedTime.problem(performedAt: performed, now: now, plan: planned, force: force) != nil {
            throw CLIError(
                "--performed-at: \(Show.localWithZone(performed, zone)) is so far back that every step's window has "
                    + "closed and nothing would be sent; add --force to record it anyway")
        }

        let spool = Spool(root: config.paths.spool)
        if !dryRun {
            let name = try queue(
                .procedure(procedure, force: force), label: procedure.id, spool: spool, what: "the procedure")
            print("Queued procedure \(procedure.id) for patient \(procedure.patient.id) (spool file \(name)).")
            try SpoolReceipt.report(spool: spool, name: name, wait: receipt.wait)
        } else {
            print("Dry run: procedure \(procedure.id) for patient \(procedure.patient.id) is valid; nothing queued.")
        }
        print("Planned reminders (times in \(zoneID)):")
        let rows = planned.map { reminder in
            [
                reminder.stepID, Show.localWithZone(reminder.dueAt, zone), Show.stateLabel(reminder),
                reminder.note ?? "",
            ]
        }
        print(Show.table(["STEP", "DUE", "STATE", "NOTE"], rows).split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
        // Steps that will never reach the patient, said where staff cannot miss them.
        if let careProtocol = config.protocols[procedure.protocolID] {
            let warnings = Planner.unsendableSteps(
                planned, protocol: careProtocol, procedure: procedure, channels: Set(config.channels.keys))
            for warning in warnings {
                FileHandle.standardError.write(Data("WARNING: \(warning)\n".utf8))
            }
        }
    }
}

/// Who the procedure is for and how to reach them: `add` and `book` take the same.
struct PatientOptions: ParsableArguments {
    @Option(name: .customLong("procedure"), help: "The procedure's id (letters, digits, . _ : -).")
    var procedureID: String

    @Option(name: .customLong("patient"), help: "The patient's id, e.g. an MRN.")
    var patientID: String

    @Option(help: "The patient's first name, for the greeting (optional).")
    var firstName: String?

    @Option(help: "The patient's IANA time zone (default: the clinic's).")
    var timeZone: String?

    @Option(
        name: .customLong("route"),
        help: "A contact route CHANNEL:ADDRESS, in the patient's order of preference (repeat it): sms:+15551234567, email:ana@example.org."
    )
    var routes: [String] = []

    @Option(name: .customLong("opt-out"), help: "A channel the patient opted out of (repeatable).")
    var optOuts: [String] = []

    @Option(name: .customLong("protocol"), help: "The protocol id.")
    var protocolID: String = "trigger-point-injection"

    /// The patient's zone (the clinic's unless given), checked.
    func zone(_ config: AftercareConfiguration) throws -> (id: String, zone: TimeZone) {
        let zoneID = timeZone ?? config.policy.clinicTimeZone
        try cliCheck { try InputRules.checkTimeZone(zoneID, field: "--time-zone") }
        return (zoneID, TimeZone(identifier: zoneID)!)
    }

    /// The procedure these options describe, at `time`, checked as intake checks it.
    func procedure(at time: Date, zoneID: String) throws -> Procedure {
        guard !routes.isEmpty else {
            throw CLIError("--route: at least one contact route is needed, e.g. --route sms:+15551234567")
        }
        let procedure = Procedure(
            id: procedureID, protocolID: protocolID, performedAt: time,
            patient: Patient(
                id: patientID, firstName: firstName, timeZone: zoneID,
                routes: try contactRoutes(routes, optOuts: optOuts)))
        try cliCheck { try procedure.validate() }
        return procedure
    }
}

/// Runs a check whose error is the one line to show, as a CLI error.
func cliCheck<T>(_ check: () throws -> T) throws -> T {
    do { return try check() } catch let error as CLIError { throw error } catch { throw CLIError("\(error)") }
}

/// ``cliCheck(_:)`` for work that awaits.
func cliCheck<T>(_ check: () async throws -> T) async throws -> T {
    do { return try await check() } catch let error as CLIError { throw error } catch { throw CLIError("\(error)") }
}

/// How long a request command waits to hear what the daemon made of its request.
struct ReceiptOption: ParsableArguments {
    @Option(help: "Seconds to wait for the daemon to take the request (0: don't wait).")
    var wait: Double = 5
}

/// Tells staff what became of a request they dropped in the spool.
enum SpoolReceipt {
    enum Fate {
        case taken
        case rejected(String)
        case waiting
    }

    /// Waits up to `wait` seconds for the daemon to take or refuse the file.
    static func fate(spool: Spool, name: String, wait: Double) -> Fate {
        let deadline = Date().addingTimeInterval(wait)
        let incoming = spool.incoming.appendingPathComponent(name).path
        let errorFile = spool.rejected.appendingPathComponent(name + ".error")
        repeat {
            if !FileManager.default.fileExists(atPath: incoming) {
                if let reason = try? String(contentsOf: errorFile, encoding: .utf8) {
                    return .rejected(reason.trimmingCharacters(in: .whitespacesAndNewlines))
                }
                return .taken
            }
            if wait <= 0 { break }
            usleep(50_000)
        } while Date() < deadline
        return .waiting
    }

    /// Prints the fate; a refusal is an error.
    static func report(spool: Spool, name: String, wait: Double) throws {
        guard wait > 0 else { return }
        switch fate(spool: spool, name: name, wait: wait) {
        case .taken:
            print("The daemon has taken it.")
        case .rejected(let reason):
            // The refusal is answered here, to the person who made the request: the file need not wait
            // in rejected/ for someone to find, nor count there as a problem with the intake.
            let refused = spool.rejected.appendingPathComponent(name).path
            unlink(refused)
            unlink(refused + ".error")
            throw CLIError("the daemon refused it: \(reason)")
        case .waiting:
            FileHandle.standardError.write(
                Data("note: the daemon has not taken it within \(Int(wait)) s; it stays queued until the daemon runs\n".utf8)
            )
        }
    }
}

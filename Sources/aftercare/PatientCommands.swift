import AftercareConfig
import AftercareCore
import AftercareStore
import ArgumentParser
import Foundation

struct UpdateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "update",
        abstract: "Correct a patient's contact routes, first name or opt-outs; pending reminders use the new details.",
        discussion: """
            With --patient alone, every open (booked or active) procedure of that patient is updated; with \
            a procedure id, only that one. New --route options replace all the patient's routes. The \
            delivery log records who changed what, with addresses masked.
            """
    )

    @OptionGroup var options: ConfigOption

    @Argument(help: "Only this procedure (default: all of the patient's open procedures).")
    var procedureID: String?

    @Option(name: .customLong("patient"), help: "The patient's id, e.g. an MRN.")
    var patientID: String?

    @Option(help: "The corrected first name.")
    var firstName: String?

    @Option(name: .customLong("route"), help: "A contact route CHANNEL:ADDRESS (repeat it); replaces all routes.")
    var routes: [String] = []

    @Option(name: .customLong("opt-out"), help: "A channel the patient opted out of (repeatable).")
    var optOuts: [String] = []

    @Option(name: .customLong("opt-in"), help: "A channel the patient opted back in to (repeatable).")
    var optIns: [String] = []

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        var patient = patientID
        if let procedureID, let (view, _) = try await checkKnown(procedureID, config: config) {
            if let patientID, patientID != view.procedure.patient.id {
                throw CLIError(
                    "procedure \(procedureID) belongs to another patient than \(InputRules.printable(patientID))")
            }
            patient = view.procedure.patient.id
        }
        guard let patient else { throw CLIError("give --patient MRN (and optionally a procedure id)") }
        let update = PatientUpdate(
            patientID: patient, procedureID: procedureID, firstName: firstName,
            routes: routes.isEmpty ? nil : try contactRoutes(routes, optOuts: optOuts),
            optOut: routes.isEmpty ? optOuts : [], optIn: optIns)
        try submit(.update(update), label: patient, config: config, wait: receipt.wait)
    }
}

struct OptOutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "opt-out",
        abstract: "Record that a patient opted out of a channel (as a gateway's STOP asks), for every pending reminder."
    )

    @OptionGroup var options: ConfigOption

    @Option(name: .customLong("patient"), help: "The patient's id, e.g. an MRN.")
    var patientID: String

    @Option(help: "The channel, e.g. sms.")
    var channel: String

    @OptionGroup var receipt: ReceiptOption

    func run() async throws {
        let config = try options.load()
        try submit(
            .update(PatientUpdate(patientID: patientID, optOut: [channel])), label: patientID, config: config,
            wait: receipt.wait)
    }
}

import AftercareCore
import Foundation
import Testing

@Suite("The appointment and contact-correction request kinds")
struct LifecycleRequestTests {
    static let planned = Timestamp.parse("2026-12-01T10:00:00-05:00")!

    static let patient = Patient(
        id: "MRN-1", firstName: "Ana", timeZone: "America/New_York",
        routes: [ContactRoute(channel: "sms", address: "+15551234567")])

    @Test("book, move, performed, update and a forced procedure survive encode then decode unchanged")
    func roundTrip() throws {
        let requests: [IntakeRequest] = [
            .book(Procedure(id: "A-1", protocolID: "trigger-point-injection", performedAt: Self.planned, patient: Self.patient)),
            .move(procedureID: "A-1", plannedAt: Self.planned.addingTimeInterval(86400), timeZone: "Europe/Berlin"),
            .move(procedureID: "A-1", plannedAt: Self.planned, timeZone: nil),
            .performed(procedureID: "A-1", at: Self.planned.addingTimeInterval(600), force: true),
            .performed(procedureID: "A-1", at: nil, force: false),
            .procedure(
                Procedure(id: "P-1", protocolID: "trigger-point-injection", performedAt: Self.planned, patient: Self.patient),
                force: true),
            .update(PatientUpdate(
                patientID: "MRN-1", procedureID: "P-1", firstName: "Anna",
                routes: [ContactRoute(channel: "email", address: "ana@example.org", optedOut: true)], optIn: ["sms"])),
            .update(PatientUpdate(patientID: "MRN-1", optOut: ["sms"])),
        ]
        for request in requests {
            let data = IntakeCodec.encode(request)
            #expect(try IntakeCodec.decode(data) == [request], "\(String(decoding: data, as: UTF8.self))")
        }
    }

    @Test("a spool file with kind book and planned_at is an appointment; without it a plain record is performed")
    func bookFromJSON() throws {
        let json = #"{"kind":"book","procedure_id":"A-2","protocol":"trigger-point-injection","planned_at":"2026-12-01T10:00:00-05:00","patient":{"id":"MRN-1","time_zone":"America/New_York","routes":[{"channel":"sms","to":"+15551234567"}]}}"#
        guard case .book(let procedure) = try #require(try IntakeCodec.decode(Data(json.utf8)).first) else {
            Issue.record("not a booking")
            return
        }
        #expect(procedure.performedAt == Self.planned)
        let force = #"{"procedure_id":"P-9","protocol":"p","performed_at":"2026-12-01T10:00:00-05:00","force":"yes","patient":{"id":"M","time_zone":"UTC","routes":[{"channel":"sms","to":"+15551234567"}]}}"#
        #expect(throws: IntakeError.self) { try IntakeCodec.decode(Data(force.utf8)) }
    }

    @Test("hostile values in every field of the new kinds are refused with one safe line")
    func hostileValuesRefused() {
        let bad = ["A\u{0}b", "A\nb", "A\u{1B}[31mb", "A\u{202E}b", String(repeating: "x", count: 129), ""]
        for value in bad {
            let text = JSONText.string(value)
            let cases = [
                #"{"kind":"move","procedure_id":\#(text),"planned_at":"2026-12-01T10:00:00Z"}"#,
                #"{"kind":"performed","procedure_id":\#(text)}"#,
                #"{"kind":"update","patient_id":\#(text),"first_name":"Ana"}"#,
                #"{"kind":"update","patient_id":"MRN-1","procedure_id":\#(text),"first_name":"Ana"}"#,
                #"{"kind":"update","patient_id":"MRN-1","opt_out":[\#(text)]}"#,
                #"{"kind":"update","patient_id":"MRN-1","opt_in":[\#(text)]}"#,
                #"{"kind":"update","patient_id":"MRN-1","routes":[{"channel":"sms","to":\#(text)}]}"#,
                #"{"kind":"update","patient_id":"MRN-1","routes":[{"channel":\#(text),"to":"+15551234567"}]}"#,
                #"{"kind":"book","procedure_id":\#(text),"protocol":"p","planned_at":"2026-12-01T10:00:00Z","patient":{"id":"M","time_zone":"UTC","routes":[{"channel":"sms","to":"+15551234567"}]}}"#,
            ]
            for json in cases {
                do {
                    let accepted = try IntakeCodec.decode(Data(json.utf8))
                    Issue.record("accepted \(accepted) from \(json.debugDescription)")
                } catch {
                    let message = error.description
                    #expect(!message.contains("\n") && !message.unicodeScalars.contains(where: InputRules.isUnsafe),
                            "\(message.debugDescription)")
                }
            }
        }
        // Well-formed but meaningless: refused with the reason.
        for (json, reason) in [
            (#"{"kind":"update","patient_id":"MRN-1"}"#, "needs first_name, routes, opt_out or opt_in"),
            (#"{"kind":"update","patient_id":"MRN-1","routes":[]}"#, "at least one contact route"),
            (#"{"kind":"update","patient_id":"MRN-1","opt_out":["sms"],"opt_in":["sms"]}"#, "also in opt_out"),
            (#"{"kind":"update","patient_id":"MRN-1","opt_out":"sms"}"#, "array of strings"),
            (#"{"kind":"move","procedure_id":"A-1"}"#, "planned_at"),
            (#"{"kind":"move","procedure_id":"A-1","planned_at":"2399-01-01T00:00:00Z"}"#, "outside 2000-2100"),
            (#"{"kind":"update","patient_id":"MRN-1","first_name":"Ana","colour":"red"}"#, "unknown field 'colour'"),
        ] {
            do {
                _ = try IntakeCodec.decode(Data(json.utf8))
                Issue.record("accepted \(json)")
            } catch {
                #expect(error.description.contains(reason), "\(error.description)")
            }
        }
    }

    @Test("performed-time rules: more than 5 minutes ahead is a booking; nothing left to send needs force")
    func performedTimeRules() {
        let now = Self.planned
        let scheduled = PlannedReminder(
            stepID: "s", nominalAt: now, dueAt: now, expiresAt: now + 3600, state: .scheduled, note: nil)
        var expired = scheduled
        expired.state = .expired
        #expect(PerformedTime.problem(performedAt: now + 300, now: now, plan: [scheduled], force: false) == nil)
        #expect(PerformedTime.problem(performedAt: now + 301, now: now, plan: [scheduled], force: true)?
            .contains("book it as an appointment") == true)
        #expect(PerformedTime.problem(performedAt: now - 86400 * 30, now: now, plan: [expired, expired], force: false)?
            .contains("nothing would be sent") == true)
        #expect(PerformedTime.problem(performedAt: now - 86400 * 30, now: now, plan: [expired, expired], force: true) == nil)
        #expect(PerformedTime.problem(performedAt: now - 86400, now: now, plan: [expired, scheduled], force: false) == nil)
    }
}

import AftercareCore
import Foundation
import Testing

@Suite("Every field of every intake request is validated")
struct IntakeValidationTests {
    static let procedure = #"{"procedure_id":"P-1","protocol":"trigger-point-injection","performed_at":"2026-11-25T14:30:00-05:00","patient":{"id":"MRN-1","first_name":"Ana","time_zone":"America/New_York","routes":[{"channel":"sms","to":"+15551234567"}]}}"#

    /// Hostile values an id must never accept: NUL, other C0 controls, DEL, C1, bidi, too long.
    static let hostile: [(String, String)] = [
        ("NUL", "A\u{0}b"), ("LF", "A\nb"), ("ESC", "A\u{1B}[31mb"), ("DEL", "A\u{7F}b"), ("C1", "A\u{85}b"),
        ("bidi override", "A\u{202E}b"), ("bidi isolate", "A\u{2066}b"), ("too long", String(repeating: "x", count: 129)),
        ("empty", ""),
    ]

    /// Decodes `json`, expecting a refusal; returns its one-line message.
    func refusal(_ json: String) -> String? {
        do {
            let requests = try IntakeCodec.decode(Data(json.utf8))
            Issue.record("accepted \(requests) from \(json.debugDescription)")
            return nil
        } catch {
            return error.description
        }
    }

    /// A JSON string literal for `value`, escaping what JSON needs escaped.
    func literal(_ value: String) -> String { JSONText.string(value) }

    func expectRefused(_ json: String, field: String, value: String, comment: String) {
        guard let message = refusal(json) else { return }
        #expect(message.contains(field), "\(comment): \(message)")
        #expect(!message.contains("\n") && !message.contains("\r"), "\(comment): \(message.debugDescription)")
        #expect(!message.unicodeScalars.contains(where: InputRules.isUnsafe), "\(comment): \(message.debugDescription)")
        #expect(message.unicodeScalars.count < 600, "\(comment)")
    }

    @Test("cancel with a NUL in procedure_id is refused at decode (the hash-chain breaker of issue 8)")
    func cancelWithNUL() {
        let message = refusal(#"{"kind":"cancel","procedure_id":"A\u0000b"}"#)
        #expect(message == #"procedure_id 'A\0b': may hold only letters, digits and . _ : - (found byte 0x00)"#)
    }

    @Test("procedure_id is refused with a hostile value in every request kind")
    func procedureIDInEveryKind() {
        for (name, bad) in Self.hostile {
            let value = literal(bad)
            expectRefused(#"{"kind":"cancel","procedure_id":\#(value)}"#, field: "procedure_id", value: bad, comment: "cancel \(name)")
            expectRefused(
                #"{"kind":"reschedule","procedure_id":\#(value),"time_zone":"UTC"}"#,
                field: "procedure_id", value: bad, comment: "reschedule \(name)")
            expectRefused(#"{"kind":"replay","procedure_id":\#(value)}"#, field: "procedure_id", value: bad, comment: "replay \(name)")
            expectRefused(
                Self.procedure.replacingOccurrences(of: #""procedure_id":"P-1""#, with: #""procedure_id":\#(value)"#),
                field: "procedure_id", value: bad, comment: "procedure \(name)")
        }
    }

    @Test("patient id, protocol, route values, first name and reason refuse hostile values")
    func otherFields() {
        for (name, bad) in Self.hostile {
            let value = literal(bad)
            expectRefused(
                Self.procedure.replacingOccurrences(of: #""id":"MRN-1""#, with: #""id":\#(value)"#),
                field: "patient.id", value: bad, comment: "patient id \(name)")
            expectRefused(
                Self.procedure.replacingOccurrences(of: #""protocol":"trigger-point-injection""#, with: #""protocol":\#(value)"#),
                field: "protocol", value: bad, comment: "protocol \(name)")
            expectRefused(
                Self.procedure.replacingOccurrences(of: #""to":"+15551234567""#, with: #""to":\#(value)"#),
                field: "patient.routes[0].to", value: bad, comment: "route \(name)")
            expectRefused(
                Self.procedure.replacingOccurrences(of: #""channel":"sms""#, with: #""channel":\#(value)"#),
                field: "patient.routes[0].channel", value: bad, comment: "channel \(name)")
            if name != "empty" && name != "too long" {
                expectRefused(
                    Self.procedure.replacingOccurrences(of: #""first_name":"Ana""#, with: #""first_name":\#(value)"#),
                    field: "patient.first_name", value: bad, comment: "first name \(name)")
                expectRefused(
                    #"{"kind":"cancel","procedure_id":"P-1","reason":\#(value)}"#, field: "reason", value: bad,
                    comment: "reason \(name)")
            }
        }
    }

    @Test("replay's reminder_id must be PROCEDURE.STEP with a valid id and step")
    func replayReminderID() {
        for (name, bad) in Self.hostile {
            expectRefused(
                #"{"kind":"replay","reminder_id":\#(literal("P-1.\(bad)"))}"#, field: "reminder_id", value: bad,
                comment: "step \(name)")
            expectRefused(
                #"{"kind":"replay","reminder_id":\#(literal("\(bad).checkin-24h"))}"#, field: "reminder_id", value: bad,
                comment: "procedure \(name)")
        }
        let long = String(repeating: "9", count: 10_000)
        let message = refusal(#"{"kind":"replay","reminder_id":"P-1.\#(long)"}"#)
        #expect(message?.contains("reminder_id") == true)
        #expect((message?.count ?? 0) < 200, "a 10,000-character id is not echoed whole")
        // Procedure ids may hold dots; the step is after the last one.
        let requests = try? IntakeCodec.decode(Data(#"{"kind":"replay","reminder_id":"P.1.checkin-24h"}"#.utf8))
        #expect(requests == [.replay(.reminder("P.1.checkin-24h"))])
        #expect(requests?.first?.procedureID == "P.1")
    }

    @Test("requested_by is checked as a user name")
    func requestedBy() {
        for (name, bad) in Self.hostile {
            expectRefused(
                #"{"kind":"cancel","procedure_id":"P-1","requested_by":\#(literal(bad))}"#, field: "requested_by",
                value: bad, comment: "requested_by \(name)")
        }
        #expect((try? IntakeCodec.decode(Data(#"{"kind":"cancel","procedure_id":"P-1","requested_by":"ana.o"}"#.utf8)))
            == [.cancel(procedureID: "P-1", reason: nil)])
    }

    @Test("a refused request never carries an invalid procedure id to the log")
    func errorCarriesOnlyValidIDs() {
        do {
            _ = try IntakeCodec.decode(Data(#"{"kind":"cancel","procedure_id":"A\u001b[2Jb","reason":"x\u0000"}"#.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.procedureID == nil)
        }
        do {
            _ = try IntakeCodec.decode(Data(#"{"kind":"cancel","procedure_id":"P-9","reason":"x\u0000"}"#.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.procedureID == "P-9")
            #expect(error.description == #"procedure P-9: reason 'x\0': contains a control character (U+0000)"#)
        }
    }

    @Test("validate() is what decode applies: the staff commands refuse the same requests")
    func validateMatchesDecode() {
        let bad: [IntakeRequest] = [
            .cancel(procedureID: "A\u{0}b", reason: nil),
            .reschedule(procedureID: "P-1", performedAt: nil, timeZone: nil),
            .reschedule(procedureID: "P-1", performedAt: nil, timeZone: "Mars/Olympus"),
            .replay(.reminder("P-1")),
            .replay(.procedure("P\u{202E}1")),
        ]
        for request in bad {
            #expect(throws: ValidationError.self) { try request.validate() }
        }
        #expect(throws: Never.self) { try IntakeRequest.cancel(procedureID: "P-1", reason: "declined").validate() }
    }
}

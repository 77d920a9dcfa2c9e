import AftercareCore
import Foundation
import Testing

@Suite("Intake files, timestamps and masking")
struct IntakeCodecTests {
    static let procedureLine = #"{"procedure_id":"P-1","protocol":"trigger-point-injection","performed_at":"2026-11-25T14:30:00-05:00","patient":{"id":"MRN-1","first_name":"Ana","time_zone":"America/New_York","routes":[{"channel":"sms","to":"+15551234567"},{"channel":"email","to":"ana@example.org","opted_out":true}]}}"#

    @Test("RFC 3339 times need an offset and round-trip in the patient's zone")
    func timestamps() {
        #expect(Timestamp.parse("2026-11-25T14:30:00-05:00") == Date(timeIntervalSince1970: 1_795_635_000))
        #expect(Timestamp.parse("2026-11-25T19:30:00Z") == Date(timeIntervalSince1970: 1_795_635_000))
        #expect(Timestamp.parse("2026-11-25T19:30Z") == Date(timeIntervalSince1970: 1_795_635_000))
        #expect(Timestamp.parse("2026-11-25T19:30:00.250Z") == Date(timeIntervalSince1970: 1_795_635_000.25))
        for bad in ["2026-11-25T14:30:00", "2026-11-25", "2026-02-30T10:00:00Z", "2026-11-25T24:00:00Z",
                    "2026-11-25T14:30:00+5", "yesterday", "2026-11-25T14:30:00-05:00 "]
        {
            #expect(Timestamp.parse(bad) == nil, "\(bad) should not parse")
        }
        let newYork = TimeZone(identifier: "America/New_York")!
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_795_635_000), in: newYork) == "2026-11-25T14:30:00-05:00")
        // Summer time: the same zone, a different offset.
        #expect(Timestamp.format(Timestamp.parse("2026-07-01T12:00:00Z")!, in: newYork) == "2026-07-01T08:00:00-04:00")
        let kolkata = TimeZone(identifier: "Asia/Kolkata")!
        #expect(Timestamp.format(Timestamp.parse("2026-07-01T12:00:00Z")!, in: kolkata) == "2026-07-01T17:30:00+05:30")
    }

    @Test("a procedure file decodes with every field, and encodes back to the same request")
    func procedureRoundTrip() throws {
        let requests = try IntakeCodec.decode(Data(Self.procedureLine.utf8))
        guard case .procedure(let procedure, _) = try #require(requests.first) else {
            Issue.record("expected a procedure")
            return
        }
        #expect(procedure.id == "P-1")
        #expect(procedure.patient.firstName == "Ana")
        #expect(procedure.patient.routes == [
            ContactRoute(channel: "sms", address: "+15551234567"),
            ContactRoute(channel: "email", address: "ana@example.org", optedOut: true),
        ])
        #expect(procedure.performedAt == Timestamp.parse("2026-11-25T19:30:00Z"))
        let again = try IntakeCodec.decode(IntakeCodec.encode(requests[0]))
        #expect(again == requests)
    }

    @Test("JSON Lines hold many requests of every kind; a pretty-printed object is one request")
    func jsonLinesAndPretty() throws {
        let text = Self.procedureLine + "\n\n"
            + #"{"kind":"cancel","procedure_id":"P-1","reason":"declined"}"# + "\n"
            + #"{"kind":"reschedule","procedure_id":"P-1","time_zone":"Europe/Berlin"}"# + "\n"
            + #"{"kind":"replay","reminder_id":"P-1.checkin-24h"}"# + "\n"
            + #"{"kind":"replay","dead_since":"2026-11-25T00:00:00Z"}"# + "\n"
        let requests = try IntakeCodec.decode(Data(text.utf8))
        #expect(requests.count == 5)
        #expect(requests[1] == .cancel(procedureID: "P-1", reason: "declined"))
        #expect(requests[2] == .reschedule(procedureID: "P-1", performedAt: nil, timeZone: "Europe/Berlin"))
        #expect(requests[3] == .replay(.reminder("P-1.checkin-24h")))
        #expect(requests[4] == .replay(.deadSince(Timestamp.parse("2026-11-25T00:00:00Z")!)))
        let object = try JSONSerialization.jsonObject(with: Data(Self.procedureLine.utf8))
        let pretty = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted])
        #expect(try IntakeCodec.decode(pretty).count == 1)
    }

    @Test("every kind of bad request is refused with the line and the reason")
    func refusals() {
        func problem(_ text: String) -> String {
            do {
                _ = try IntakeCodec.decode(Data(text.utf8))
                return "accepted"
            } catch {
                return error.description
            }
        }
        let line = Self.procedureLine
        #expect(problem("") == "the file is empty")
        #expect(problem("[1,2]") == "expected a JSON object")
        #expect(problem("{\"procedure_id\":") == "not valid JSON")
        #expect(problem(line.replacingOccurrences(of: "-05:00", with: "")).contains("is not a time with a zone offset"))
        #expect(problem(line.replacingOccurrences(of: "\"first_name\"", with: "\"diagnosis\":\"myofascial pain\",\"first_name\""))
            == "procedure P-1: unknown field 'patient.diagnosis'")
        #expect(problem(line.replacingOccurrences(of: "Ana", with: "Ana\\r\\nBcc: x")).contains("control character"))
        #expect(problem(line.replacingOccurrences(of: "ana@example.org", with: "ana@example")).contains("is not an email address"))
        #expect(problem(line.replacingOccurrences(of: "\"opted_out\":true", with: "\"opted_out\":\"yes\""))
            == "'patient.routes[1].opted_out' must be true or false")
        #expect(problem(#"{"kind":"delete","procedure_id":"P-1"}"#).hasPrefix("unknown kind 'delete'"))
        #expect(problem(#"{"kind":"reschedule","procedure_id":"P-1"}"#) == "procedure P-1: reschedule: needs performed_at or time_zone")
        #expect(problem(#"{"kind":"replay","reminder_id":"P-1"}"#) == "reminder_id 'P-1': is not PROCEDURE.STEP")
        #expect(problem(line + "\n" + #"{"kind":"cancel"}"#) == "line 2: missing field 'procedure_id'")
    }

    @Test("contacts are masked enough to recognise, not to use")
    func masking() {
        #expect(ContactMask.mask("jane@example.org") == "j***@example.org")
        #expect(ContactMask.mask("+15551234567") == "+1******4567")
        #expect(ContactMask.mask("portal-user-8812") == "po***12")
        #expect(ContactMask.mask("abc") == "***")
    }
}

@Suite("Request size")
struct RequestSizeTests {
    @Test("a request line over 64 KiB is refused by its length, before any parsing, with its line number")
    func hugeLineRefused() {
        let small = #"{"kind":"cancel","procedure_id":"P-1"}"#
        let huge = #"{"procedure_id":""# + String(repeating: "P", count: 70 * 1024) + #""}"#
        let data = Data((small + "\n" + huge + "\n").utf8)
        #expect(throws: IntakeError.self) { try IntakeCodec.decode(data) }
        do {
            _ = try IntakeCodec.decode(data)
        } catch {
            #expect(error.description.contains("line 2: a request of \(huge.utf8.count) bytes"), "\(error)")
        }
        // The file's stated requester is not looked for in a line that size either.
        #expect(IntakeCodec.requestedBy(Data(huge.utf8)) == nil)
    }
}

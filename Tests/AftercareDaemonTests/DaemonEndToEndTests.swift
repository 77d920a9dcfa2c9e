import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Testing

@Suite("The daemon end to end on a manual clock")
struct DaemonEndToEndTests {
    /// Wed 2026-11-25 14:00 in New York (19:00 UTC).
    static let afternoon = Timestamp.parse("2026-11-25T14:00:00-05:00")!

    @Test("each reminder reaches the outbox once, at its time, and not before")
    func remindersGoOutOnTimeOnce() async throws {
        let harness = try DaemonHarness(start: Self.afternoon, quietHours: ("21:00", "08:00"))
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-1", at: Self.afternoon))], label: "P-1")
        #expect(await harness.eventually { harness.outboxFiles() == ["P-1.activity", "P-1.ice"] })
        #expect(await harness.deliveredCount(reaches: 2))
        await harness.settle()
        #expect(harness.outboxFiles() == ["P-1.activity", "P-1.ice"])

        // One minute before +24 h nothing more has gone out.
        harness.clock.set(Self.afternoon.addingTimeInterval(86400 - 60))
        await harness.settle()
        #expect(harness.outboxFiles() == ["P-1.activity", "P-1.ice"])

        harness.clock.set(Self.afternoon.addingTimeInterval(86400))
        #expect(await harness.eventually { harness.outboxFiles().count == 4 })
        #expect(harness.outboxFiles() == ["P-1.activity", "P-1.checkin-24h", "P-1.ice", "P-1.resume-activity"])
        #expect(await harness.deliveredCount(reaches: 4))
        harness.clock.set(Self.afternoon.addingTimeInterval(2 * 86400))
        #expect(await harness.eventually { harness.outboxFiles().count == 5 })
        #expect(await harness.deliveredCount(reaches: 5))
        harness.clock.set(Self.afternoon.addingTimeInterval(3 * 86400))
        #expect(await harness.eventually { harness.outboxFiles().count == 6 })
        #expect(await harness.deliveredCount(reaches: 6))
        await harness.settle()
        try await harness.stop()

        let checkin = try harness.outboxText("P-1.checkin-48h")
        #expect(checkin.contains("Due: 2026-11-27T19:00:00Z"))
        #expect(checkin.contains("Attempt: 1"))
        #expect(checkin.contains("+1 555-010-2030"))
        let store = try harness.store()
        let (_, reminders) = try #require(try await store.procedure("P-1"))
        #expect(reminders.count == 6)
        #expect(reminders.allSatisfy { $0.state == .delivered && $0.attempts == 1 })
        if case .broken(let seq, let reason) = try await store.verifyLog() {
            Issue.record("delivery log chain broken at row \(seq): \(reason)")
        }
        let status = try await store.status(now: harness.clock.now())
        #expect(status.count(.delivered) == 6)
        #expect(status.nextDue == nil)
    }

    @Test("a procedure entered 25 hours late: the 0 h steps expire, the 24 h steps go out now")
    func lateEntry() async throws {
        let harness = try DaemonHarness(start: Self.afternoon)
        harness.start()
        let performed = Self.afternoon.addingTimeInterval(-25 * 3600)
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-late", at: performed))], label: "late")
        #expect(await harness.eventually { harness.outboxFiles().count == 2 })
        await harness.settle()
        #expect(harness.outboxFiles() == ["P-late.checkin-24h", "P-late.resume-activity"])
        try await harness.stop()
        let (_, reminders) = try #require(try await harness.store().procedure("P-late"))
        let states = Dictionary(uniqueKeysWithValues: reminders.map { ($0.stepID, $0.state) })
        #expect(states["ice"] == .expired)
        #expect(states["activity"] == .expired)
        #expect(states["checkin-24h"] == .delivered)
        #expect(states["resume-activity"] == .delivered)
        #expect(states["checkin-48h"] == .scheduled)
        #expect(states["checkin-72h"] == .scheduled)
    }

    @Test("bad spool files go to rejected/ with the reason; good ones in the same pass are ingested")
    func rejectedFiles() async throws {
        let harness = try DaemonHarness(start: Self.afternoon)
        let spool = harness.spool
        try spool.prepare()
        let good = IntakeCodec.encode(.procedure(DaemonHarness.procedure("P-good", at: Self.afternoon)))
        var wrongProtocol = DaemonHarness.procedure("P-proto", at: Self.afternoon)
        wrongProtocol.protocolID = "knee-replacement"
        let bulk = [1, 2, 3].map { IntakeCodec.encode(.procedure(DaemonHarness.procedure("P-bulk-\($0)", at: Self.afternoon))) }
        let files: [(String, Data)] = [
            ("a-good.json", good),
            ("b-not-json.json", Data("{\"procedure_id\": ".utf8)),
            ("c-unknown-field.json", Data(String(decoding: good, as: UTF8.self).replacingOccurrences(
                of: "\"protocol\"", with: "\"diagnosis\":\"x\",\"protocol\"").utf8)),
            ("d-bad-phone.json", Data(String(decoding: good, as: UTF8.self).replacingOccurrences(
                of: "+15551234567", with: "555-1234").replacingOccurrences(of: "P-good", with: "P-phone").utf8)),
            ("e-unknown-protocol.json", IntakeCodec.encode(.procedure(wrongProtocol))),
            ("f-bulk.jsonl", Data((bulk.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "\n") + "\n").utf8)),
            ("g-bulk-bad-line.jsonl", Data((String(decoding: bulk[0], as: UTF8.self).replacingOccurrences(
                of: "P-bulk-1", with: "P-bulk-9") + "\n{\"kind\":\"cancel\"}\n").utf8)),
            ("h-cancel-unknown.json", IntakeCodec.encode(.cancel(procedureID: "P-nope", reason: nil))),
        ]
        for (name, data) in files {
            try data.write(to: spool.incoming.appendingPathComponent(name))
            // Old enough that the daemon will not wait for a writer to finish it.
            let old = Date().addingTimeInterval(-60)
            try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: spool.incoming.appendingPathComponent(name).path)
        }
        harness.start()
        #expect(await harness.eventually { (try? spool.pendingFiles().isEmpty) == true })
        await harness.settle()
        try await harness.stop()

        let rejected = try FileManager.default.contentsOfDirectory(atPath: spool.rejected.path).sorted()
        #expect(rejected == [
            "b-not-json.json", "b-not-json.json.error", "c-unknown-field.json", "c-unknown-field.json.error",
            "d-bad-phone.json", "d-bad-phone.json.error", "e-unknown-protocol.json", "e-unknown-protocol.json.error",
            "g-bulk-bad-line.jsonl", "g-bulk-bad-line.jsonl.error", "h-cancel-unknown.json", "h-cancel-unknown.json.error",
        ])
        func reason(_ name: String) throws -> String {
            try String(contentsOf: spool.rejected.appendingPathComponent(name + ".error"), encoding: .utf8)
        }
        #expect(try reason("b-not-json.json") == "not valid JSON\n")
        #expect(try reason("c-unknown-field.json").contains("unknown field 'diagnosis'"))
        #expect(try reason("d-bad-phone.json").contains("'555-1234' is not an E.164 phone number"))
        #expect(try reason("e-unknown-protocol.json").contains("unknown protocol 'knee-replacement'"))
        #expect(try reason("g-bulk-bad-line.jsonl").hasPrefix("line 2: missing field 'procedure_id'"))
        #expect(try reason("h-cancel-unknown.json") == "procedure P-nope: no such procedure\n")
        let store = try harness.store()
        #expect(try await store.procedure("P-good") != nil)
        for id in ["P-bulk-1", "P-bulk-2", "P-bulk-3"] { #expect(try await store.procedure(id) != nil) }
        for id in ["P-phone", "P-proto", "P-bulk-9"] { #expect(try await store.procedure(id) == nil) }
        #expect(try await store.status(now: Self.afternoon).procedures == 4)
    }

    @Test("shutdown during dispatch: sends under way finish, unsent claims go back, nothing is lost or sent twice")
    func shutdownDuringDispatchLosesNothing() async throws {
        let sender = RecordingSender(delay: .milliseconds(50))
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        try harness.spool.prepare()
        // 40 procedures, 80 reminders due at once, 8 at a time at 50 ms each: about half a second of work.
        let requests = (0..<40).map { IntakeRequest.procedure(DaemonHarness.procedure("P-\($0)", at: Self.afternoon)) }
        try harness.spool.submit(requests, label: "bulk")
        harness.start()
        #expect(await harness.eventually { sender.messages.count >= 10 })
        try await harness.stop()
        let sentBeforeStop = sender.messages.count

        let store = try harness.store()
        let status = try await store.status(now: harness.clock.now())
        #expect(status.count(.claimed) == 0)
        #expect(status.count(.delivered) == sentBeforeStop)
        #expect(status.count(.delivered) + status.count(.scheduled) == 40 * 6)
        #expect(sentBeforeStop < 80)

        // A second run finishes the job without repeating anything.
        let second = try DaemonHarness.restart(harness, sender: sender)
        second.start()
        #expect(await second.eventually { sender.messages.count == 80 })
        await second.settle()
        try await second.stop()
        let ids = sender.messages.map(\.reminderID)
        #expect(Set(ids).count == ids.count)
        #expect(try await store.status(now: harness.clock.now()).count(.delivered) == 80)
    }

    @Test("a retry goes out again after its backoff with the same reminder id, then dies after the last try")
    func retriesThenDead() async throws {
        let sender = RecordingSender { _ in SendResult(.retry(after: nil, reason: "HTTP 503"), responseCode: 503) }
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-r", at: Self.afternoon))], label: "r")
        #expect(await harness.eventually { sender.messages.count == 2 })
        await harness.settle()
        harness.clock.advance(by: 29)
        await harness.settle()
        #expect(sender.messages.count == 2)
        harness.clock.advance(by: 1)
        #expect(await harness.eventually { sender.messages.count == 4 })
        harness.clock.advance(by: 60)
        #expect(await harness.eventually { sender.messages.count == 6 })
        await harness.settle()
        try await harness.stop()
        let ice = sender.messages.filter { $0.stepID == "ice" }
        #expect(ice.map(\.attempt) == [1, 2, 3])
        #expect(Set(ice.map(\.reminderID)) == ["P-r.ice"])
        let (_, reminders) = try #require(try await harness.store().procedure("P-r"))
        #expect(reminders.first { $0.stepID == "ice" }?.state == .dead)
        #expect(reminders.first { $0.stepID == "ice" }?.lastError == "gave up after 3 tries: HTTP 503")
    }

    @Test("a retry that would land in the night waits for it to end, inside a window that skips the night")
    func retriesRespectQuietHours() async throws {
        // 22:55 in New York, quiet from 21:00 to 08:00. The gateway asks to be retried in an hour.
        // Changed with the first-day rule (issue 9): ice and activity are sent at the procedure, so
        // they go out at 22:55 despite quiet hours; the retry at 23:55 falls in the night hours
        // (23:00-06:00) and waits until 06:00. Before, both expired and the patient got no first-day
        // advice at all.
        let evening = Timestamp.parse("2026-11-25T22:55:00-05:00")!
        let newYork = TimeZone(identifier: "America/New_York")!
        let sender = RecordingSender { message in
            message.attempt == 1
                ? SendResult(.retry(after: 3600, reason: "HTTP 429"), responseCode: 429)
                : SendResult(.delivered(detail: "HTTP 204"), responseCode: 204)
        }
        let harness = try DaemonHarness(start: evening, quietHours: ("21:00", "08:00"), makeSender: { _, _, _ in sender })
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-q", at: evening))], label: "q")
        #expect(await harness.eventually { sender.messages.count == 2 })
        await harness.settle()
        let store = try harness.store()
        let (_, reminders) = try #require(try await store.procedure("P-q"))
        let byStep = Dictionary(uniqueKeysWithValues: reminders.map { ($0.stepID, $0) })
        // Five minutes of the 6 h window before the night, 5 h 55 min after it: open until 11:55.
        #expect(byStep["ice"]?.state == .scheduled)
        #expect(byStep["ice"].map { Timestamp.format($0.dueAt, in: newYork) } == "2026-11-26T06:00:00-05:00")
        #expect(byStep["ice"].map { Timestamp.format($0.expiresAt, in: newYork) }
            == "2026-11-26T11:55:00-05:00")
        harness.clock.set(Timestamp.parse("2026-11-26T05:59:00-05:00")!)
        await harness.settle()
        #expect(sender.messages.count == 2)
        harness.clock.set(Timestamp.parse("2026-11-26T06:00:00-05:00")!)
        #expect(await harness.eventually { sender.messages.count == 4 })
        await harness.settle()
        try await harness.stop()
        let log = try await store.auditLog(AuditFilter(procedureID: "P-q", stepID: "ice"))
        #expect(log.map(\.entry.event) == [.attempt, .attempt])
        let (_, after) = try #require(try await store.procedure("P-q"))
        #expect(after.first { $0.stepID == "ice" }?.state == .delivered)
        #expect(after.first { $0.stepID == "activity" }?.state == .delivered)
    }

    @Test("opted-out routes are passed over for the next one, and logged")
    func optOutUsesNextRoute() async throws {
        let sender = RecordingSender()
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        harness.start()
        let routes = [
            ContactRoute(channel: "sms", address: "+15551234567", optedOut: true),
            ContactRoute(channel: "email", address: "ana@example.org"),
        ]
        try harness.spool.submit(
            [.procedure(DaemonHarness.procedure("P-o", at: Self.afternoon, routes: routes))], label: "o")
        #expect(await harness.eventually { sender.messages.count == 2 })
        await harness.settle()
        try await harness.stop()
        #expect(sender.messages.allSatisfy { $0.channel == "email" && $0.address == "ana@example.org" })
    }
}

extension DaemonHarness {
    /// A fresh daemon on the same state folder and clock (as after a restart).
    static func restart(_ old: DaemonHarness, sender: RecordingSender) throws -> DaemonHarness {
        try DaemonHarness(reusing: old, makeSender: { _, _, _ in sender })
    }
}

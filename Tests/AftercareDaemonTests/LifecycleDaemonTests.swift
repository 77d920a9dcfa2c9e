import AftercareCore
import AftercareDaemon
import AftercareStore
import Foundation
import Synchronization
import Testing

@Suite("Appointments, route fallback and waits past the window, in the daemon on a manual clock", .serialized)
struct LifecycleDaemonTests {
    /// Wed 2026-11-25 14:00 in New York (19:00 UTC).
    static let afternoon = Timestamp.parse("2026-11-25T14:00:00-05:00")!

    @Test("a permanent failure on email moves on to the patient's SMS route; the log shows both tries")
    func permanentFailureFallsBackToNextRoute() async throws {
        let sender = RecordingSender { message in
            message.channel == "email"
                ? SendResult(.failed(reason: "550 5.1.1 mailbox unavailable"), responseCode: 550)
                : SendResult(.delivered(detail: "queued"))
        }
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        harness.start()
        let routes = [
            ContactRoute(channel: "email", address: "ana@example.org"),
            ContactRoute(channel: "sms", address: "+15551234567"),
        ]
        try harness.spool.submit(
            [.procedure(DaemonHarness.procedure("P-f", at: Self.afternoon, routes: routes))], label: "f")
        let store = try await harness.openedStore()
        #expect(await harness.deliveredCount(reaches: 2))
        await harness.settle()
        try await harness.stop()
        let rows = try await store.auditLog(AuditFilter(procedureID: "P-f", stepID: "ice", outcome: "attempt"))
        #expect(rows.map(\.entry.channel) == ["email", "sms"])
        #expect(rows.map(\.entry.outcome) == ["failed", "delivered"])
        #expect(rows.first?.entry.detail?.contains("trying sms next") == true)
        let (_, reminders) = try #require(try await store.procedure("P-f"))
        #expect(reminders.filter { $0.stepID == "ice" || $0.stepID == "activity" }.allSatisfy { $0.state == .delivered })
    }

    @Test("when every route fails permanently the reminder is dead, each route tried once")
    func everyRouteFailing() async throws {
        let sender = RecordingSender { _ in SendResult(.failed(reason: "rejected"), responseCode: 400) }
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        harness.start()
        let routes = [
            ContactRoute(channel: "email", address: "ana@example.org"),
            ContactRoute(channel: "sms", address: "+15551234567"),
        ]
        try harness.spool.submit(
            [.procedure(DaemonHarness.procedure("P-d", at: Self.afternoon, routes: routes))], label: "d")
        let store = try await harness.openedStore()
        #expect(await harness.eventually { (try? await store.status(now: harness.clock.now()))?.count(.dead) == 2 })
        await harness.settle()
        try await harness.stop()
        #expect(sender.messages.filter { $0.stepID == "ice" }.map(\.channel) == ["email", "sms"])
    }

    @Test("a gateway asking to wait past the window gets one last try 5 minutes before it closes")
    func retryAfterPastWindowTriesOnceMore() async throws {
        let calls = CallCounter()
        let sender = RecordingSender { message in
            guard message.stepID == "ice", calls.next() == 1 else { return SendResult(.delivered(detail: "ok")) }
            return SendResult(.retry(after: 30000, reason: "HTTP 429"), responseCode: 429)
        }
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-w", at: Self.afternoon))], label: "w")
        let store = try await harness.openedStore()
        // The window of `ice` closes at 20:00 New York time; the last try is at 19:55.
        let lastTry = Timestamp.parse("2026-11-25T19:55:00-05:00")!
        #expect(await harness.eventually {
            (try? await store.procedure("P-w"))?.1.first { $0.stepID == "ice" }.map {
                $0.state == .scheduled && $0.dueAt == lastTry && $0.attempts == 1
            } == true
        })
        harness.clock.set(lastTry)
        #expect(await harness.eventually {
            (try? await store.procedure("P-w"))?.1.first { $0.stepID == "ice" }?.state == .delivered
        })
        await harness.settle()
        try await harness.stop()
    }

    @Test("the last try before the window closes keeps out of quiet hours")
    func lastTryRespectsQuietHours() async throws {
        // An ordinary step (the first-day advice goes out at the procedure whatever the quiet hours):
        // resume-activity is due at +24 h, 14:00 on Thursday, and its 12 h window closes at 02:00.
        let sender = RecordingSender { message in
            message.stepID == "resume-activity"
                ? SendResult(.retry(after: 30000, reason: "HTTP 429"), responseCode: 429)
                : SendResult(.delivered(detail: "ok"))
        }
        let harness = try DaemonHarness(
            start: Self.afternoon, quietHours: ("19:00", "08:00"), makeSender: { _, _, _ in sender })
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-q", at: Self.afternoon))], label: "q")
        let store = try await harness.openedStore()
        #expect(await harness.deliveredCount(reaches: 2))
        harness.clock.set(Self.afternoon.addingTimeInterval(86400))
        // 01:55, five minutes before the window closes, is inside quiet hours: the last try steps back
        // to 18:55, before they begin.
        let lastTry = Timestamp.parse("2026-11-26T18:55:00-05:00")!
        #expect(await harness.eventually {
            (try? await store.procedure("P-q"))?.1.first { $0.stepID == "resume-activity" }?.dueAt == lastTry
        })
        // Asked to wait again at the last try, it expires: the window leaves no room.
        harness.clock.set(lastTry)
        #expect(await harness.eventually {
            (try? await store.procedure("P-q"))?.1.first { $0.stepID == "resume-activity" }?.state == .expired
        })
        await harness.settle()
        try await harness.stop()
        #expect(sender.messages.filter { $0.stepID == "resume-activity" }.count == 2)
    }

    @Test("a booked appointment sends nothing; never confirmed, it is closed after 12 h and never gets aftercare")
    func noShowNeverGetsAftercare() async throws {
        let sender = RecordingSender()
        let harness = try DaemonHarness(start: Self.afternoon, makeSender: { _, _, _ in sender })
        harness.start()
        let store = try await harness.openedStore()
        let planned = Self.afternoon.addingTimeInterval(3600)
        try harness.spool.submit(
            [.book(DaemonHarness.procedure("A-1", at: planned)), .book(DaemonHarness.procedure("A-2", at: planned))],
            label: "book")
        #expect(await harness.eventually { (try? await store.status(now: harness.clock.now()))?.booked == 2 })
        harness.clock.set(planned.addingTimeInterval(600))
        try harness.spool.submit(
            [.performed(procedureID: "A-2", at: planned.addingTimeInterval(300), force: false)], label: "done")
        #expect(await harness.deliveredCount(reaches: 2))
        harness.clock.set(planned.addingTimeInterval(12 * 3600 - 60))
        await harness.settle()
        #expect(try await store.procedure("A-1")?.0.status == "booked")
        harness.clock.set(planned.addingTimeInterval(12 * 3600))
        #expect(await harness.eventually { (try? await store.procedure("A-1"))?.0.status == "not_performed" })
        // A day on, when the performed one's check-in goes out, the no-show still gets nothing.
        harness.clock.set(planned.addingTimeInterval(300 + 86400))
        #expect(await harness.deliveredCount(reaches: 4))
        await harness.settle()
        try await harness.stop()
        #expect(!sender.messages.contains { $0.procedureID == "A-1" })
        #expect(try await store.auditLog(AuditFilter(procedureID: "A-1")).map(\.entry.event) == [.booked, .notPerformed])
    }

    @Test("reschedule to another zone revives steps that expired only for the old zone's quiet hours")
    func rescheduleToAnotherZoneRevivesQuietHourExpiries() async throws {
        let sender = RecordingSender()
        // Quiet from midnight to 13:00: resume-activity's window (+24 h, 12 h long) is 00:30-12:30 in
        // Kolkata, wholly quiet, but 14:00-02:00 in New York, open from its start.
        let harness = try DaemonHarness(
            start: Self.afternoon, quietHours: ("00:00", "13:00"), makeSender: { _, _, _ in sender })
        harness.start()
        // Entered with the wrong zone: 14:00 New York is 00:30 in Kolkata.
        try harness.spool.submit(
            [.procedure(DaemonHarness.procedure("P-z", at: Self.afternoon, zone: "Asia/Kolkata"))], label: "z")
        let store = try await harness.openedStore()
        #expect(await harness.eventually {
            (try? await store.procedure("P-z"))?.1.first { $0.stepID == "resume-activity" }?.state == .expired
        })
        harness.clock.advance(by: 600)
        try harness.spool.submit(
            [.reschedule(procedureID: "P-z", performedAt: nil, timeZone: "America/New_York")], label: "fix")
        #expect(await harness.eventually {
            (try? await store.procedure("P-z"))?.1.first { $0.stepID == "resume-activity" }?.state == .scheduled
        })
        harness.clock.set(Self.afternoon.addingTimeInterval(86400))
        #expect(await harness.eventually { sender.messages.contains { $0.stepID == "resume-activity" } })
        await harness.settle()
        try await harness.stop()
        let (_, reminders) = try #require(try await store.procedure("P-z"))
        #expect(reminders.first { $0.stepID == "resume-activity" }?.state == .delivered)
        #expect(!reminders.contains { $0.lastError?.contains("+05:30") == true })
    }
}

extension DaemonHarness {
    /// The store, once the daemon has created it.
    func openedStore() async throws -> ReminderStore {
        _ = await eventually { (try? store()) != nil }
        return try store()
    }
}

/// Counts calls across tasks.
final class CallCounter: Sendable {
    private let count = Mutex(0)
    func next() -> Int { count.withLock { $0 += 1; return $0 } }
}

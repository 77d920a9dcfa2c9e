import AftercareCore
import AftercareDaemon
import AftercareMetrics
import AftercareTestKit
import Foundation
import GRDB
import Synchronization
import Testing

@Suite("Metrics and health over real HTTP from a running daemon")
struct MetricsEndpointTests {
    /// Wed 2026-11-25 14:00 in New York (19:00 UTC).
    static let afternoon = Timestamp.parse("2026-11-25T14:00:00-05:00")!

    @Test("a delivery shows in the counters, the send-time and lateness histograms and the queue gauges")
    func deliveryIsCounted() async throws {
        let harness = try MetricsHarness(start: Self.afternoon)
        harness.start()
        let address = try #require(await harness.address())
        #expect(address.hasPrefix("127.0.0.1:") && !address.hasSuffix(":0"), "the chosen port is written: \(address)")
        // The two "+0h" steps go out at once, on time.
        try harness.spool.submit([.procedure(MetricsHarness.procedure("P-1", at: Self.afternoon))], label: "one")
        #expect(await harness.eventually { harness.outboxFiles().count == 2 })
        #expect(await harness.eventually {
            let metrics = try? await harness.scrape()
            return metrics?.value("aftercare_attempts_total", ["sender": "outbox", "outcome": "delivered"]) == 2
        })
        // The daemon's clock jumps to two minutes after the 24 h steps fell due: they go out 120 s late.
        harness.clock.set(Self.afternoon.addingTimeInterval(86400 + 120))
        #expect(await harness.eventually { harness.outboxFiles().count == 4 })

        // Outcomes are counted when recorded, gauges at the next refresh (every second here).
        #expect(await harness.eventually {
            let metrics = try? await harness.scrape()
            return metrics?.value("aftercare_reminders", ["state": "delivered"]) == 4
                && metrics?.value("aftercare_attempts_total", ["sender": "outbox", "outcome": "delivered"]) == 4
        })
        let metrics = try await harness.scrape()
        #expect(metrics.value("aftercare_attempts_total", ["sender": "outbox", "outcome": "retry"]) == 0)
        #expect(metrics.value("aftercare_reminder_outcomes_total", ["outcome": "delivered"]) == 4)
        #expect(metrics.value("aftercare_reminder_outcomes_total", ["outcome": "dead"]) == 0)
        #expect(metrics.value("aftercare_send_duration_seconds_count", ["sender": "outbox"]) == 4)
        #expect(metrics.bucket("aftercare_send_duration_seconds", le: 60, ["sender": "outbox"]) == 4)
        // Two on time, two 120 s late: the 60 s bucket holds two, the 300 s one all four.
        #expect(metrics.value("aftercare_lateness_seconds_count") == 4)
        #expect(metrics.bucket("aftercare_lateness_seconds", le: 60) == 2)
        #expect(metrics.bucket("aftercare_lateness_seconds", le: 300) == 4)
        let latenessSum = try #require(metrics.value("aftercare_lateness_seconds_sum"))
        #expect(latenessSum >= 240 && latenessSum < 250, "\(latenessSum)")
        // Two later steps wait; none is due now.
        #expect(metrics.value("aftercare_reminders", ["state": "scheduled"]) == 2)
        #expect(metrics.value("aftercare_reminders", ["state": "dead"]) == 0)
        #expect(metrics.value("aftercare_reminders", ["state": "expired"]) == 0)
        #expect(metrics.value("aftercare_queue_depth") == 0)
        let nextDue = try #require(metrics.value("aftercare_next_due_timestamp_seconds"))
        #expect(nextDue == Self.afternoon.addingTimeInterval(2 * 86400).timeIntervalSince1970)
        #expect(metrics.value("aftercare_last_delivery_timestamp_seconds")
            == Self.afternoon.addingTimeInterval(86400 + 120).timeIntervalSince1970)
        #expect((metrics.value("aftercare_delivery_log_rows") ?? 0) >= 3, "the intake row and two attempts")
        #expect(metrics.value("aftercare_spool_waiting") == 0)
        #expect(metrics.value("aftercare_spool_rejected") == 0)
        #expect(metrics.value("aftercare_audit_chain_ok") == 1)
        #expect(metrics.value("aftercare_pipeline_stalled") == 0)

        let health = try await harness.get("/health")
        #expect(health.status == 200, "\(health.body)")
        #expect(health.body.hasPrefix("ok: "))

        // A file the daemon refuses shows as rejected.
        try "not json".write(toFile: harness.state + "/spool/incoming/broken.json", atomically: true, encoding: .utf8)
        #expect(await harness.eventually {
            (try? await harness.scrape())?.value("aftercare_spool_rejected") == 1
        })
        try await harness.stop()
        #expect(!FileManager.default.fileExists(atPath: harness.state + "/" + MetricsEndpoint.addressFile))
    }

    @Test("/health answers 503 with the reason while the store is locked, and 200 again once it is free")
    func healthFollowsTheStore() async throws {
        let harness = try MetricsHarness(start: Self.afternoon)
        harness.start()
        try harness.spool.submit([.procedure(MetricsHarness.procedure("P-lock", at: Self.afternoon))], label: "lock")
        #expect(await harness.eventually { harness.outboxFiles().count == 2 })
        #expect(await harness.eventually { (try? await harness.get("/health"))?.status == 200 })

        // Another process takes the write lock and keeps it, from a thread of its own; then the
        // 24 h reminders fall due and the claim waits out SQLite's busy timeout (10 s) and fails.
        let holder = try WriteLockHolder(path: harness.database)
        // The pause after a store error and the watchdog run on the daemon's clock: let it keep real time.
        let time = harness.clock.followRealTime()
        defer { time.cancel() }
        try await Task.sleep(for: .milliseconds(200))
        harness.clock.set(Self.afternoon.addingTimeInterval(86400))
        var stuck: (status: Int, body: String)?
        let sawStuck = await harness.eventually(timeout: 20) {
            stuck = try? await harness.get("/health")
            return stuck?.status == 503
        }
        #expect(sawStuck, "\(stuck.map { "\($0.status) \($0.body)" } ?? "no answer")")
        let body = stuck?.body ?? ""
        #expect(body.hasPrefix("stuck: the store has been failing for "), "\(body)")
        #expect(body.hasSuffix("\n") && body.dropLast().split(separator: "\n").count == 1, "one line: \(body)")
        #expect(await harness.eventually(timeout: 5) {
            (try? await harness.scrape())?.value("aftercare_pipeline_stalled") == 1
        })

        holder.release()
        #expect(await harness.eventually { holder.released })
        #expect(await harness.eventually(timeout: 15) { harness.outboxFiles().count == 4 })
        var after: (status: Int, body: String)?
        #expect(await harness.eventually(timeout: 10) {
            after = try? await harness.get("/health")
            return after?.status == 200
        }, "\(after.map { "\($0.status) \($0.body)" } ?? "no answer")")
        #expect(await harness.eventually(timeout: 5) {
            (try? await harness.scrape())?.value("aftercare_pipeline_stalled") == 0
        })
        try await harness.stop()
    }

    @Test("a port already taken stops start-up with a one-line error naming the address")
    func portTaken() async throws {
        let first = try MetricsHarness(start: Self.afternoon)
        first.start()
        let address = try #require(await first.address())
        let second = try MetricsHarness(start: Self.afternoon, metricsSection: "listen = \"\(address)\"")
        second.start()
        // The group shuts down gracefully (the daemon with it, whether or not it got going) and
        // reports the listener's error.
        var failure: (any Error)?
        do {
            let ended = try await second.exit(timeout: 20)
            #expect(ended, "the daemon keeps running after its listener failed")
        } catch {
            failure = error
        }
        let message = failure.map { "\($0)" } ?? ""
        #expect(message.contains("cannot serve metrics on \(address)"), "\(message)")
        #expect(!message.contains("\n"))
        try await first.stop()
    }
}

import AftercareCore
@testable import AftercareDaemon
import AftercareStore
import AftercareTestKit
import Foundation
import GRDB
import Synchronization
import Testing

@Suite("Storage faults: the daemon reports them, stops feeding the watchdog, and recovers by itself")
struct StorageFaultTests {
    /// Wed 2026-11-25 14:00 in New York (19:00 UTC).
    static let afternoon = Timestamp.parse("2026-11-25T14:00:00-05:00")!

    @Test("two tasks waiting at once are both woken by one signal")
    func everyWaiterWakes() async throws {
        let wakeup = Wakeup()
        let clock = ManualClock(Self.afternoon)
        let first = Task { await wakeup.wait(until: nil, realTimeLimit: nil, clock: clock) }
        let second = Task { await wakeup.wait(until: nil, realTimeLimit: nil, clock: clock) }
        let deadline = ContinuousClock.now + .seconds(5)
        while wakeup.waiterCount < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(wakeup.waiterCount == 2)
        wakeup.signal(.spool)
        // Before the fix the first waiter's continuation was overwritten by the second: it never returned.
        let both = await Self.within(.seconds(5)) {
            await first.value
            await second.value
        }
        #expect(both)
        #expect(wakeup.waiterCount == 0)
    }

    @Test("cancelling one waiter leaves the other waiting for its signal")
    func cancellingOneWaiterKeepsTheOther() async throws {
        let wakeup = Wakeup()
        let clock = ManualClock(Self.afternoon)
        let woken = Mutex(0)
        let cancelled = Task {
            await wakeup.wait(until: nil, realTimeLimit: nil, clock: clock)
        }
        let waiting = Task {
            await wakeup.wait(until: nil, realTimeLimit: nil, clock: clock)
            woken.withLock { $0 += 1 }
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while wakeup.waiterCount < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        cancelled.cancel()
        await cancelled.value
        try await Task.sleep(for: .milliseconds(100))
        #expect(woken.withLock { $0 } == 0)
        #expect(wakeup.waiterCount == 1)
        wakeup.signal(.spool)
        #expect(await Self.within(.seconds(5)) { await waiting.value })
        #expect(woken.withLock { $0 } == 1)
    }

    @Test("a database locked by another process: no sends, no watchdog pings; afterwards delivery resumes")
    func lockedDatabaseRecovers() async throws {
        let notifier = RecordingNotifier(watchdogInterval: .milliseconds(100))
        let harness = try DaemonHarness(start: Self.afternoon, notifier: notifier)
        // The pause after a store error and the watchdog run on the daemon's clock: let it keep real time.
        let time = harness.clock.followRealTime()
        defer { time.cancel() }
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-lock", at: Self.afternoon))], label: "lock")
        #expect(await harness.eventually { harness.outboxFiles().count == 2 })
        #expect(await harness.deliveredCount(reaches: 2))
        await harness.settle()

        // Another process takes the write lock and keeps it; then the 24 h reminders fall due.
        let holder = try WriteLockHolder(path: harness.state + "/aftercare.sqlite")
        try await Task.sleep(for: .milliseconds(200))
        harness.clock.set(Self.afternoon.addingTimeInterval(86400))
        // A procedure arrives meanwhile: intake cannot store it either, and keeps the file.
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-during", at: Self.afternoon.addingTimeInterval(86400)))], label: "during")
        // The claim waits out SQLite's busy timeout (10 s), fails, and the pipeline pauses.
        #expect(await harness.eventually(timeout: 30) {
            notifier.statusLines.contains { $0.hasPrefix("STORE FAILING") }
        }, "\(notifier.statusLines)")
        let pingsDuringFault = notifier.pingCount
        try await Task.sleep(for: .seconds(1))
        #expect(notifier.pingCount == pingsDuringFault, "the watchdog is still fed while the store fails")
        #expect(harness.outboxFiles().count == 2)
        #expect(try harness.spool.pendingFiles().count == 1, "the file must wait in incoming/ while the store fails")

        holder.release()
        #expect(await harness.eventually { holder.released })
        // Recovery without a restart: the 24 h reminders go out within the retry pause.
        // The file that waited is ingested and its first-day reminders go out too.
        #expect(await harness.eventually(timeout: 20) { harness.outboxFiles().count == 6 })
        #expect(await harness.deliveredCount(reaches: 6))
        #expect(await harness.eventually { !(notifier.statusLines.last ?? "").contains("FAILING") })
        let pingsAfter = notifier.pingCount
        #expect(await harness.eventually(timeout: 5) { notifier.pingCount > pingsAfter })

        // And it still stops when asked.
        #expect(await Self.within(.seconds(10)) { try? await harness.stop() })
        let store = try harness.store()
        let (_, reminders) = try #require(try await store.procedure("P-lock"))
        #expect(reminders.filter { $0.state == .delivered }.count == 4)
        #expect(try await store.procedure("P-during") != nil)
        if case .broken(let seq, let reason) = try await store.verifyLog() {
            Issue.record("delivery log chain broken at row \(seq): \(reason)")
        }
    }

    @Test("the disk fills while sends are under way: clear error, recovery once space returns, nothing lost")
    func fullDiskRecovers() async throws {
        let notifier = RecordingNotifier(watchdogInterval: .milliseconds(100))
        let sender = RecordingSender(delay: .milliseconds(150))
        let harness = try DaemonHarness(
            start: Self.afternoon, notifier: notifier, makeSender: { _, _, _ in sender })
        guard Self.mountTmpfs(at: harness.state, megabytes: 4) else {
            // Mounting needs root (CI runs as root); say so instead of passing silently.
            Issue.record("cannot mount a tmpfs at \(harness.state): this test needs root")
            return
        }
        defer { Self.unmount(harness.state) }
        // The pause after a store error and the watchdog run on the daemon's clock: let it keep real time.
        let time = harness.clock.followRealTime()
        defer { time.cancel() }
        harness.start()
        let procedures = (1...60).map { IntakeRequest.procedure(DaemonHarness.procedure("P-\($0)", at: Self.afternoon)) }
        try harness.spool.submit(procedures, label: "batch")
        // Fill the disk while the 120 first-day reminders are being sent, eight at a time.
        #expect(await harness.eventually { sender.messages.count >= 16 })
        let filler = harness.state + "/filler"
        Self.fill(filler)
        try await Task.sleep(for: .seconds(2))
        let pingsDuringFault = notifier.pingCount
        try await Task.sleep(for: .seconds(1))
        #expect(notifier.pingCount == pingsDuringFault, "the watchdog is still fed while the store fails")

        unlink(filler)
        // Recovery without a restart: every reminder ends delivered, each sent under its own id
        // (a repeat after the fault is allowed only under the same id).
        let store = try harness.store()
        #expect(await harness.eventually(timeout: 30) {
            (try? await store.status(now: harness.clock.now()))?.count(.delivered) == 120
        })
        let sentIDs = Set(sender.messages.map(\.reminderID))
        #expect(sentIDs.count == 120)
        let pingsAfter = notifier.pingCount
        #expect(await harness.eventually(timeout: 5) { notifier.pingCount > pingsAfter })
        #expect(await Self.within(.seconds(10)) { try? await harness.stop() }, "SIGTERM after the fault hangs")

        let check = try DatabaseQueue(path: harness.state + "/aftercare.sqlite")
        let integrity = try await check.read { try String.fetchOne($0, sql: "PRAGMA integrity_check") }
        #expect(integrity == "ok")
        if case .broken(let seq, let reason) = try await store.verifyLog() {
            Issue.record("delivery log chain broken at row \(seq): \(reason)")
        }
    }

    /// Runs `body`, returning false if it did not finish within `limit` (without waiting for it: a
    /// hung body must fail the test, not hang it).
    static func within(_ limit: Duration, _ body: @escaping @Sendable () async -> Void) async -> Bool {
        let finished = Mutex(false)
        let task = Task {
            await body()
            finished.withLock { $0 = true }
        }
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if finished.withLock({ $0 }) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        task.cancel()
        return finished.withLock { $0 }
    }

    static func mountTmpfs(at path: String, megabytes: Int) -> Bool {
        guard getuid() == 0 else { return false }
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", path]) == 0
    }

    static func unmount(_ path: String) {
        _ = run("/bin/umount", ["-l", path])
    }

    /// Writes zeros until the filesystem refuses more.
    static func fill(_ path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        // Top up the last few bytes, so not even a small page fits.
        var byte: UInt8 = 0
        while write(fd, &byte, 1) == 1 {}
    }

    static func run(_ executable: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        do {
            try process.run()
            process.waitUntilExit()
            return process.terminationStatus
        } catch {
            return -1
        }
    }
}

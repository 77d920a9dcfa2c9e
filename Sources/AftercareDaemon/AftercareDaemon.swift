import AftercareConfig
import AftercareCore
import AftercareDelivery
import AftercareStore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// Builds the sender for one configured sender entry.
public typealias SenderMaker = @Sendable (_ name: String, _ settings: SenderSettings, _ config: AftercareConfiguration)
    throws -> any Sender

/// The scheduler service: ingests the spool, sleeps until the next due reminder (or a new file, a
/// reload, a shutdown), claims due reminders in batches under a lease, delivers them through their
/// senders with bounded concurrency, and records every outcome with its log row.
///
/// Run it in a `ServiceGroup` with SIGTERM as a graceful-shutdown signal: it then stops claiming,
/// lets sends already under way finish, puts claimed-but-unsent reminders back as they were, and
/// returns.
public final class AftercareDaemon: Service, Sendable {
    private let configPath: String
    private let clock: any WallClock
    private let logger: Logger
    private let notifier: any ServiceManagerNotifier
    private let makeSender: SenderMaker
    private let wakeup = Wakeup()
    private let shuttingDown = Mutex(false)
    private let runtime: Mutex<Runtime?> = Mutex(nil)
    private let handlesSIGHUP: Bool

    /// - Parameters:
    ///   - configPath: the TOML configuration to load (and re-load on SIGHUP).
    ///   - clock: the time source; tests pass a ``ManualClock``.
    ///   - notifier: the service manager to tell about readiness, status and liveness.
    ///   - makeSender: builds senders from their settings; tests may substitute their own.
    ///   - handlesSIGHUP: trap SIGHUP to reload (off in tests that run several daemons in one process).
    public init(
        configPath: String,
        clock: any WallClock = SystemClock(),
        logger: Logger,
        notifier: any ServiceManagerNotifier = SilentNotifier(),
        handlesSIGHUP: Bool = true,
        makeSender: @escaping SenderMaker
    ) {
        self.configPath = configPath
        self.clock = clock
        self.logger = logger
        self.notifier = notifier
        self.handlesSIGHUP = handlesSIGHUP
        self.makeSender = makeSender
    }

    /// Asks a running daemon to re-read its configuration, as SIGHUP does.
    public func requestReload() { wakeup.signal(.reload) }

    /// Asks a running daemon to stop, as graceful shutdown does.
    public func requestShutdown() {
        let first = shuttingDown.withLock { flag -> Bool in
            defer { flag = true }
            return !flag
        }
        if first { notifier.stopping(status: "stopping: finishing deliveries under way") }
        wakeup.signal(.shutdown)
    }

    public func run() async throws {
        let config: AftercareConfiguration
        do {
            config = try AftercareConfiguration.load(path: configPath)
        } catch {
            throw DaemonError("\(error)")
        }
        let current = try buildRuntime(config)
        runtime.withLock { $0 = current }
        let lock = try StateLock(directory: config.paths.stateDirectory)
        defer { lock.release() }
        let store = try ReminderStore(path: config.paths.database)
        let spool = Spool(root: config.paths.spool)
        do {
            try spool.prepare()
        } catch {
            throw DaemonError("cannot prepare spool \(config.paths.spool): \(error)")
        }
        let recovered = try await store.recoverClaims(now: clock.now(), all: true)
        if recovered > 0 { logger.notice("returned \(recovered) claimed reminder(s) from an earlier run to the queue") }
        let watcher = try SpoolWatcher(folder: spool.incoming.path) { [wakeup] in wakeup.signal(.spool) }
        defer { watcher.stop() }
        let firstRetryAt = await ingestSpool(spool: spool, store: store)
        logger.info(
            "aftercare ready",
            metadata: [
                "database": "\(config.paths.database)", "spool": "\(config.paths.spool)",
                "senders": "\(config.senders.keys.sorted().joined(separator: ","))",
            ]
        )
        notifier.ready(status: try? await statusLine(store))

        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                if handlesSIGHUP {
                    group.addTask { [wakeup] in
                        for await _ in await UnixSignalsSequence(trapping: .sighup) { wakeup.signal(.reload) }
                    }
                }
                group.addTask {
                    try await self.loop(store: store, spool: spool, spoolRetryAt: firstRetryAt)
                }
                try await group.next()
                group.cancelAll()
            }
        } onGracefulShutdown: { [self] in
            requestShutdown()
        }
        for sender in runtime.withLock({ $0?.senders.values.map { $0 } ?? [] }) { await sender.shutdown() }
        logger.info("aftercare stopped")
    }

    private var isShuttingDown: Bool { shuttingDown.withLock { $0 } }

    private func loop(store: ReminderStore, spool: Spool, spoolRetryAt firstRetryAt: Date?) async throws {
        var spoolRetryAt = firstRetryAt
        var lastStatus = ContinuousClock.now - .seconds(60)
        while true {
            notifier.watchdogPing()
            let reasons = wakeup.take()
            if isShuttingDown || reasons.contains(.shutdown) { return }
            if reasons.contains(.reload) { await reload(store: store) }
            let now = clock.now()
            if reasons.contains(.spool) || (spoolRetryAt.map { $0 <= now } ?? false) {
                spoolRetryAt = await ingestSpool(spool: spool, store: store)
            }
            guard let current = runtime.withLock({ $0 }) else { return }
            let dispatch = current.config.dispatch
            do {
                if let lapse = try await store.nextLeaseExpiry(), lapse <= now {
                    let count = try await store.recoverClaims(now: now)
                    if count > 0 { logger.warning("returned \(count) reminder(s) with lapsed leases to the queue") }
                }
                let claimed = try await store.claimDue(
                    now: now, limit: dispatch.batchSize, leaseSeconds: dispatch.leaseSeconds)
                if !claimed.isEmpty {
                    await process(claimed, runtime: current, store: store)
                    if ContinuousClock.now - lastStatus > .seconds(5) {
                        lastStatus = .now
                        if let line = try? await statusLine(store) { notifier.status(line) }
                    }
                    continue
                }
                if ContinuousClock.now - lastStatus > .seconds(5) {
                    lastStatus = .now
                    if let line = try? await statusLine(store) { notifier.status(line) }
                }
                let deadlines = [try await store.nextDueTime(), try await store.nextLeaseExpiry(), spoolRetryAt]
                let deadline = deadlines.compactMap { $0 }.min()
                await wakeup.wait(until: deadline, realTimeLimit: notifier.watchdogInterval, clock: clock)
            } catch {
                // A database error (a full disk, a lock held too long): claims will lapse and come back.
                logger.error("dispatch failed, retrying in 5 s: \(error)")
                await wakeup.wait(
                    until: clock.now().addingTimeInterval(5), realTimeLimit: notifier.watchdogInterval, clock: clock)
            }
        }
    }

    /// Sends a claimed batch with bounded concurrency and records every outcome in one transaction.
    /// Once shutdown begins no new send starts; the unsent are released back to the queue as they were.
    private func process(_ claimed: [ClaimedReminder], runtime: Runtime, store: ReminderStore) async {
        let dispatcher = Dispatcher(runtime: runtime, clock: clock, logger: logger)
        let limit = max(1, runtime.config.dispatch.maxConcurrent)
        let grace = runtime.config.dispatch.shutdownGrace
        let sending = Task { await self.send(claimed, dispatcher: dispatcher, limit: limit) }
        // Once shutdown begins, sends under way get the grace period; then they are abandoned and
        // their reminders go back to the queue as they were (a send may repeat; none is lost).
        let deadline = Task {
            while !self.isShuttingDown { try await Task.sleep(for: .milliseconds(100)) }
            try await Task.sleep(for: .seconds(grace))
            sending.cancel()
        }
        let outcomes = await sending.value
        deadline.cancel()
        var tally: [String: Int] = [:]
        for (_, resolution) in outcomes { tally[Self.label(resolution), default: 0] += 1 }
        do {
            let fenced = try await store.record(outcomes, now: clock.now())
            if fenced > 0 { logger.warning("\(fenced) outcome(s) arrived after their lease lapsed; logged, not applied") }
        } catch {
            // Not recorded: the leases lapse and the reminders come back (at-least-once, never lost).
            logger.error("cannot record \(outcomes.count) outcome(s): \(error); they will be retried when their lease lapses")
        }
        logger.info(
            "dispatched \(outcomes.count) reminder(s)",
            metadata: tally.mapValues { Logger.MetadataValue.stringConvertible($0) }
        )
    }

    /// Resolves a batch with at most `limit` sends under way. After shutdown begins no new send
    /// starts; when cancelled, unfinished sends come back as released.
    private func send(_ claimed: [ClaimedReminder], dispatcher: Dispatcher, limit: Int) async
        -> [(ClaimedReminder, Resolution)]
    {
        var outcomes: [(ClaimedReminder, Resolution)] = []
        outcomes.reserveCapacity(claimed.count)
        await withTaskGroup(of: (ClaimedReminder, Resolution).self) { group in
            var pending = claimed.makeIterator()
            var inFlight = 0
            func startNext() {
                while inFlight < limit, let reminder = pending.next() {
                    if isShuttingDown || Task.isCancelled {
                        outcomes.append((reminder, .released))
                        continue
                    }
                    inFlight += 1
                    group.addTask {
                        let resolution = await dispatcher.resolve(reminder)
                        return (reminder, Task.isCancelled ? .released : resolution)
                    }
                }
            }
            startNext()
            while let outcome = await group.next() {
                inFlight -= 1
                outcomes.append(outcome)
                startNext()
            }
        }
        return outcomes
    }

    private static func label(_ resolution: Resolution) -> String {
        switch resolution {
        case .attempted(let attempt, _):
            switch attempt.result.outcome {
            case .delivered: return "delivered"
            case .retry: return "retry"
            case .failed: return "failed"
            }
        case .expired: return "expired"
        case .deferred: return "deferred"
        case .skipped: return "skipped"
        case .dead: return "dead"
        case .released: return "released"
        }
    }

    /// Ingests what waits in the spool. Returns when to look again without an inotify event (a file
    /// that looked half-written, or a database error), if ever.
    private func ingestSpool(spool: Spool, store: ReminderStore) async -> Date? {
        guard let current = runtime.withLock({ $0 }) else { return nil }
        let intake = Intake(spool: spool, store: store, config: current.config, clock: clock, logger: logger)
        return await intake.run()
    }

    private func reload(store: ReminderStore) async {
        notifier.reloading(status: "reloading configuration")
        logger.notice("reloading configuration from \(configPath)")
        do {
            let config: AftercareConfiguration
            do {
                config = try AftercareConfiguration.load(path: configPath)
            } catch {
                throw DaemonError("\(error)")
            }
            let old = runtime.withLock { $0 }
            if let old, old.config.paths != config.paths {
                logger.warning("[paths] changed: the new paths take effect only after a restart")
            }
            let fresh = try buildRuntime(config)
            runtime.withLock { $0 = fresh }
            for sender in old?.senders.values.map({ $0 }) ?? [] { await sender.shutdown() }
            try? await store.logEvent(
                LogEntry(
                    at: clock.now(), event: .configReloaded,
                    detail: "\(configPath): \(config.protocols.count) protocol(s), senders "
                        + config.senders.keys.sorted().joined(separator: ", ")
                )
            )
            logger.notice("configuration reloaded")
            notifier.ready(status: (try? await statusLine(store)) ?? "configuration reloaded")
        } catch {
            logger.error("reload refused, keeping the running configuration: \(error)")
            notifier.ready(status: "reload refused: \(error); running with the previous configuration")
        }
    }

    private func buildRuntime(_ config: AftercareConfiguration) throws -> Runtime {
        var senders: [String: any Sender] = [:]
        for (name, settings) in config.senders {
            do {
                senders[name] = try makeSender(name, settings, config)
            } catch {
                throw DaemonError("sender '\(name)': \(error)")
            }
        }
        return Runtime(config: config, senders: senders)
    }

    private func statusLine(_ store: ReminderStore) async throws -> String {
        let status = try await store.status(now: clock.now())
        var line = "scheduled \(status.count(.scheduled)), due \(status.dueNow), retrying \(status.retrying), "
            + "dead \(status.count(.dead)), expired \(status.count(.expired))"
        if let last = status.lastDelivery {
            line += ", last delivery \(Timestamp.format(last, in: .gmt))"
        }
        return line
    }
}

/// A daemon start-up or run failure, as one line.
public struct DaemonError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One daemon per state folder: an exclusive `flock` on `aftercare.lock`, released at exit (or by
/// the kernel when the process dies, so kill -9 never leaves a stale lock).
final class StateLock: Sendable {
    private let fd: Int32

    init(directory: String) throws {
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/aftercare.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw DaemonError("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw DaemonError("another aftercare daemon is already running on \(directory)")
        }
        self.fd = fd
    }

    func release() {
        flock(fd, LOCK_UN)
        close(fd)
    }
}

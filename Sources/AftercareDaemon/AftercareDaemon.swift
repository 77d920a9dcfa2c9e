import AftercareConfig
import AftercareCore
import AftercareDelivery
import AftercareMetrics
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
    private let metrics: DaemonMetrics
    private let wakeup = Wakeup()
    private let intakeWakeup = Wakeup()
    private let shuttingDown = Mutex(false)
    private let runtime: Mutex<Runtime?> = Mutex(nil)
    private let trouble = Mutex(Trouble())
    private let handlesSIGHUP: Bool
    /// When the log head was last written to the journal.
    private let lastWitness: Mutex<Date?> = Mutex(nil)

    /// - Parameters:
    ///   - configPath: the TOML configuration to load (and re-load on SIGHUP).
    ///   - clock: the time source; tests pass a ``ManualClock``.
    ///   - notifier: the service manager to tell about readiness, status and liveness.
    ///   - makeSender: builds senders from their settings; tests may substitute their own.
    ///   - handlesSIGHUP: trap SIGHUP to reload (off in tests that run several daemons in one process).
    ///   - metrics: where outcomes and progress are counted (default: swift-metrics' global backend).
    public init(
        configPath: String,
        clock: any WallClock = SystemClock(),
        logger: Logger,
        notifier: any ServiceManagerNotifier = SilentNotifier(),
        handlesSIGHUP: Bool = true,
        metrics: DaemonMetrics = DaemonMetrics(),
        makeSender: @escaping SenderMaker
    ) {
        self.configPath = configPath
        self.clock = clock
        self.logger = logger
        self.notifier = notifier
        self.handlesSIGHUP = handlesSIGHUP
        self.makeSender = makeSender
        self.metrics = metrics
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
        intakeWakeup.signal(.shutdown)
    }

    public func run() async throws {
        HeapTrim.limitArenas()
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
        await witnessStore(store, force: true)
        let watcher = try SpoolWatcher(folder: spool.incoming.path) { [intakeWakeup] in intakeWakeup.signal(.spool) }
        defer { watcher.stop() }
        let firstRetryAt = await ingestSpool(spool: spool, store: store)
        logger.notice(
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
                    await self.intakeLoop(
                        store: store, spool: spool, watcher: watcher, retryPending: firstRetryAt != nil)
                }
                group.addTask {
                    try await self.dispatchLoop(store: store)
                }
                // Both loops end on shutdown; the SIGHUP listener is cancelled then.
                try await group.next()
                try await group.next()
                group.cancelAll()
            }
        } onGracefulShutdown: { [self] in
            requestShutdown()
        }
        for sender in runtime.withLock({ $0?.senders.values.map { $0 } ?? [] }) { await sender.shutdown() }
        logger.notice("aftercare stopped")
    }

    private var isShuttingDown: Bool { shuttingDown.withLock { $0 } }

    /// One event in the dispatch pipeline: a send resolved, or the ticker saying "look again"
    /// (something was signalled, a due time or lease expiry came, or outcomes wait to be recorded).
    private enum PipelineEvent: Sendable {
        case resolved(ClaimedReminder, Resolution)
        /// A group of outcomes was written; `unwritten` holds it back when the store refused it.
        case recorded(unwritten: [(ClaimedReminder, Resolution)])
        case tick
    }

    /// How long the pipeline waits before it tries the store again after an error.
    static let storageRetry = Duration.seconds(5)

    /// Picks the spool up whenever inotify says something arrived, independently of delivery, so a
    /// slow receiver never holds back intake. On every wake-up, and at least every
    /// ``Intake/folderCheckSeconds``, it makes sure the spool folders are there and watched: a
    /// removed or replaced `incoming/` is recreated, watched again and read, without a restart.
    private func intakeLoop(store: ReminderStore, spool: Spool, watcher: SpoolWatcher, retryPending first: Bool) async {
        var retryPending = first
        var lastProblem: String?
        let sweep = AppointmentSweep(store: store, clock: clock, logger: logger)
        while true {
            let reasons = intakeWakeup.take()
            if isShuttingDown || reasons.contains(.shutdown) { return }
            var restored = false
            switch watcher.ensureWatching(spool) {
            case .intact:
                trouble.withLock { $0.spool = nil }
                if lastProblem != nil {
                    logger.notice("spool folders are back: intake resumes")
                    restored = true
                }
                lastProblem = nil
            case .restored(let what):
                trouble.withLock { $0.spool = nil }
                logger.error("\(what)")
                lastProblem = nil
                restored = true
            case .broken(let problem):
                trouble.withLock { $0.spool = problem }
                // Said once per distinct problem, not at every check; looked at again soon, as a
                // removal still under way (rm -rf) can race the recreation.
                if problem != lastProblem {
                    logger.error("spool unusable, intake stopped until it is mended: \(problem)")
                }
                lastProblem = problem
            }
            if lastProblem == nil && (reasons.contains(.spool) || retryPending || restored) {
                retryPending = await ingestSpool(spool: spool, store: store) != nil
                wakeup.signal(.spool)
            }
            let pause = lastProblem != nil ? Intake.folderRetrySeconds
                : retryPending ? Intake.settleSeconds : Intake.folderCheckSeconds
            let closing = await sweep.run(settings: runtime.withLock { $0?.config.appointments } ?? .init())
            await intakeWakeup.wait(until: closing, realTimeLimit: .seconds(pause), clock: clock)
        }
    }

    /// The dispatch pipeline. Up to `max_concurrent` sends are under way at once; as they finish,
    /// more due reminders are claimed (in batches, under a lease) and outcomes are recorded in
    /// groups, one group at a time, while the sends go on. Between times the pipeline sleeps until
    /// the next due time, a lease expiry, or a signal. The watchdog is pinged from here, so a stalled
    /// pipeline trips it.
    private func dispatchLoop(store: ReminderStore) async throws {
        var lastStatus = ContinuousClock.now - .seconds(60)
        var finished: [(ClaimedReminder, Resolution)] = []
        var firstUnrecorded: ContinuousClock.Instant?
        var inFlight = 0
        var tickerRunning = false
        var dueExhausted = false
        var graceDeadline: ContinuousClock.Instant?
        var ticked = true
        var nextLeaseCheck = ContinuousClock.now
        let flushEvery = Duration.milliseconds(20)

        var recording = false
        var recoveryWanted = false
        // Set while the store refuses work (a full disk, an I/O error, a lock held by another
        // process): the pipeline tries again after a pause and, meanwhile, stops feeding the watchdog,
        // so a fault that never clears ends in a restart by systemd instead of a daemon that only
        // looks alive.
        var storageFailingSince: ContinuousClock.Instant?
        var lastPing = ContinuousClock.now
        var storageRetryAt: ContinuousClock.Instant?
        // Outcomes the store refused are waiting to be written: only writing them clears the fault.
        var outcomesRefused = false
        func storageFailed(_ what: String, _ error: any Error) {
            trouble.withLock { $0.dispatchStore = "\(what): \(error)" }
            lastStatus = .now - .seconds(60)  // say so in the status line at once
            metrics.storageFailing("\(what): \(error)")
            if storageFailingSince == nil {
                storageFailingSince = .now
                logger.error("\(what) failed: \(error); retrying every \(Self.storageRetry), watchdog paused")
            } else {
                logger.warning("\(what) still failing: \(error)")
            }
            storageRetryAt = .now + Self.storageRetry
        }
        func storageWorked() {
            if trouble.withLock({ $0.dispatchStore }) != nil { lastStatus = .now - .seconds(60) }
            trouble.withLock { $0.dispatchStore = nil }
            metrics.storageWorks()
            if let since = storageFailingSince {
                logger.notice("the store works again after \(ContinuousClock.now - since); delivery resumes")
            }
            storageFailingSince = nil
            storageRetryAt = nil
        }
        var storagePaused: Bool {
            guard let retryAt = storageRetryAt else { return false }
            return ContinuousClock.now < retryAt
        }

        /// Records the outcomes in hand as one group, in a child task, so sends and claims go on
        /// meanwhile; the next group waits until this one is written.
        func startRecording(_ group: inout ThrowingTaskGroup<PipelineEvent, any Error>) {
            guard !recording, !finished.isEmpty, !storagePaused else { return }
            let outcomes = finished
            finished.removeAll(keepingCapacity: true)
            firstUnrecorded = nil
            recording = true
            group.addTask { [self] in
                // Not cancelled with the sends when the grace period ends: the outcomes must land.
                let written = await Task { await self.record(outcomes, store: store) }.value
                return .recorded(unwritten: written ? [] : outcomes)
            }
        }

        try await withThrowingTaskGroup(of: PipelineEvent.self) { group in
            while true {
                // Fed only while the pipeline can make progress: neither dispatch nor intake has the
                // store refusing its work.
                let intakeStoreFailing = trouble.withLock { $0.intakeStore != nil }
                if storageFailingSince == nil && !intakeStoreFailing {
                    notifier.watchdogPing()
                    lastPing = .now
                }
                metrics.pipelineTurned()
                guard let current = runtime.withLock({ $0 }) else { return }
                let dispatch = current.config.dispatch
                let limit = max(1, dispatch.maxConcurrent)
                let reasons = wakeup.take()
                if !reasons.isEmpty { dueExhausted = false }
                if reasons.contains(.reload) && !isShuttingDown { await reload(store: store) }
                let stopping = isShuttingDown || reasons.contains(.shutdown)
                if stopping && graceDeadline == nil {
                    graceDeadline = .now + .seconds(dispatch.shutdownGrace)
                }
                if let deadline = graceDeadline, ContinuousClock.now >= deadline, inFlight > 0 {
                    // The grace period is over: abandon the sends still under way; they come back
                    // as released and stay due.
                    group.cancelAll()
                }
                if let deadline = graceDeadline, ContinuousClock.now >= deadline, inFlight == 0, !recording,
                    storageFailingSince != nil
                {
                    // Stopping, and the store still refuses the outcomes in hand: they cannot be
                    // kept. Their claims come back at the next start (at-least-once, never lost).
                    logger.error("stopping with \(finished.count) outcome(s) unrecorded: the store still fails")
                    group.cancelAll()
                    return
                }
                let now = clock.now()

                if !stopping && !storagePaused {
                    var usedStore = false
                    do {
                        // Leases last minutes: look for lapsed ones when the ticker fires (a due time,
                        // a signal, the clock moving) and otherwise at most once a second, not after
                        // every finished send.
                        let checkLeases = ticked || ContinuousClock.now >= nextLeaseCheck
                        if checkLeases {
                            nextLeaseCheck = .now + .seconds(1)
                            ticked = false
                        }
                        if checkLeases {
                            usedStore = true
                            if let lapse = try await store.nextLeaseExpiry(), lapse <= now { recoveryWanted = true }
                        }
                        if recoveryWanted {
                            // Outcomes already in hand belong to live claims: they are recorded before
                            // the lapsed ones (a clock that jumped forward) go back to the queue, and
                            // nothing new is claimed until then.
                            if recording || !finished.isEmpty {
                                startRecording(&group)
                            } else {
                                recoveryWanted = false
                                usedStore = true
                                let count = try await store.recoverClaims(now: now)
                                if count > 0 { logger.warning("returned \(count) reminder(s) with lapsed leases to the queue") }
                            }
                        }
                        // Claim in batches, and only when a batch's worth of room (or all of it) is free.
                        if !dueExhausted && !recoveryWanted && Self.hasRoom(inFlight: inFlight, limit: limit, batch: dispatch.batchSize) {
                            let room = limit - inFlight
                            var wanted = min(dispatch.batchSize, room)
                            while wanted > 0 {
                                usedStore = true
                                let claimed = try await store.claimDue(
                                    now: now, limit: wanted, leaseSeconds: dispatch.leaseSeconds)
                                let dispatcher = Dispatcher(runtime: current, clock: clock, logger: logger)
                                for reminder in claimed {
                                    group.addTask {
                                        let resolution = await dispatcher.resolve(reminder)
                                        return .resolved(reminder, Task.isCancelled ? .released : resolution)
                                    }
                                }
                                inFlight += claimed.count
                                if claimed.count < wanted {
                                    dueExhausted = true
                                    break
                                }
                                wanted = min(dispatch.batchSize, limit - inFlight)
                            }
                        }
                        if usedStore && !outcomesRefused { storageWorked() }
                    } catch {
                        // The daemon's own task was cancelled (not a graceful shutdown): stop here.
                        if error is CancellationError || Task.isCancelled { return }
                        // A database error (a full disk, a lock held too long): nothing is lost, the
                        // claims already taken lapse and come back; try again after a pause.
                        storageFailed("dispatch", error)
                    }
                }

                if let first = firstUnrecorded, ContinuousClock.now - first >= flushEvery || inFlight == 0
                    || finished.count >= dispatch.batchSize
                {
                    startRecording(&group)
                }
                if ContinuousClock.now - lastStatus > .seconds(5) {
                    lastStatus = .now
                    if let line = try? await statusLine(store) { notifier.status(line) }
                }
                if stopping && inFlight == 0 {
                    startRecording(&group)
                    if !recording {
                        group.cancelAll()
                        return
                    }
                }

                if !tickerRunning {
                    var deadline: Date?
                    // Sleep until work falls due only when there is room to take it; otherwise the
                    // next finished send wakes the pipeline.
                    if !stopping && Self.hasRoom(inFlight: inFlight, limit: limit, batch: dispatch.batchSize) {
                        deadline = [try? await store.nextDueTime(), try? await store.nextLeaseExpiry()]
                            .compactMap { $0 }.compactMap { $0 }.min()
                    }
                    // The notifier sends a ping at most every half interval: turning at least that often
                    // (counted from the last turn that pinged) keeps sent pings within one interval.
                    var limitReal = notifier.watchdogInterval.map { max(.milliseconds(1), lastPing + $0 / 2 - .now) }
                    if let retryAt = storageRetryAt, storagePaused {
                        limitReal = min(limitReal ?? Self.storageRetry, max(.milliseconds(1), retryAt - .now))
                    } else if firstUnrecorded != nil {
                        limitReal = min(limitReal ?? flushEvery, flushEvery)
                    }
                    if let graceDeadline { limitReal = min(limitReal ?? .seconds(1), max(.milliseconds(1), graceDeadline - .now)) }
                    logger.trace("pipeline sleeps", metadata: [
                        "until": "\(deadline.map { Timestamp.format($0, in: .gmt) } ?? "-")", "inFlight": "\(inFlight)",
                        "real": "\(limitReal.map { "\($0)" } ?? "-")",
                    ])
                    let seen = wakeup.generation
                    group.addTask { [wakeup, clock] in
                        await wakeup.wait(until: deadline, realTimeLimit: limitReal, clock: clock, since: seen)
                        return .tick
                    }
                    tickerRunning = true
                }

                switch try await group.next() {
                case .tick?:
                    tickerRunning = false
                    dueExhausted = false
                    ticked = true
                case .recorded(let unwritten)?:
                    recording = false
                    outcomesRefused = !unwritten.isEmpty
                    if unwritten.isEmpty {
                        storageWorked()
                    } else {
                        // Kept, in order, ahead of newer outcomes, and written once the store works
                        // again; lapsed leases are not recovered until then.
                        finished.insert(contentsOf: unwritten, at: 0)
                        if firstUnrecorded == nil { firstUnrecorded = .now }
                        storageFailed("recording outcomes", StoreFailure(count: unwritten.count))
                    }
                case .resolved(let reminder, let resolution)?:
                    inFlight -= 1
                    finished.append((reminder, resolution))
                    if firstUnrecorded == nil {
                        firstUnrecorded = .now
                        // Make sure the ticker's timer covers recording this outcome soon.
                        if tickerRunning { wakeup.signal(.flush) }
                    }
                case nil:
                    tickerRunning = false
                }
            }
        }
    }

    /// Writes one group of outcomes (state changes and log rows, one transaction). Returns false if
    /// the store refused them; the caller keeps them and tries again.
    private func record(_ outcomes: [(ClaimedReminder, Resolution)], store: ReminderStore) async -> Bool {
        var tally: [String: Int] = [:]
        for (_, resolution) in outcomes { tally[Self.label(resolution), default: 0] += 1 }
        do {
            let fenced = try await store.record(outcomes, now: clock.now())
            if fenced > 0 { logger.warning("\(fenced) outcome(s) arrived after their lease lapsed; logged, not applied") }
        } catch {
            logger.error("cannot record \(outcomes.count) outcome(s): \(error); kept, to be written when the store works")
            return false
        }
        metrics.recorded(outcomes)
        // A reminder that will not reach the patient is the line staff must not miss in the journal.
        for (claimed, resolution) in outcomes {
            let ending: (String, String)?
            switch resolution {
            case .dead(let reason), .attempted(_, next: .dead(let reason)): ending = ("dead", reason)
            case .expired(let reason), .attempted(_, next: .expired(let reason)): ending = ("expired", reason)
            default: ending = nil
            }
            guard let (state, reason) = ending else { continue }
            let id = UntrustedText.escaped(ReminderID.make(procedureID: claimed.procedure.id, stepID: claimed.stepID))
            logger.warning(
                "reminder \(id) \(state): \(UntrustedText.escaped(reason, limit: UntrustedText.reasonLimit))")
        }
        logger.info(
            "dispatched \(outcomes.count) reminder(s)",
            metadata: tally.mapValues { Logger.MetadataValue.stringConvertible($0) })
        HeapTrim.release()
        await witnessStore(store)
        return true
    }

    /// Writes the delivery log's head to the journal (at start, then at most hourly on the injected
    /// clock as outcomes are recorded), so the journal is a witness the database cannot rewrite:
    /// `aftercare audit verify --expect-head` holds the log to any head it printed. Also keeps the
    /// loaded protocol versions in the store.
    private func witnessStore(_ store: ReminderStore, force: Bool = false) async {
        let now = clock.now()
        let due = lastWitness.withLock { last -> Bool in
            guard force || last.map({ now.timeIntervalSince($0) >= 3600 }) ?? true else { return false }
            last = now
            return true
        }
        guard due else { return }
        do {
            let versions = runtime.withLock { $0.map { Array($0.protocolVersions.values) } ?? [] }
            try await store.rememberProtocols(versions, now: now)
            if let head = try await store.logHead() {
                let anchor = "\(head.seq):\(head.hash)"
                logger.notice("delivery log head: row \(head.seq) hash \(head.hash) (--expect-head \(anchor))")
            } else {
                logger.notice("delivery log head: the log is empty")
            }
        } catch {
            logger.warning("cannot witness the delivery log head: \(error)")
        }
    }

    /// Whether the pipeline has room for another claim: a batch's worth (or a quarter of the limit,
    /// if smaller) of free slots, or nothing in flight at all.
    private static func hasRoom(inFlight: Int, limit: Int, batch: Int) -> Bool {
        inFlight == 0 || limit - inFlight >= min(batch, max(1, limit / 4))
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
        let pass = await intake.run()
        trouble.withLock { $0.intakeStore = pass.storeFailure }
        HeapTrim.release(force: true)
        return pass.retryAt
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
            // The new protocol versions are kept before any attempt can name them.
            await witnessStore(store, force: true)
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
        let problems = trouble.withLock { $0.summary }
        guard let status = try? await store.status(now: clock.now()) else {
            return problems ?? "cannot read the queue's figures"
        }
        var line = "scheduled \(status.count(.scheduled)), due \(status.dueNow), retrying \(status.retrying), "
            + "dead \(status.count(.dead)), expired \(status.count(.expired))"
        if let last = status.lastDelivery {
            line += ", last delivery \(Timestamp.format(last, in: .gmt))"
        }
        // Trouble first: systemctl status shows the start of the line.
        return problems.map { "\($0); " + line } ?? line
    }
}

/// What keeps the daemon from making progress right now, for its status line and its watchdog.
struct Trouble: Sendable {
    /// The store refused the dispatch pipeline's work (claims, outcomes).
    var dispatchStore: String?
    /// The store refused spool files.
    var intakeStore: String?
    /// A spool folder is missing and cannot be recreated, or is not a folder.
    var spool: String?

    /// One line for the status, or nil when all is well.
    var summary: String? {
        var parts: [String] = []
        if let dispatchStore { parts.append("STORE FAILING, delivery paused (\(dispatchStore))") }
        if let intakeStore { parts.append("STORE FAILING, intake paused (\(intakeStore))") }
        if let spool { parts.append("SPOOL UNUSABLE (\(spool))") }
        return parts.isEmpty ? nil : UntrustedText.escaped(parts.joined(separator: "; "), limit: 300)
    }
}

/// Outcomes the store would not take (the store's own error is logged where it happened).
private struct StoreFailure: Error, CustomStringConvertible {
    var count: Int
    var description: String { "\(count) outcome(s) not written" }
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

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
    fileprivate let metrics: DaemonMetrics
    /// The dispatch pipeline's events: signals posted here wake it.
    private let dispatchEvents = Mailbox<PipelineMessage>()
    private let intakeWakeup = Wakeup()
    private let shuttingDown = Mutex(false)
    fileprivate let runtime: Mutex<Runtime?> = Mutex(nil)
    fileprivate let trouble = Mutex(Trouble())
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
    public func requestReload() { dispatchEvents.post(.signal(.reload)) }

    /// Asks a running daemon to stop, as graceful shutdown does.
    public func requestShutdown() {
        let first = shuttingDown.withLock { flag -> Bool in
            defer { flag = true }
            return !flag
        }
        if first { notifier.stopping(status: "stopping: finishing deliveries under way") }
        dispatchEvents.post(.signal(.shutdown))
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
        let store = try await StoreOpener.open(
            config.store, sqlitePath: config.paths.database, credentials: config.credentialsFolder, logger: logger)
        // On a shared PostgreSQL queue, other daemons' new work wakes this one's pipeline.
        let queueWatch = Task { [dispatchEvents] in await store.watchQueue { dispatchEvents.post(.signal(.queue)) } }
        defer { queueWatch.cancel() }
        let spool = Spool(root: config.paths.spool)
        do {
            try spool.prepare()
        } catch {
            throw DaemonError("cannot prepare spool \(config.paths.spool): \(error)")
        }
        try await store.joinQueue()
        let recovered = try await store.recoverClaims(now: clock.now(), all: true)
        if recovered > 0 { logger.notice("returned \(recovered) claimed reminder(s) from an earlier run to the queue") }
        await witnessStore(store, force: true)
        let watcher = try SpoolWatcher(folder: spool.incoming.path) { [intakeWakeup] in intakeWakeup.signal(.spool) }
        defer { watcher.stop() }
        let firstRetryAt = await ingestSpool(spool: spool, store: store)
        logger.notice(
            "aftercare ready",
            metadata: [
                "database": "\(store.location)", "spool": "\(config.paths.spool)",
                "senders": "\(config.senders.keys.sorted().joined(separator: ","))",
            ]
        )
        // Ready at once: the queue's figures (counts over every reminder, slow with a million of
        // them) follow in the status line from the pipeline's first turn.
        notifier.ready(status: "ready; counting the queue")

        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                if handlesSIGHUP {
                    group.addTask { [dispatchEvents] in
                        for await _ in await UnixSignalsSequence(trapping: .sighup) {
                            dispatchEvents.post(.signal(.reload))
                        }
                    }
                }
                group.addTask {
                    await self.intakeLoop(
                        store: store, spool: spool, watcher: watcher, retryPending: firstRetryAt != nil)
                }
                group.addTask {
                    await DispatchPipeline(
                        store: store, clock: self.clock, logger: self.logger, notifier: self.notifier,
                        metrics: self.metrics, mailbox: self.dispatchEvents, host: Host(daemon: self, store: store)
                    ).run()
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
        queueWatch.cancel()
        await store.close()
        logger.notice("aftercare stopped")
    }

    private var isShuttingDown: Bool { shuttingDown.withLock { $0 } }

    /// Picks the spool up whenever inotify says something arrived, independently of delivery, so a
    /// slow receiver never holds back intake. On every wake-up, and at least every
    /// ``Intake/folderCheckSeconds``, it makes sure the spool folders are there and watched: a
    /// removed or replaced `incoming/` is recreated, watched again and read, without a restart.
    private func intakeLoop(store: any ReminderQueue, spool: Spool, watcher: SpoolWatcher, retryPending first: Bool) async {
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
                dispatchEvents.post(.signal(.spool))
            }
            let pause = lastProblem != nil ? Intake.folderRetrySeconds
                : retryPending ? Intake.settleSeconds : Intake.folderCheckSeconds
            let closing = await sweep.run(settings: runtime.withLock { $0?.config.appointments } ?? .init())
            await intakeWakeup.wait(until: closing, realTimeLimit: .seconds(pause), clock: clock)
        }
    }

    /// Writes the delivery log's head to the journal (at start, then at most hourly on the injected
    /// clock as outcomes are recorded), so the journal is a witness the database cannot rewrite:
    /// `aftercare audit verify --expect-head` holds the log to any head it printed. Also keeps the
    /// loaded protocol versions in the store.
    fileprivate func witnessStore(_ store: any ReminderQueue, force: Bool = false) async {
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

    /// Ingests what waits in the spool. Returns when to look again without an inotify event (a file
    /// that looked half-written, or a database error), if ever.
    private func ingestSpool(spool: Spool, store: any ReminderQueue) async -> Date? {
        guard let current = runtime.withLock({ $0 }) else { return nil }
        let intake = Intake(spool: spool, store: store, config: current.config, clock: clock, logger: logger)
        let pass = await intake.run()
        trouble.withLock { $0.intakeStore = pass.storeFailure }
        HeapTrim.release(force: true)
        return pass.retryAt
    }

    fileprivate func reload(store: any ReminderQueue) async {
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

    fileprivate func statusLine(_ store: any ReminderQueue) async throws -> String {
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

/// The daemon as the dispatch pipeline sees it.
private struct Host: PipelineHost {
    let daemon: AftercareDaemon
    let store: any ReminderQueue

    var runtime: Runtime? { daemon.runtime.withLock { $0 } }
    var intakeStoreFailing: Bool { daemon.trouble.withLock { $0.intakeStore != nil } }

    func reload() async { await daemon.reload(store: store) }

    func statusLine() async -> String? { try? await daemon.statusLine(store) }

    func dispatchStoreTrouble(_ problem: String?) { daemon.trouble.withLock { $0.dispatchStore = problem } }

    func recorded(_ outcomes: [(ClaimedReminder, Resolution)]) async {
        daemon.metrics.recorded(outcomes)
        HeapTrim.release()
        await daemon.witnessStore(store)
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

/// A daemon start-up or run failure, as one line.
public struct DaemonError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One daemon per state folder: an exclusive `flock` on `aftercare.lock`, released at exit (or by
/// the kernel when the process dies, so kill -9 never leaves a stale lock).
/// The state directory's lock: one daemon (or one store migration) at a time per directory.
public final class StateLock: Sendable {
    private let fd: Int32

    public init(directory: String) throws {
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

    public func release() {
        flock(fd, LOCK_UN)
        close(fd)
    }
}

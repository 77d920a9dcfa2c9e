/// The dispatch pipeline's decisions, with no I/O: events in, actions out.
///
/// The driver (``DispatchPipeline``) asks for the next action, performs it, and tells the state what
/// came of it, until the answer is to wait; then it waits for the next events (sends finished, a
/// group of outcomes written, a signal, a timer) and goes on. Every time here is the injected
/// clock's uptime, so tests run the whole state machine by hand, without a store, a sender or a
/// clock. `Outcome` is what a finished send becomes (the driver's claimed reminder and its
/// resolution); the state only counts and carries them.
///
/// The rules it keeps:
/// - at most `maxConcurrent` sends under way; claims come in batches, in the background, up to one
///   batch ahead of the sends (so a send slot that frees never waits for the store), only when a
///   batch's worth of room is free, and stop once the store has nothing more due until something
///   wakes the pipeline;
/// - outcomes are written in groups, one group at a time, at the latest `flushEvery` after the first
///   of them finished (at once when nothing else is under way or a batch's worth waits);
/// - lapsed leases are looked for at start and then at most every `leaseCheckEvery` as the pipeline
///   turns (a lease expiry is among the times it wakes for), and are returned to the queue only once
///   every outcome in hand is written (those belong to live claims);
/// - a store that refuses work pauses claims and writes for `storageRetry`; refused outcomes are kept,
///   in order, ahead of newer ones; the watchdog is not fed while the store (the pipeline's or
///   intake's) is failing, so a fault that never clears ends in a restart by systemd;
/// - on shutdown nothing more is claimed and claims not yet sent are released; sends under way may
///   finish until the grace period ends, then they are cancelled (and come back as released);
///   outcomes are written, then it stops.
struct PipelineState<Outcome: Sendable>: Sendable {
    /// What the configuration and the service manager decide.
    struct Settings: Sendable, Equatable {
        var maxConcurrent: Int
        var batchSize: Int
        var shutdownGrace: Duration
        /// Half of systemd's watchdog timeout, when it is armed.
        var watchdogInterval: Duration?
    }

    static var flushEvery: Duration { .milliseconds(20) }
    static var leaseCheckEvery: Duration { .seconds(1) }
    static var statusEvery: Duration { .seconds(5) }
    static var storageRetry: Duration { .seconds(5) }

    /// Something the store did or refused, for the journal, the status line and the metrics.
    enum Report: Sendable, Equatable {
        /// `first` is true when the store has just begun failing.
        case storeFailing(what: String, error: String, first: Bool)
        case storeWorks(after: Duration)
    }

    enum Action: Sendable {
        /// Re-read the configuration, then send ``Event/reloaded(_:)``.
        case reload
        /// Tell systemd's watchdog the pipeline is turning.
        case pingWatchdog
        /// Write the status line for `systemctl status`.
        case publishStatus
        case report(Report)
        /// Ask the store when the earliest lease lapses; answer ``Event/leasesChecked(lapsed:)``.
        case checkLeases
        /// Return lapsed claims to the queue; answer ``Event/recovered``.
        case recoverLapsed
        /// Claim up to `limit` due reminders, in the background; ``Event/claimed(asked:got:)`` or
        /// ``Event/storeFailed(what:error:)`` follows. The claimed wait in the driver until sent.
        case claim(limit: Int)
        /// Start the sends of this many claimed reminders; answer ``Event/dispatched(taken:sent:settled:)``.
        case send(count: Int)
        /// Shutdown: give back every claimed reminder not yet sent, as released; answer
        /// ``Event/dispatched(taken:sent:settled:)``.
        case releaseClaimed
        /// Write these outcomes, in the background; ``Event/recorded`` or ``Event/recordRefused(_:error:)`` follows.
        case record([Outcome])
        /// The grace period is over: abandon the sends still under way.
        case cancelSends
        /// Nothing to do until an event: a send finishing, a signal, the earliest due time or lease
        /// expiry (looked up in the store only when `untilDue`), or the uptime `timeout`.
        case wait(untilDue: Bool, timeout: Duration?)
        /// Done. `unrecorded` outcomes could not be written (the store still failed): their claims
        /// come back at the next start.
        case stop(unrecorded: Int)
    }

    enum Event: Sendable {
        case signalled(Set<WakeReason>)
        /// A due time, a lease expiry or the timeout came.
        case timer
        case reloaded(Settings)
        case leasesChecked(lapsed: Bool)
        case recovered
        /// A claim took `got` of the `asked` reminders; they wait in the driver to be sent.
        case claimed(asked: Int, got: Int)
        /// `taken` claimed reminders left the driver's hands: `sent` of them are being sent, and
        /// `settled` were resolved without a send (expired, held for quiet hours, no route, released).
        case dispatched(taken: Int, sent: Int, settled: [Outcome])
        /// Sends finished.
        case resolved([Outcome])
        case recorded
        case recordRefused([Outcome], error: String)
        /// A claim, lease check or recovery failed in the store.
        case storeFailed(what: String, error: String)
    }

    private(set) var settings: Settings
    private(set) var inFlight = 0
    /// Claimed and not yet sent: held by the driver.
    private(set) var claimedWaiting = 0
    private(set) var claiming = false
    private var finished: [Outcome] = []
    private var firstUnrecorded: Duration?
    private(set) var recording = false
    private var dueExhausted = false
    private var leasesWanted = true
    private var nextLeaseCheck: Duration = .zero
    private var recoveryWanted = false
    private(set) var failingSince: Duration?
    private var retryAt: Duration?
    /// Outcomes the store refused wait to be written: only writing them clears the fault.
    private var outcomesRefused = false
    private var reloadWanted = false
    private(set) var stopping = false
    private var graceDeadline: Duration?
    private var sendsCancelled = false
    private var lastStatus: Duration?
    private var statusWanted = true
    private var lastPing: Duration?
    private var pingedThisTurn = false
    private var reports: [Report] = []

    init(settings: Settings) {
        self.settings = settings
    }

    /// Outcomes finished and not yet handed to the store.
    var unrecorded: Int { finished.count }

    private var limit: Int { max(1, settings.maxConcurrent) }

    /// How far claims run ahead of the sends: one batch, at most the limit.
    private var lookahead: Int { min(max(1, settings.batchSize), limit) }

    /// Room for another claim: a batch's worth (or a quarter of the limit, if smaller) free in the
    /// sends under way plus those claimed ahead, or nothing claimed or under way at all.
    private var claimRoom: Int {
        let free = limit + lookahead - inFlight - claimedWaiting
        return inFlight + claimedWaiting == 0 || free >= min(settings.batchSize, max(1, limit / 4)) ? free : 0
    }

    /// Whether the pipeline could take more work if it were due.
    private var hasRoom: Bool { claimRoom > 0 }

    private func paused(_ now: Duration) -> Bool { retryAt.map { now < $0 } ?? false }

    private func graceOver(_ now: Duration) -> Bool { graceDeadline.map { now >= $0 } ?? false }

    mutating func apply(_ event: Event, at now: Duration) {
        switch event {
        case .signalled(let reasons):
            if !reasons.isEmpty { dueExhausted = false }
            if reasons.contains(.reload) && !stopping { reloadWanted = true }
            if reasons.contains(.shutdown) { beginStopping(now) }
        case .timer:
            // Something fell due (or a lease may have lapsed: leases are looked at on the next turn
            // at least a second after the last look, so steady traffic does not read them each time).
            dueExhausted = false
        case .reloaded(let settings):
            self.settings = settings
        case .leasesChecked(let lapsed):
            if lapsed { recoveryWanted = true }
            storeWorked(now)
        case .recovered:
            storeWorked(now)
        case .claimed(let asked, let got):
            claiming = false
            claimedWaiting += got
            if got < asked { dueExhausted = true }
            storeWorked(now)
        case .dispatched(let taken, let sent, let settled):
            claimedWaiting -= taken
            inFlight += sent
            keep(settled, now)
        case .resolved(let outcomes):
            inFlight -= outcomes.count
            keep(outcomes, now)
        case .recorded:
            recording = false
            outcomesRefused = false
            storeWorked(now)
        case .recordRefused(let outcomes, let error):
            recording = false
            outcomesRefused = true
            finished.insert(contentsOf: outcomes, at: 0)
            if firstUnrecorded == nil { firstUnrecorded = now }
            storeFailed("recording outcomes", error, now)
        case .storeFailed(let what, let error):
            claiming = false
            storeFailed(what, error, now)
        }
    }

    /// The next thing to do. Call again after performing it (and applying what came of it) until
    /// it is ``Action/wait(untilDue:timeout:)`` or ``Action/stop(unrecorded:)``.
    mutating func nextAction(at now: Duration, intakeStoreFailing: Bool = false) -> Action {
        if !reports.isEmpty { return .report(reports.removeFirst()) }
        if reloadWanted {
            reloadWanted = false
            return .reload
        }
        if !pingedThisTurn, settings.watchdogInterval != nil, failingSince == nil, !intakeStoreFailing {
            pingedThisTurn = true
            lastPing = now
            return .pingWatchdog
        }
        let paused = paused(now)
        if claimedWaiting > 0 {
            if stopping { return .releaseClaimed }
            if inFlight < limit { return .send(count: min(claimedWaiting, limit - inFlight)) }
        }
        if stopping {
            if graceOver(now), inFlight > 0, !sendsCancelled {
                sendsCancelled = true
                return .cancelSends
            }
            if inFlight == 0, !recording, !claiming {
                if finished.isEmpty { return .stop(unrecorded: 0) }
                if failingSince != nil, graceOver(now) { return .stop(unrecorded: finished.count) }
            }
        } else if !paused {
            if leasesWanted || now >= nextLeaseCheck {
                leasesWanted = false
                nextLeaseCheck = now + Self.leaseCheckEvery
                return .checkLeases
            }
            if recoveryWanted, !recording, !claiming, finished.isEmpty {
                recoveryWanted = false
                return .recoverLapsed
            }
            if !recoveryWanted, !dueExhausted, !claiming, claimRoom > 0 {
                claiming = true
                return .claim(limit: min(settings.batchSize, claimRoom))
            }
        }
        if !recording, !finished.isEmpty, !paused, let first = firstUnrecorded,
            now - first >= Self.flushEvery || inFlight == 0 || finished.count >= settings.batchSize
                || recoveryWanted || stopping
        {
            recording = true
            let outcomes = finished
            finished.removeAll(keepingCapacity: true)
            firstUnrecorded = nil
            return .record(outcomes)
        }
        if statusWanted || lastStatus.map({ now - $0 >= Self.statusEvery }) ?? true {
            statusWanted = false
            lastStatus = now
            return .publishStatus
        }
        pingedThisTurn = false
        var timeout: Duration?
        func earliest(_ candidate: Duration) { timeout = min(timeout ?? candidate, candidate) }
        if let interval = settings.watchdogInterval, let lastPing, failingSince == nil {
            earliest(lastPing + interval / 2)
        }
        if let retryAt, paused { earliest(retryAt) }
        if let firstUnrecorded, !recording, !paused { earliest(firstUnrecorded + Self.flushEvery) }
        if let graceDeadline, !graceOver(now) { earliest(graceDeadline) }
        // Sleep until work falls due only when it could be taken: with room for it, and no lapsed
        // leases waiting on outcomes being written (that write's end wakes the pipeline).
        return .wait(untilDue: !stopping && !paused && hasRoom && !recoveryWanted && !claiming, timeout: timeout)
    }

    private mutating func keep(_ outcomes: [Outcome], _ now: Duration) {
        guard !outcomes.isEmpty else { return }
        finished.append(contentsOf: outcomes)
        if firstUnrecorded == nil { firstUnrecorded = now }
    }

    private mutating func beginStopping(_ now: Duration) {
        guard !stopping else { return }
        stopping = true
        reloadWanted = false
        graceDeadline = now + settings.shutdownGrace
    }

    private mutating func storeFailed(_ what: String, _ error: String, _ now: Duration) {
        reports.append(.storeFailing(what: what, error: error, first: failingSince == nil))
        if failingSince == nil { failingSince = now }
        retryAt = now + Self.storageRetry
        statusWanted = true
    }

    private mutating func storeWorked(_ now: Duration) {
        guard !outcomesRefused, let since = failingSince else { return }
        reports.append(.storeWorks(after: now - since))
        failingSince = nil
        retryAt = nil
        statusWanted = true
    }
}

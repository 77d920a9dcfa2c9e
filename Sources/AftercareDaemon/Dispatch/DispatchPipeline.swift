import AftercareCore
import AftercareDelivery
import AftercareMetrics
import AftercareStore
import Foundation
import Logging

/// What the pipeline needs from the daemon around it.
protocol PipelineHost: Sendable {
    /// The configuration and senders in force (replaced whole on reload).
    var runtime: Runtime? { get }
    /// Whether intake cannot store what it reads: the watchdog is not fed then either.
    var intakeStoreFailing: Bool { get }
    func reload() async
    func statusLine() async -> String?
    /// The store refuses (a problem) or works again (`nil`): for the status line.
    func dispatchStoreTrouble(_ problem: String?)
    /// A group of outcomes was written: count them, witness the log.
    func recorded(_ outcomes: [(ClaimedReminder, Resolution)]) async
}

/// What reaches the pipeline from elsewhere.
enum PipelineMessage: Sendable {
    case signal(WakeReason)
    /// The timer armed as `generation` went off.
    case timer(generation: UInt64)
    /// A send finished, at this time and uptime.
    case sent(id: UInt64, SendJob, SendResult, at: Date, uptime: Duration)
    case claimed([ClaimedReminder], asked: Int)
    case claimFailed(error: String)
    case recorded
    case recordRefused([(ClaimedReminder, Resolution)], error: String)
}

extension PipelineMessage {
    /// Whether the earliest due time or lease expiry may have moved: sends finishing do not move
    /// it (their outcomes are not written yet); writes, signals (new work, a reload) and timers may.
    var changesDeadline: Bool {
        switch self {
        case .sent: false
        case .signal, .timer, .claimed, .claimFailed, .recorded, .recordRefused: true
        }
    }
}

/// The dispatch pipeline: claims due reminders in batches under a lease, starts their sends,
/// collects what comes back in batches, and writes outcomes in groups while the sends go on.
///
/// Its decisions are ``PipelineState``'s; this type performs them (the store, the senders, the
/// clock, the journal) and feeds back what came of them. Its timers are on the injected clock.
struct DispatchPipeline: Sendable {
    typealias State = PipelineState<(ClaimedReminder, Resolution)>

    let store: any ReminderQueue
    let clock: any WallClock
    let logger: Logger
    let notifier: any ServiceManagerNotifier
    let metrics: DaemonMetrics
    let mailbox: Mailbox<PipelineMessage>
    let host: any PipelineHost

    func run() async {
        guard let runtime = host.runtime else { return }
        var state = State(settings: settings(runtime))
        var tickets: [UInt64: SendTicket] = [:]
        var cancelled = Set<UInt64>()
        var nextSendID: UInt64 = 0
        var timer = Timer()
        defer { timer.disarm() }
        // The earliest due time or lease expiry as last read from the store; read again only after
        // something that may change it (a claim, a write, a recovery, a signal, the timer).
        var knownDeadline: Date??
        // Claimed reminders not yet sent, earliest due first.
        var waiting: [ClaimedReminder] = []

        while true {
            let now = clock.uptime()
            switch state.nextAction(at: now, intakeStoreFailing: host.intakeStoreFailing) {
            case .report(let report):
                self.report(report)
            case .reload:
                await host.reload()
                if let runtime = host.runtime { state.apply(.reloaded(settings(runtime)), at: clock.uptime()) }
            case .pingWatchdog:
                notifier.watchdogPing()
            case .publishStatus:
                if let line = await host.statusLine() { notifier.status(line) }
            case .checkLeases:
                do {
                    let lapse = try await store.nextLeaseExpiry()
                    state.apply(.leasesChecked(lapsed: lapse.map { $0 <= clock.now() } ?? false), at: clock.uptime())
                } catch {
                    if Task.isCancelled { return }
                    state.apply(.storeFailed(what: "dispatch", error: "\(error)"), at: clock.uptime())
                }
            case .recoverLapsed:
                do {
                    let count = try await store.recoverClaims(now: clock.now())
                    if count > 0 { logger.warning("returned \(count) reminder(s) with lapsed leases to the queue") }
                    knownDeadline = nil
                    state.apply(.recovered, at: clock.uptime())
                } catch {
                    if Task.isCancelled { return }
                    state.apply(.storeFailed(what: "dispatch", error: "\(error)"), at: clock.uptime())
                }
            case .claim(let limit):
                guard let runtime = host.runtime else { return }
                // In the background, like a write: sends go on and finish meanwhile.
                Task { [store, clock, mailbox] in
                    do {
                        let claimed = try await store.claimDue(
                            now: clock.now(), limit: limit, leaseSeconds: runtime.config.dispatch.leaseSeconds)
                        mailbox.post(.claimed(claimed, asked: limit))
                    } catch {
                        mailbox.post(.claimFailed(error: "\(error)"))
                    }
                }
            case .send(let count):
                guard let runtime = host.runtime else { return }
                let dispatcher = Dispatcher(runtime: runtime, clock: clock, logger: logger)
                var settled: [(ClaimedReminder, Resolution)] = []
                var sent = 0
                for reminder in waiting.prefix(count) {
                    switch dispatcher.prepare(reminder) {
                    case .settled(let resolution):
                        settled.append((reminder, resolution))
                    case .send(let job):
                        let id = nextSendID
                        nextSendID &+= 1
                        tickets[id] = job.sender.submit(job.message) { [mailbox, clock] result in
                            mailbox.post(.sent(id: id, job, result, at: clock.now(), uptime: clock.uptime()))
                        }
                        sent += 1
                    }
                }
                waiting.removeFirst(count)
                state.apply(.dispatched(taken: count, sent: sent, settled: settled), at: clock.uptime())
            case .releaseClaimed:
                // Claimed, never sent: back to the queue as they were.
                let released = waiting.map { ($0, Resolution.released) }
                waiting.removeAll()
                state.apply(.dispatched(taken: released.count, sent: 0, settled: released), at: clock.uptime())
            case .record(let outcomes):
                // A task of its own, not cancelled with the daemon's: outcomes must land.
                Task { [self] in
                    if let error = await record(outcomes) {
                        mailbox.post(.recordRefused(outcomes, error: error))
                    } else {
                        mailbox.post(.recorded)
                    }
                }
            case .cancelSends:
                // Their results come back as usual; they are recorded as released and stay due.
                for (id, ticket) in tickets {
                    cancelled.insert(id)
                    ticket.cancel()
                }
            case .wait(let untilDue, let timeout):
                metrics.pipelineTurned()
                var messages = mailbox.takeAll()
                if messages.isEmpty {
                    var deadline: Date?
                    if untilDue {
                        if knownDeadline == nil {
                            do {
                                knownDeadline = .some(try await store.nextDueOrLeaseExpiry())
                            } catch {
                                // Not known: look again in a second rather than sleep past due work.
                                knownDeadline = .some(clock.now().addingTimeInterval(1))
                            }
                        }
                        deadline = knownDeadline ?? nil
                    }
                    timer.arm(deadline: deadline, timeout: timeout, clock: clock, mailbox: mailbox)
                    await mailbox.wait()
                    if Task.isCancelled {
                        for ticket in tickets.values { ticket.cancel() }
                        return
                    }
                    messages = mailbox.takeAll()
                }
                if messages.contains(where: \.changesDeadline) { knownDeadline = nil }
                var signals: Set<WakeReason> = []
                var resolved: [(ClaimedReminder, Resolution)] = []
                for message in messages {
                    switch message {
                    case .signal(let reason):
                        signals.insert(reason)
                    case .timer(let generation):
                        if timer.fired(generation) { state.apply(.timer, at: clock.uptime()) }
                    case .sent(let id, let job, let result, let endedAt, let endedUptime):
                        tickets[id] = nil
                        if cancelled.remove(id) != nil {
                            resolved.append((job.reminder, .released))
                        } else {
                            // The job's own dispatcher: the configuration it was prepared under.
                            resolved.append((job.reminder, job.dispatcher(clock: clock, logger: logger)
                                .conclude(job, result: result, endedAt: endedAt, endedUptime: endedUptime)))
                        }
                    case .claimed(let claimed, let asked):
                        waiting.append(contentsOf: claimed)
                        state.apply(.claimed(asked: asked, got: claimed.count), at: clock.uptime())
                    case .claimFailed(let error):
                        state.apply(.storeFailed(what: "dispatch", error: error), at: clock.uptime())
                    case .recorded:
                        state.apply(.recorded, at: clock.uptime())
                    case .recordRefused(let outcomes, let error):
                        state.apply(.recordRefused(outcomes, error: error), at: clock.uptime())
                    }
                }
                if !resolved.isEmpty { state.apply(.resolved(resolved), at: clock.uptime()) }
                if !signals.isEmpty { state.apply(.signalled(signals), at: clock.uptime()) }
            case .stop(let unrecorded):
                if unrecorded > 0 {
                    logger.error("stopping with \(unrecorded) outcome(s) unrecorded: the store still fails")
                }
                return
            }
        }
    }

    private func settings(_ runtime: Runtime) -> State.Settings {
        let dispatch = runtime.config.dispatch
        return State.Settings(
            maxConcurrent: dispatch.maxConcurrent, batchSize: max(1, dispatch.batchSize),
            shutdownGrace: .seconds(dispatch.shutdownGrace), watchdogInterval: notifier.watchdogInterval)
    }

    private func report(_ report: State.Report) {
        switch report {
        case .storeFailing(let what, let error, let first):
            host.dispatchStoreTrouble("\(what): \(error)")
            metrics.storageFailing("\(what): \(error)")
            if first {
                logger.error("\(what) failed: \(error); retrying every \(State.storageRetry), watchdog paused")
            } else {
                logger.warning("\(what) still failing: \(error)")
            }
        case .storeWorks(let after):
            host.dispatchStoreTrouble(nil)
            metrics.storageWorks()
            logger.notice("the store works again after \(after); delivery resumes")
        }
    }

    /// Writes one group of outcomes (state changes and log rows, one transaction). Returns the
    /// store's error if it refused them; the pipeline keeps them and tries again.
    private func record(_ outcomes: [(ClaimedReminder, Resolution)]) async -> String? {
        var tally: [String: Int] = [:]
        for (_, resolution) in outcomes { tally[resolution.label, default: 0] += 1 }
        do {
            let fenced = try await store.record(outcomes, now: clock.now())
            if fenced > 0 { logger.warning("\(fenced) outcome(s) arrived after their lease lapsed; logged, not applied") }
        } catch {
            logger.error("cannot record \(outcomes.count) outcome(s): \(error); kept, to be written when the store works")
            return "\(outcomes.count) outcome(s) not written"
        }
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
        await host.recorded(outcomes)
        return nil
    }
}

extension SendJob {
    /// The dispatcher for the configuration this job was prepared under.
    func dispatcher(clock: any WallClock, logger: Logger) -> Dispatcher {
        Dispatcher(runtime: runtime, clock: clock, logger: logger)
    }
}

extension Resolution {
    /// How the journal and the metrics name this resolution.
    var label: String {
        switch self {
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
}

/// The pipeline's one timer, on the injected clock: re-armed only when what it waits for changes.
private struct Timer {
    private var task: Task<Void, Never>?
    private var armed: (deadline: Date?, timeout: Duration?)?
    private var generation: UInt64 = 0

    mutating func arm(
        deadline: Date?, timeout: Duration?, clock: any WallClock, mailbox: Mailbox<PipelineMessage>
    ) {
        if let armed, armed.deadline == deadline, armed.timeout == timeout, task != nil { return }
        disarm()
        guard deadline != nil || timeout != nil else { return }
        generation &+= 1
        armed = (deadline, timeout)
        let generation = generation
        task = Task {
            await withTaskGroup(of: Void.self) { group in
                if let deadline { group.addTask { try? await clock.sleep(until: deadline) } }
                if let timeout { group.addTask { try? await clock.sleep(untilUptime: timeout) } }
                await group.next()
                group.cancelAll()
            }
            if !Task.isCancelled { mailbox.post(.timer(generation: generation)) }
        }
    }

    /// Whether this firing is the armed timer's (a stale one is ignored); it is spent either way.
    mutating func fired(_ which: UInt64) -> Bool {
        guard which == generation, task != nil else { return false }
        task = nil
        armed = nil
        return true
    }

    mutating func disarm() {
        task?.cancel()
        task = nil
        armed = nil
    }
}

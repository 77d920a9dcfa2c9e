import AftercareConfig
import AftercareCore
import AftercareStore
import Foundation
import Logging
import Metrics
import ServiceLifecycle

/// Reads the queue from the store on a timer and sets the gauges: reminders by state, queue depth,
/// next due, last delivery, delivery-log rows, the spool, whether the pipeline is stalled, and
/// (at start, then hourly) whether the delivery log's hash chain holds. Runs only while the metrics
/// listener is on; scrapes read the gauges and never query the store.
public struct QueueGauges: Service {
    /// The gauge names, as Prometheus shows them.
    public enum Name {
        public static let reminders = "aftercare_reminders"
        public static let procedures = "aftercare_procedures"
        public static let queueDepth = "aftercare_queue_depth"
        public static let retrying = "aftercare_reminders_retrying"
        public static let nextDue = "aftercare_next_due_timestamp_seconds"
        public static let oldestDueAge = "aftercare_oldest_due_age_seconds"
        public static let lastDelivery = "aftercare_last_delivery_timestamp_seconds"
        public static let logRows = "aftercare_delivery_log_rows"
        public static let spoolWaiting = "aftercare_spool_waiting"
        public static let spoolRejected = "aftercare_spool_rejected"
        public static let stalled = "aftercare_pipeline_stalled"
        public static let chainOK = "aftercare_audit_chain_ok"
        public static let chainChecked = "aftercare_audit_chain_checked_timestamp_seconds"
    }

    private let paths: StoragePaths
    private let storeSettings: StoreSettings
    private let credentials: String?
    private let metrics: DaemonMetrics
    private let clock: any WallClock
    private let every: Duration
    private let chainEvery: Duration
    private let logger: Logger
    private let gauges: Gauges

    /// - Parameters:
    ///   - paths: where the database and the spool are.
    ///   - store: which engine keeps the queue.
    ///   - credentials: the `credentials/` folder beside the configuration (see ``StoreOpener``).
    ///   - metrics: the daemon's metrics; the gauges go to its factory and the readings feed its health.
    ///   - clock: the daemon's clock, to tell what is due.
    ///   - every: how often to read the queue.
    ///   - chainEvery: how often to verify the delivery log (O(rows): not often).
    public init(
        paths: StoragePaths, store: StoreSettings = .sqlite, credentials: String? = nil, metrics: DaemonMetrics,
        clock: any WallClock, every: Duration, chainEvery: Duration = .seconds(3600), logger: Logger
    ) {
        self.paths = paths
        storeSettings = store
        self.credentials = credentials
        self.metrics = metrics
        self.clock = clock
        self.every = every
        self.chainEvery = chainEvery
        self.logger = logger
        gauges = Gauges(factory: metrics.factory)
    }

    public func run() async throws {
        // Ends at graceful shutdown: the sleep between readings is cancelled.
        try? await cancelWhenGracefulShutdown { try await self.readPeriodically() }
    }

    private func readPeriodically() async throws {
        var store: (any ReminderQueue)?
        defer { if let store { Task { await store.close() } } }
        var nextChainCheck = ContinuousClock.now
        while !Task.isCancelled {
            // The daemon creates the database; until it has, there is nothing to read.
            var openProblem: String?
            if store == nil {
                do {
                    store = try await StoreOpener.open(
                        storeSettings, sqlitePath: paths.database, credentials: credentials, readOnly: true)
                } catch {
                    openProblem = "\(error)"
                }
            }
            await refresh(store, openProblem: openProblem)
            if let store, ContinuousClock.now >= nextChainCheck {
                nextChainCheck = .now + chainEvery
                await checkChain(store)
            }
            try await Task.sleep(for: every)
        }
    }

    /// Reads the queue once and sets the gauges.
    func refresh(_ store: (any ReminderQueue)?, openProblem: String? = nil) async {
        let now = clock.now()
        let takenAt = ContinuousClock.now
        var snapshot = QueueSnapshot(takenAt: takenAt, wallNow: now, dueNow: 0)
        do {
            guard let store else { throw StoreError(openProblem ?? "the store cannot be opened") }
            let status = try await store.status(now: now)
            for state in ReminderState.allCases { gauges.reminders[state]?.record(status.count(state)) }
            gauges.procedures.record(status.procedures)
            gauges.queueDepth.record(status.dueNow)
            gauges.retrying.record(status.retrying)
            gauges.nextDue.record(status.nextDue?.timeIntervalSince1970 ?? 0)
            let oldestAge = status.dueNow > 0 ? status.nextDue.map { max(0, now.timeIntervalSince($0)) } ?? 0 : 0
            gauges.oldestDueAge.record(oldestAge)
            gauges.lastDelivery.record(status.lastDelivery?.timeIntervalSince1970 ?? 0)
            gauges.logRows.record(try await store.logHead()?.seq ?? 0)
            snapshot.dueNow = status.dueNow
            snapshot.earliestDue = status.nextDue
        } catch {
            snapshot.readProblem = "\(error)"
        }
        gauges.spoolWaiting.record(Self.entries(in: paths.spool + "/incoming"))
        gauges.spoolRejected.record(Self.entries(in: paths.spool + "/rejected") { !$0.hasSuffix(".error") })
        metrics.remember(snapshot)
        let verdict = metrics.health()
        gauges.stalled.record(verdict.isHealthy ? 0 : 1)
    }

    /// Verifies the delivery log's hash chain and sets the gauge: 1 intact, 0 broken.
    func checkChain(_ store: any ReminderQueue) async {
        do {
            let verdict = try await store.verifyLog()
            if case .broken(let seq, let reason) = verdict {
                logger.error("delivery log chain broken at row \(seq): \(reason)")
                gauges.chainOK.record(0)
            } else {
                gauges.chainOK.record(1)
            }
            gauges.chainChecked.record(clock.now().timeIntervalSince1970)
        } catch {
            // Not a verdict: the last one stands, and the check time says how old it is.
            logger.warning("cannot verify the delivery log chain: \(error)")
        }
    }

    /// Entries in a folder, hidden ones (a writer's temporary files) left out.
    static func entries(in folder: String, where include: (String) -> Bool = { _ in true }) -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.filter { !$0.hasPrefix(".") && include($0) }.count
    }

    /// The gauges, made once.
    private struct Gauges: Sendable {
        let reminders: [ReminderState: Gauge]
        let procedures, queueDepth, retrying, nextDue, oldestDueAge, lastDelivery, logRows: Gauge
        let spoolWaiting, spoolRejected, stalled, chainOK, chainChecked: Gauge

        init(factory: any MetricsFactory) {
            func gauge(_ name: String) -> Gauge { Gauge(label: name, dimensions: [], factory: factory) }
            reminders = Dictionary(uniqueKeysWithValues: ReminderState.allCases.map {
                ($0, Gauge(label: Name.reminders, dimensions: [("state", $0.rawValue)], factory: factory))
            })
            procedures = gauge(Name.procedures)
            queueDepth = gauge(Name.queueDepth)
            retrying = gauge(Name.retrying)
            nextDue = gauge(Name.nextDue)
            oldestDueAge = gauge(Name.oldestDueAge)
            lastDelivery = gauge(Name.lastDelivery)
            logRows = gauge(Name.logRows)
            spoolWaiting = gauge(Name.spoolWaiting)
            spoolRejected = gauge(Name.spoolRejected)
            stalled = gauge(Name.stalled)
            chainOK = gauge(Name.chainOK)
            chainChecked = gauge(Name.chainChecked)
        }
    }
}

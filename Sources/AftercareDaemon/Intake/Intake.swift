import AftercareConfig
import AftercareCore
import AftercareStore
import Foundation
import Logging

/// One pass over the spool: read what waits in `incoming/`, apply it in as few transactions as
/// possible, then remove what is durable and refuse what is bad.
public struct Intake: Sendable {
    let spool: Spool
    let store: ReminderStore
    let config: AftercareConfiguration
    let clock: any WallClock
    let logger: Logger

    public init(spool: Spool, store: ReminderStore, config: AftercareConfiguration, clock: any WallClock, logger: Logger) {
        self.spool = spool
        self.store = store
        self.config = config
        self.clock = clock
        self.logger = logger
    }

    /// Files per transaction, and requests per transaction: big enough for bulk imports to go fast,
    /// small enough that one commit never holds the writer for long.
    static let filesPerBatch = 512
    static let requestsPerBatch = 20_000
    /// A file that fails to parse and is younger than this may still be being written by a careless
    /// producer: look again later rather than refuse it.
    static let settleSeconds: TimeInterval = 5

    /// Returns when to look again even without an inotify event, if ever.
    public func run() async -> Date? {
        let files: [Spool.PendingFile]
        do {
            files = try spool.pendingFiles()
        } catch {
            logger.error("\(error)")
            return clock.now().addingTimeInterval(5)
        }
        var retryAt: Date?
        var batch: [(Spool.PendingFile, IntakeBatchFile)] = []
        var batchRequests = 0
        // One batch is applied (on the database's thread) while the next is read and parsed here.
        var applying: Task<Bool, Never>?
        func submit(_ ready: [(Spool.PendingFile, IntakeBatchFile)]) async -> Bool {
            if let previous = applying, !(await previous.value) { return false }
            applying = Task { await apply(ready) }
            return true
        }
        for file in files {
            let data: Data
            do {
                data = try spool.read(file)
            } catch {
                // Gone already (another pass took it) or unreadable: look again shortly.
                retryAt = clock.now().addingTimeInterval(Self.settleSeconds)
                continue
            }
            let requests: [IntakeRequest]
            do {
                requests = try IntakeCodec.decode(data)
            } catch {
                if Date().timeIntervalSince(file.modified) < Self.settleSeconds {
                    retryAt = clock.now().addingTimeInterval(Self.settleSeconds)
                    continue
                }
                await refuse(file, because: error, actor: Self.actor(file.ownerUID, data: data))
                continue
            }
            batch.append((file, IntakeBatchFile(name: file.name, requests: requests, actor: Self.actor(file.ownerUID, data: data))))
            batchRequests += requests.count
            if batch.count >= Self.filesPerBatch || batchRequests >= Self.requestsPerBatch {
                if !(await submit(batch)) { return clock.now().addingTimeInterval(5) }
                batch.removeAll(keepingCapacity: true)
                batchRequests = 0
            }
        }
        if !batch.isEmpty, !(await submit(batch)) { return clock.now().addingTimeInterval(5) }
        if let last = applying, !(await last.value) { return clock.now().addingTimeInterval(5) }
        return retryAt
    }

    private func apply(_ batch: [(Spool.PendingFile, IntakeBatchFile)]) async -> Bool {
        let config = self.config
        let plan: PlanFunction = { procedure, now in Self.plan(procedure, config: config, now: now) }
        let outcomes: [IntakeFileOutcome]
        do {
            outcomes = try await store.ingest(batch.map(\.1), now: clock.now(), plan: plan)
        } catch {
            logger.error("intake of \(batch.count) file(s) failed, will retry: \(error)")
            return false
        }
        var done: [String] = []
        for ((file, _), outcome) in zip(batch, outcomes) {
            switch outcome {
            case .applied(let summary):
                done.append(file.name)
                logger.info("ingested \(file.name): \(summary)")
            case .rejected(let error):
                moveToRejected(file, reason: error.description)
            }
        }
        // Only now, with the transaction committed and synced, may the files go.
        spool.remove(done)
        return true
    }

    private func refuse(_ file: Spool.PendingFile, because error: IntakeError, actor: String) async {
        try? await store.logEvent(
            LogEntry(at: clock.now(), event: .rejected, procedureID: error.procedureID, actor: actor,
                     detail: "\(file.name): \(error)")
        )
        moveToRejected(file, reason: error.description)
    }

    private func moveToRejected(_ file: Spool.PendingFile, reason: String) {
        do {
            try spool.reject(file.name, reason: reason)
            logger.warning("rejected \(file.name): \(reason)")
        } catch {
            logger.error("cannot move \(file.name) to rejected/: \(error)")
        }
    }

    /// The plan for a procedure under `config`, or why it cannot be planned.
    public static func plan(_ procedure: Procedure, config: AftercareConfiguration, now: Date)
        -> Result<[PlannedReminder], IntakeError>
    {
        guard let careProtocol = config.protocols[procedure.protocolID] else {
            let known = config.protocols.keys.sorted().joined(separator: ", ")
            return .failure(
                IntakeError(procedureID: procedure.id, problem: "unknown protocol '\(procedure.protocolID)' (configured: \(known))")
            )
        }
        guard procedure.patient.routes.contains(where: { config.channels[$0.channel] != nil }) else {
            let known = config.channels.keys.sorted().joined(separator: ", ")
            return .failure(
                IntakeError(
                    procedureID: procedure.id,
                    problem: "no contact route is on a configured channel (configured: \(known))"
                )
            )
        }
        return .success(Planner.plan(procedure, protocol: careProtocol, policy: config.policy, now: now))
    }

    /// Who dropped a file: its owner, when this process can see who that is; otherwise (under
    /// systemd's PrivateUsers= other users appear as nobody) the name the request states.
    static func actor(_ uid: uid_t, data: Data) -> String {
        if uid != 65534, let entry = getpwuid(uid), let name = entry.pointee.pw_name {
            return String(cString: name)
        }
        if let stated = IntakeCodec.requestedBy(data) { return "\(stated) (stated)" }
        return uid == 65534 ? "unknown" : "uid \(uid)"
    }
}

import AftercareConfig
import AftercareCore
import AftercareStore
import Foundation
import Logging
import Synchronization

/// One pass over the spool: read what waits in `incoming/`, apply it in as few transactions as
/// possible, then remove what is durable and refuse what is bad.
public struct Intake: Sendable {
    let spool: Spool
    let store: any ReminderQueue
    let config: AftercareConfiguration
    let clock: any WallClock
    let logger: Logger
    /// Called at the start of each piece of blocking file work with whether it runs on the
    /// file-work queue; for tests.
    var onFileWork: (@Sendable (Bool) -> Void)?

    public init(
        spool: Spool, store: any ReminderQueue, config: AftercareConfiguration, clock: any WallClock, logger: Logger
    ) {
        self.spool = spool
        self.store = store
        self.config = config
        self.clock = clock
        self.logger = logger
    }

    /// Files per transaction, and requests per transaction: big enough for bulk imports to go fast,
    /// small enough that one commit never holds the writer for long.
    static let filesPerBatch = 512
    static let requestsPerBatch = 5_000
    /// A file that fails to parse and is younger than this may still be being written by a careless
    /// producer: look again later rather than refuse it.
    static let settleSeconds: TimeInterval = 5
    /// How often the daemon makes sure the spool folders are there and watched, even when nothing
    /// arrives: the safety net for a folder moved away without a word from inotify.
    static let folderCheckSeconds: TimeInterval = 5
    /// How soon to look again while a spool folder cannot be recreated.
    static let folderRetrySeconds: TimeInterval = 0.5

    /// What one pass over the spool came to.
    public struct Pass: Sendable {
        /// When to look again even without an inotify event, if ever.
        public var retryAt: Date?
        /// Why the store refused the files read in this pass, if it did; they stay in `incoming/`.
        public var storeFailure: String?
    }

    public func run() async -> Pass {
        let spool = self.spool
        let observe = onFileWork
        let listing = await FileWork.run { () -> Result<[Spool.PendingFile], SpoolError> in
            observe?(FileWork.isCurrent)
            do {
                return .success(try spool.pendingFiles())
            } catch {
                return .failure(error as? SpoolError ?? SpoolError("\(error)"))
            }
        }
        let files: [Spool.PendingFile]
        switch listing {
        case .success(let found):
            files = found
        case .failure(let error):
            logger.error("\(error)")
            return Pass(retryAt: clock.now().addingTimeInterval(5))
        }
        let storeFailure = FailureNote()
        func failed() -> Pass {
            Pass(retryAt: clock.now().addingTimeInterval(5), storeFailure: storeFailure.text.withLock { $0 })
        }
        var retryAt: Date?
        var batch: [(Spool.PendingFile, IntakeBatchFile)] = []
        var batchRequests = 0
        // One batch is applied (on the database's thread) while the next is read and parsed (on the
        // file-work queue).
        var applying: Task<Bool, Never>?
        func submit(_ ready: [(Spool.PendingFile, IntakeBatchFile)]) async -> Bool {
            if let previous = applying, !(await previous.value) { return false }
            applying = Task { await apply(ready, failure: storeFailure) }
            return true
        }
        for file in files {
            let young = Date().timeIntervalSince(file.modified) < Self.settleSeconds
            // A writer that links a file in and then unlinks its own name (maildir style) is done
            // within moments; a hard link that stays is refused unopened.
            if file.kind == .regular && file.linkCount > 1 && young {
                retryAt = clock.now().addingTimeInterval(Self.settleSeconds)
                continue
            }
            switch await FileWork.run({ () -> Taken in
                observe?(FileWork.isCurrent)
                return Self.take(file, from: spool)
            }) {
            case .gone:
                continue
            case .later(let why):
                logger.warning("cannot read \(file.displayName) now, will look again: \(why)")
                retryAt = clock.now().addingTimeInterval(Self.settleSeconds)
            case .refused(let reason, let actor):
                await refuse(file, reason: reason, procedureID: nil, actor: actor)
            case .unreadable(let error, let actor):
                if young {
                    retryAt = clock.now().addingTimeInterval(Self.settleSeconds)
                    continue
                }
                await refuse(file, reason: Self.describe(error), procedureID: error.procedureID, actor: actor)
            case .parsed(let parsed):
                batch.append((file, parsed))
                batchRequests += parsed.requests.count
                if batch.count >= Self.filesPerBatch || batchRequests >= Self.requestsPerBatch {
                    if !(await submit(batch)) { return failed() }
                    batch.removeAll(keepingCapacity: true)
                    batchRequests = 0
                }
            }
        }
        if !batch.isEmpty, !(await submit(batch)) { return failed() }
        if let last = applying, !(await last.value) { return failed() }
        return Pass(retryAt: retryAt)
    }

    /// What reading and parsing one waiting file came to.
    enum Taken: Sendable {
        case gone
        case later(String)
        case refused(String, actor: String)
        case unreadable(IntakeError, actor: String)
        /// Ready for the store, with what it stores of each procedure worked out here, off its writer.
        case parsed(IntakeBatchFile)
    }

    /// Reads and parses one file: blocking work, for the file-work queue only.
    static func take(_ file: Spool.PendingFile, from spool: Spool) -> Taken {
        let data: Data
        switch spool.read(file) {
        case .contents(let contents): data = contents
        case .gone: return .gone
        case .later(let why): return .later(why)
        case .refused(let reason): return .refused(reason, actor: actor(file.ownerUID, data: Data()))
        }
        do {
            let requests = try IntakeCodec.decode(data)
            return .parsed(IntakeBatchFile(name: file.name, requests: requests, actor: actor(file.ownerUID, data: data)))
        } catch {
            return .unreadable(error, actor: actor(file.ownerUID, data: data))
        }
    }

    private func apply(_ batch: [(Spool.PendingFile, IntakeBatchFile)], failure: FailureNote) async -> Bool {
        let config = self.config
        let plan: PlanFunction = { procedure, now in Self.plan(procedure, config: config, now: now) }
        let outcomes: [IntakeFileOutcome]
        do {
            outcomes = try await store.ingest(batch.map(\.1), now: clock.now(), plan: plan)
        } catch {
            logger.error("intake of \(batch.count) file(s) failed, will retry: \(error)")
            failure.text.withLock { $0 = "\(error)" }
            return false
        }
        var done: [String] = []
        for ((file, _), outcome) in zip(batch, outcomes) {
            switch outcome {
            case .applied(let summary):
                done.append(file.name)
                logger.info("ingested \(file.displayName): \(summary)")
            case .rejected(let error):
                await moveToRejected(file, reason: Self.describe(error))
            }
        }
        // Only now, with the transaction committed and synced, may the files go.
        let spool = self.spool
        let observe = onFileWork
        let names = done
        await FileWork.run {
            observe?(FileWork.isCurrent)
            spool.remove(names)
        }
        return true
    }

    private func refuse(_ file: Spool.PendingFile, reason: String, procedureID: String?, actor: String) async {
        try? await store.logEvent(
            LogEntry(at: clock.now(), event: .rejected, procedureID: procedureID, actor: actor,
                     detail: "\(file.displayName): \(UntrustedText.escaped(reason, limit: UntrustedText.reasonLimit))")
        )
        await moveToRejected(file, reason: reason)
    }

    private func moveToRejected(_ file: Spool.PendingFile, reason: String) async {
        let shown = UntrustedText.escaped(reason, limit: UntrustedText.reasonLimit)
        let spool = self.spool
        let observe = onFileWork
        let moved = await FileWork.run { () -> Result<String?, SpoolError> in
            observe?(FileWork.isCurrent)
            do {
                return .success(try spool.reject(file, reason: reason))
            } catch {
                return .failure(error as? SpoolError ?? SpoolError("\(error)"))
            }
        }
        switch moved {
        case .success(let target?):
            let renamed = target == file.name ? "" : " (now rejected/\(target))"
            logger.warning("rejected \(file.displayName)\(renamed): \(shown)")
        case .success(nil):
            return
        case .failure(let error):
            logger.error("cannot move \(file.displayName) to rejected/: \(error); refused because \(shown)")
        }
    }

    /// An intake error as one line for a log or an `.error` file: the id escaped and cut to
    /// ``UntrustedText/idLimit``, the problem (which may quote the request) to a reason's bound.
    static func describe(_ error: IntakeError) -> String {
        var parts: [String] = []
        if let line = error.line { parts.append("line \(line)") }
        if let id = error.procedureID { parts.append("procedure \(UntrustedText.escaped(id))") }
        let problem = UntrustedText.escaped(error.problem, limit: UntrustedText.reasonLimit)
        return parts.isEmpty ? problem : parts.joined(separator: ", ") + ": " + problem
    }

    /// The plan for a procedure under `config`, or why it cannot be planned.
    public static func plan(_ procedure: Procedure, config: AftercareConfiguration, now: Date)
        -> Result<[PlannedReminder], IntakeError>
    {
        guard let careProtocol = config.protocols[procedure.protocolID] else {
            let known = config.protocols.keys.sorted().joined(separator: ", ")
            return .failure(
                IntakeError(
                    procedureID: procedure.id,
                    problem: "unknown protocol '\(procedure.protocolID)' (configured: \(known))"
                )
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

/// Where intake does its blocking file work (listing the spool, reading and parsing files, renames
/// and fsyncs): a serial queue of its own, so none of it ever holds a thread of Swift's cooperative
/// pool, which the dispatch pipeline needs to keep turning.
enum FileWork {
    static let queue: DispatchQueue = {
        let queue = DispatchQueue(label: "aftercare.intake.files", qos: .utility)
        queue.setSpecific(key: key, value: true)
        return queue
    }()
    private static let key = DispatchSpecificKey<Bool>()

    /// Whether the caller runs on the file-work queue.
    static var isCurrent: Bool { DispatchQueue.getSpecific(key: key) == true }

    /// Runs `body` on the file-work queue and waits for it without blocking the caller's thread.
    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }
    }
}

/// Why the store refused a batch, handed from the task that applied it to the pass that reports it.
final class FailureNote: Sendable {
    let text = Mutex<String?>(nil)
}

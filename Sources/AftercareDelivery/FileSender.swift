import AftercareCore
import Foundation
import Synchronization

/// Writes each message as one file in an outbox folder: the zero-setup sender for a first run, and a
/// hand-off point for any system that can watch a folder.
///
/// Each message is written to a hidden temporary name, flushed to disk, then renamed to
/// `<reminder id>.txt`, so a reader never sees half a message. A retry of the same reminder replaces
/// the file rather than adding a second one.
///
/// The write and its fsyncs block, so they run on the sender's own serial queue, never on the
/// cooperative pool: a slow disk holds back outbox messages, not every task of the daemon.
public struct FileSender: Sender {
    /// The outbox folder; created if missing.
    public let outbox: URL
    /// Where every write and fsync runs, one at a time.
    let writer = DispatchQueue(label: "aftercare-outbox", qos: .utility)

    public init(outbox: URL) throws {
        self.outbox = outbox
        try FileManager.default.createDirectory(at: outbox, withIntermediateDirectories: true)
    }

    public func send(_ message: OutboundMessage) async -> SendResult {
        await withCheckedContinuation { continuation in
            _ = submit(message) { continuation.resume(returning: $0) }
        }
    }

    /// Queues the write; `completion` is called on the writer queue. A ticket cancelled before the
    /// write starts abandons it (a `retry`); a write under way always finishes.
    public func submit(
        _ message: OutboundMessage, completion: @escaping @Sendable (SendResult) -> Void
    ) -> SendTicket {
        let cancelled = CancelFlag()
        let outbox = outbox
        writer.async {
            if cancelled.isSet {
                completion(SendResult(.retry(after: nil, reason: "cancelled before it was written")))
            } else {
                completion(Self.write(message, to: outbox))
            }
        }
        return SendTicket { cancelled.set() }
    }

    /// Waits for the writes already queued.
    public func shutdown() async {
        await withCheckedContinuation { continuation in writer.async { continuation.resume() } }
    }

    /// Writes one message durably; on the writer queue only.
    static func write(_ message: OutboundMessage, to outbox: URL) -> SendResult {
        let name = message.reminderID + ".txt"
        do {
            try AtomicFile.write(Data(render(message).utf8), to: outbox.appendingPathComponent(name))
            return SendResult(.delivered(detail: "written to outbox/\(name)"))
        } catch {
            // A full disk or a permissions slip can clear up; let the retry schedule decide.
            return SendResult(.retry(after: nil, reason: "outbox write failed: \(error)"))
        }
    }

    /// The file's text: a small header block, a blank line, then the body.
    static func render(_ message: OutboundMessage) -> String {
        let due = ISO8601DateFormatter.string(from: message.dueAt, timeZone: .gmt, formatOptions: [.withInternetDateTime])
        return """
            Reminder-Id: \(message.reminderID)
            Procedure-Id: \(message.procedureID)
            Patient-Id: \(message.patientID)
            Step: \(message.stepID)
            Channel: \(message.channel)
            To: \(message.address)
            Due: \(due)
            Attempt: \(message.attempt)
            Subject: \(message.subject)

            \(message.body)

            """
    }
}

/// A one-way flag set from any thread.
final class CancelFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .acquiring) }
    func set() { flag.store(true, ordering: .releasing) }
}

/// Durable whole-file writes: temporary file, fsync, rename, fsync of the folder.
public enum AtomicFile {
    public struct WriteError: Error, CustomStringConvertible {
        public var path: String
        public var errno: Int32
        public var description: String { "\(path): \(String(cString: strerror(errno)))" }
    }

    /// Writes `data` to `url` so that after a crash the file is either absent, the old version, or
    /// entirely the new one.
    public static func write(_ data: Data, to url: URL, permissions: mode_t = 0o640) throws {
        let folder = url.deletingLastPathComponent().path
        let temporary = folder + "/." + url.lastPathComponent + ".\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, permissions)
        guard fd >= 0 else { throw WriteError(path: temporary, errno: errno) }
        var ok = false
        defer {
            if !ok { unlink(temporary) }
        }
        try data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Foundation.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    let code = errno
                    close(fd)
                    throw WriteError(path: temporary, errno: code)
                }
                offset += written
            }
        }
        if fsync(fd) != 0 {
            let code = errno
            close(fd)
            throw WriteError(path: temporary, errno: code)
        }
        close(fd)
        guard rename(temporary, url.path) == 0 else { throw WriteError(path: url.path, errno: errno) }
        ok = true
        syncDirectory(folder)
    }

    /// Makes a rename or unlink in `folder` durable.
    public static func syncDirectory(_ folder: String) {
        let fd = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}

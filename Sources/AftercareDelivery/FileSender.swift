import AftercareCore
import Foundation

/// Writes each message as one file in an outbox folder: the zero-setup sender for a first run, and a
/// hand-off point for any system that can watch a folder.
///
/// Each message is written to a hidden temporary name, flushed to disk, then renamed to
/// `<reminder id>.txt`, so a reader never sees half a message. A retry of the same reminder replaces
/// the file rather than adding a second one.
public struct FileSender: Sender {
    /// The outbox folder; created if missing.
    public let outbox: URL

    public init(outbox: URL) throws {
        self.outbox = outbox
        try FileManager.default.createDirectory(at: outbox, withIntermediateDirectories: true)
    }

    public func send(_ message: OutboundMessage) async -> SendResult {
        let text = Self.render(message)
        let name = message.reminderID + ".txt"
        do {
            try AtomicFile.write(Data(text.utf8), to: outbox.appendingPathComponent(name))
            return SendResult(.delivered(detail: "written to outbox/\(name)"))
        } catch {
            // A full disk or a permissions slip can clear up; let the retry schedule decide.
            return SendResult(.retry(after: nil, reason: "outbox write failed: \(error)"))
        }
    }

    public func shutdown() async {}

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

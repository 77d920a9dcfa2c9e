import AftercareCore
import Foundation

/// The intake queue: a spool folder in the manner of `at`/`atd`.
///
/// - `tmp/`: writers create files here, fsync them, then rename them into `incoming/`;
/// - `incoming/`: complete files waiting for the daemon;
/// - `rejected/`: files the daemon refused, each with a `<name>.error` beside it saying why.
///
/// Staff need write access to the spool only, never to the database.
public struct Spool: Sendable {
    public let root: URL
    public var temporary: URL { root.appendingPathComponent("tmp") }
    public var incoming: URL { root.appendingPathComponent("incoming") }
    public var rejected: URL { root.appendingPathComponent("rejected") }

    public init(root: String) {
        self.root = URL(fileURLWithPath: root)
    }

    /// Creates the three folders if missing.
    public func prepare() throws {
        for folder in [temporary, incoming, rejected] {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        }
    }

    /// Writes requests as one file into `incoming/` atomically: in `tmp/` first, fsynced, renamed in.
    /// Returns the file's name.
    @discardableResult
    public func submit(_ requests: [IntakeRequest], label: String, requestedBy: String? = Spool.currentUser)
        throws -> String
    {
        var data = Data()
        for request in requests {
            data.append(IntakeCodec.encode(request, requestedBy: requestedBy))
            data.append(UInt8(ascii: "\n"))
        }
        let stamp = Timestamp.format(Date(), in: .gmt).replacingOccurrences(of: ":", with: "")
            .replacingOccurrences(of: "+0000", with: "Z")
        let safeLabel = String(label.unicodeScalars.map { scalar -> Character in
            CharacterSet.alphanumerics.contains(scalar) && scalar.isASCII || scalar == "-" || scalar == "_"
                ? Character(scalar) : "_"
        }.prefix(64))
        let name = "\(stamp)-\(safeLabel)-\(String(UInt32.random(in: 0...UInt32.max), radix: 36)).json"
        let staged = temporary.appendingPathComponent(name)
        for folder in [temporary, incoming] where !FileManager.default.fileExists(atPath: folder.path) {
            do {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            } catch {
                throw SpoolError("cannot create the spool folder \(folder.path): \(error.localizedDescription)")
            }
        }
        try writeDurably(data, to: staged)
        guard rename(staged.path, incoming.appendingPathComponent(name).path) == 0 else {
            let code = errno
            unlink(staged.path)
            throw SpoolError("cannot move \(name) into \(incoming.path): \(String(cString: strerror(code)))")
        }
        syncFolder(incoming.path)
        return name
    }

    /// The user running this process, as staff commands name themselves in their requests.
    public static var currentUser: String? {
        guard let entry = getpwuid(getuid()), let name = entry.pointee.pw_name else { return nil }
        return String(cString: name)
    }

    /// A file waiting in `incoming/`.
    public struct PendingFile: Sendable, Hashable {
        public var name: String
        public var modified: Date
        public var size: Int
        public var ownerUID: uid_t
    }

    /// Complete files waiting in `incoming/`, oldest first (by modification time, then name). Hidden
    /// files and `*.tmp` are writers' work in progress and are left alone.
    public func pendingFiles() throws -> [PendingFile] {
        guard let directory = opendir(incoming.path) else {
            throw SpoolError("cannot read \(incoming.path): \(String(cString: strerror(errno)))")
        }
        defer { closedir(directory) }
        var files: [PendingFile] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name.hasPrefix(".") || name.hasSuffix(".tmp") { continue }
            var info = stat()
            guard stat(incoming.path + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            let modified = Date(
                timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
            files.append(PendingFile(name: name, modified: modified, size: Int(info.st_size), ownerUID: info.st_uid))
        }
        return files.sorted { ($0.modified, $0.name) < ($1.modified, $1.name) }
    }

    /// The contents of a waiting file.
    public func read(_ file: PendingFile) throws -> Data {
        try Data(contentsOf: incoming.appendingPathComponent(file.name))
    }

    /// Removes ingested files and makes the removal durable. Call only once their contents are
    /// committed to the database.
    public func remove(_ names: [String]) {
        guard !names.isEmpty else { return }
        for name in names { unlink(incoming.appendingPathComponent(name).path) }
        syncFolder(incoming.path)
    }

    /// Moves a refused file to `rejected/` with `<name>.error` beside it. The reason is written
    /// first, so a crash in between leaves the file in `incoming/` to be refused again, never lost.
    public func reject(_ name: String, reason: String) throws {
        var target = name
        var counter = 1
        while FileManager.default.fileExists(atPath: rejected.appendingPathComponent(target).path) {
            target = "\(name).\(counter)"
            counter += 1
        }
        try writeDurably(Data((reason + "\n").utf8), to: rejected.appendingPathComponent(target + ".error"))
        guard rename(incoming.appendingPathComponent(name).path, rejected.appendingPathComponent(target).path) == 0
        else { throw SpoolError("cannot move \(name) to \(rejected.path): \(String(cString: strerror(errno)))") }
        syncFolder(rejected.path)
        syncFolder(incoming.path)
    }

    private func writeDurably(_ data: Data, to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o660)
        guard fd >= 0 else { throw SpoolError("cannot create \(url.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let ok = data.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += written
            }
            return true
        }
        guard ok, fsync(fd) == 0 else {
            let code = errno
            unlink(url.path)
            throw SpoolError("cannot write \(url.path): \(String(cString: strerror(code)))")
        }
    }

    private func syncFolder(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }
}

/// A spool folder problem, as one line.
public struct SpoolError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

import AftercareCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The intake queue: a spool folder in the manner of `at`/`atd`.
///
/// - `tmp/`: writers create files here, fsync them, then rename them into `incoming/`;
/// - `incoming/`: complete files waiting for the daemon;
/// - `rejected/`: whatever the daemon refused, each with a `<name>.error` beside it saying why.
///
/// Staff need write access to the spool only, never to the database. So what they put there is
/// untrusted: the daemon reads nothing but a regular file it opened itself, bounded in size, and
/// moves anything else (a symbolic link, a FIFO, a folder, a device) to `rejected/` without opening it.
public struct Spool: Sendable {
    public let root: URL
    public var temporary: URL { root.appendingPathComponent("tmp") }
    public var incoming: URL { root.appendingPathComponent("incoming") }
    public var rejected: URL { root.appendingPathComponent("rejected") }
    /// The largest file the daemon reads; a bigger one is refused without being read.
    public let maxFileSize: Int

    /// 64 MiB: some 100,000 procedures in one JSON Lines file.
    public static let defaultMaxFileSize = 64 * 1024 * 1024

    public init(root: String, maxFileSize: Int = Spool.defaultMaxFileSize) {
        self.root = URL(fileURLWithPath: root)
        self.maxFileSize = maxFileSize
    }

    /// Creates the three folders if missing and returns the names of those it had to create. A
    /// folder's name taken by anything else (a symbolic link, a file) is an error: the daemon never
    /// reads or writes through it.
    @discardableResult
    public func prepare() throws -> [String] {
        var created: [String] = []
        for folder in [temporary, incoming, rejected] {
            var info = stat()
            if lstat(folder.path, &info) == 0 {
                guard (info.st_mode & S_IFMT) == S_IFDIR else {
                    throw SpoolError("\(folder.path) is \(EntryKind(mode: info.st_mode)), not a folder: remove it")
                }
                continue
            }
            do {
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            } catch {
                throw SpoolError("cannot create the spool folder \(folder.path): \(error.localizedDescription)")
            }
            created.append(folder.lastPathComponent)
        }
        return created
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

    /// An entry waiting in `incoming/`, as `lstat` saw it when the folder was listed. Only a
    /// regular file with a UTF-8 name is ever read; anything else is refused.
    public struct PendingFile: Sendable, Hashable {
        /// The name; for a name that is not valid UTF-8, its escaped form (never used to reach the file).
        public var name: String
        /// The name's bytes as they are in the folder.
        public var rawName: [UInt8]
        public var modified: Date
        public var size: Int
        public var ownerUID: uid_t
        public var kind: EntryKind
        public var linkCount: Int

        /// Whether the name is valid UTF-8 (and so can be stored and shown as it is).
        public var nameIsValid: Bool { String(validating: rawName, as: UTF8.self) != nil }
        /// The name escaped and bounded, for log lines and `.error` files.
        public var displayName: String { UntrustedText.escaped(bytes: rawName, limit: Spool.nameLimit) }
    }

    /// What kind of thing an entry in `incoming/` is.
    public enum EntryKind: Sendable, Hashable, CustomStringConvertible {
        case regular, symbolicLink, fifo, folder, characterDevice, blockDevice, socket, unknown

        init(mode: mode_t) {
            switch mode & S_IFMT {
            case S_IFREG: self = .regular
            case S_IFLNK: self = .symbolicLink
            case S_IFIFO: self = .fifo
            case S_IFDIR: self = .folder
            case S_IFCHR: self = .characterDevice
            case S_IFBLK: self = .blockDevice
            case S_IFSOCK: self = .socket
            default: self = .unknown
            }
        }

        public var description: String {
            switch self {
            case .regular: return "a regular file"
            case .symbolicLink: return "a symbolic link"
            case .fifo: return "a FIFO"
            case .folder: return "a folder"
            case .characterDevice: return "a character device"
            case .blockDevice: return "a block device"
            case .socket: return "a socket"
            case .unknown: return "not a regular file"
            }
        }
    }

    /// What reading a waiting file came to.
    public enum Reading: Sendable {
        /// Its whole contents, at most ``maxFileSize`` bytes.
        case contents(Data)
        /// It is gone (another pass took it, or its writer removed it): nothing to do.
        case gone
        /// It can never be taken, for this reason: it goes to `rejected/`.
        case refused(String)
        /// The daemon itself is short of something (descriptors, memory): look again later.
        case later(String)
    }

    /// Names are at most `NAME_MAX` bytes; shown escaped, they are bounded to as many characters.
    static let nameLimit = 255

    /// Every entry waiting in `incoming/`, oldest first (by modification time, then name), whatever
    /// its kind: the caller refuses what is not a regular file. Hidden files and `*.tmp` are writers'
    /// work in progress and are left alone.
    public func pendingFiles() throws -> [PendingFile] {
        let folder = try openFolder(incoming)
        guard let directory = fdopendir(folder) else {
            let code = errno
            close(folder)
            throw SpoolError("cannot read \(incoming.path): \(String(cString: strerror(code)))")
        }
        defer { closedir(directory) }
        var files: [PendingFile] = []
        while let entry = readdir(directory) {
            let rawName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(raw.prefix { $0 != 0 })
            }
            if rawName.first == UInt8(ascii: ".") || rawName.suffix(4).elementsEqual(".tmp".utf8) { continue }
            var info = stat()
            let found = withCName(rawName) { fstatat(dirfd(directory), $0, &info, AT_SYMLINK_NOFOLLOW) == 0 }
            guard found else { continue }
            let modified = Date(
                timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
            files.append(
                PendingFile(
                    name: String(validating: rawName, as: UTF8.self)
                        ?? UntrustedText.escaped(bytes: rawName, limit: Self.nameLimit),
                    rawName: rawName, modified: modified, size: Int(info.st_size), ownerUID: info.st_uid,
                    kind: EntryKind(mode: info.st_mode), linkCount: Int(info.st_nlink)
                )
            )
        }
        return files.sorted { ($0.modified, $0.name, $0.rawName.count) < ($1.modified, $1.name, $1.rawName.count) }
    }

    /// The contents of a waiting file, read only if it is a regular file with one link and a UTF-8
    /// name, opened without following a symbolic link or blocking on a FIFO, its size checked on the
    /// open descriptor, and read no further than ``maxFileSize`` + 1 bytes.
    public func read(_ file: PendingFile) -> Reading {
        guard file.nameIsValid else { return .refused("the file name is not valid UTF-8") }
        let folder: Int32
        do {
            folder = try openFolder(incoming)
        } catch {
            return .later("\(error)")
        }
        defer { close(folder) }
        var info = stat()
        // Look before opening: opening a hard link to the database would drop SQLite's locks on it.
        guard withCName(file.rawName, { fstatat(folder, $0, &info, AT_SYMLINK_NOFOLLOW) }) == 0 else {
            return errno == ENOENT ? .gone : .refused("cannot be examined: \(String(cString: strerror(errno)))")
        }
        if let refusal = Self.refusal(info, limit: maxFileSize) { return .refused(refusal) }
        var fd: Int32
        repeat {
            fd = withCName(file.rawName) {
                openat(folder, $0, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
            }
        } while fd < 0 && errno == EINTR
        guard fd >= 0 else {
            let code = errno
            switch code {
            case ENOENT: return .gone
            case ELOOP: return .refused("\(EntryKind.symbolicLink) is not a spool file")
            case EMFILE, ENFILE, ENOMEM, EAGAIN:
                return .later("cannot open \(file.displayName): \(String(cString: strerror(code)))")
            default: return .refused("cannot be read: \(String(cString: strerror(code)))")
            }
        }
        defer { close(fd) }
        guard fstat(fd, &info) == 0 else { return .refused("cannot be examined: \(String(cString: strerror(errno)))") }
        if let refusal = Self.refusal(info, limit: maxFileSize) { return .refused(refusal) }
        switch Self.readBounded(fd, limit: maxFileSize, expected: Int(info.st_size)) {
        case .complete(let data): return .contents(data)
        case .tooLarge: return .refused("the file grew past the limit of \(maxFileSize) bytes while it was read")
        case .failed(let code): return .refused("cannot be read: \(String(cString: strerror(code)))")
        }
    }

    /// Why a file with this status is never read, if it is not to be.
    static func refusal(_ info: stat, limit: Int) -> String? {
        let kind = EntryKind(mode: info.st_mode)
        guard kind == .regular else { return "\(kind) is not a spool file" }
        guard info.st_nlink == 1 else {
            return "the file has \(info.st_nlink) hard links; spool files are moved in with rename, never linked"
        }
        guard info.st_size <= limit else {
            return "the file is \(info.st_size) bytes, over the limit of \(limit) bytes"
        }
        return nil
    }

    /// The outcome of ``readBounded(_:limit:expected:)``.
    enum BoundedRead: Equatable {
        case complete(Data)
        /// More than `limit` bytes were there; `read` bytes were read to find out (never more than `limit` + 1).
        case tooLarge(read: Int)
        case failed(Int32)
    }

    /// Reads to end of file, never holding more than `limit` + 1 bytes however much the file has or
    /// claims to have. `expected` (the size `fstat` gave) only sizes the first allocation.
    static func readBounded(_ fd: Int32, limit: Int, expected: Int, chunk: Int = 64 * 1024) -> BoundedRead {
        var data = Data(capacity: min(max(expected, 0), limit) + 1)
        var buffer = [UInt8](repeating: 0, count: max(1, min(chunk, limit + 1)))
        while true {
            let wanted = min(buffer.count, limit + 1 - data.count)
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, wanted) }
            if count < 0 {
                if errno == EINTR { continue }
                return .failed(errno)
            }
            if count == 0 { return .complete(data) }
            data.append(contentsOf: buffer[0..<count])
            if data.count > limit { return .tooLarge(read: data.count) }
        }
    }

    /// Removes ingested files and makes the removal durable. Call only once their contents are
    /// committed to the database.
    public func remove(_ names: [String]) {
        guard !names.isEmpty, let folder = try? openFolder(incoming) else { return }
        defer { close(folder) }
        for name in names { unlinkat(folder, name, 0) }
        fsync(folder)
    }

    /// Moves a refused entry (whatever it is: a symbolic link or a folder moves as itself, its
    /// target is never touched) to `rejected/` with `<name>.error` beside it, one escaped line
    /// saying why. The reason is written first, so a crash in between leaves the entry in
    /// `incoming/` to be refused again, never lost. A name that is not UTF-8, or too long to take
    /// the `.error` suffix, is given a safe one, and the `.error` line quotes the original.
    /// Returns the name it has in `rejected/`, or nil if it was gone already.
    @discardableResult
    public func reject(_ file: PendingFile, reason: String) throws -> String? {
        let from = try openFolder(incoming)
        defer { close(from) }
        let to = try openFolder(rejected)
        defer { close(to) }
        let base = Self.rejectedName(file.rawName)
        var line = UntrustedText.escaped(reason, limit: UntrustedText.reasonLimit)
        if base != file.name { line += " (name in incoming/: \(file.displayName))" }
        let text = Data((line + "\n").utf8)
        for counter in 0..<10_000 {
            let target = counter == 0 ? base : "\(base).\(counter)"
            if exists(target, in: to) { continue }
            let errorFD = openat(to, target + ".error", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o660)
            if errorFD < 0 {
                if errno == EEXIST { continue }
                throw SpoolError("cannot create \(rejected.path)/\(target).error: \(String(cString: strerror(errno)))")
            }
            do {
                try writeAll(text, to: errorFD, path: rejected.path + "/" + target + ".error")
            } catch {
                close(errorFD)
                unlinkat(to, target + ".error", 0)
                throw error
            }
            close(errorFD)
            let moved = withCName(file.rawName) { renameWithoutReplacing(from, $0, to, target) }
            if moved != 0 {
                let code = errno
                unlinkat(to, target + ".error", 0)
                if code == EEXIST { continue }
                if code == ENOENT { return nil }
                throw SpoolError(
                    "cannot move \(file.displayName) to \(rejected.path): \(String(cString: strerror(code)))")
            }
            fsync(to)
            fsync(from)
            return target
        }
        throw SpoolError("cannot find a free name in \(rejected.path) for \(file.displayName)")
    }

    /// The name a refused entry takes in `rejected/`: its own if it is UTF-8 and leaves room for a
    /// `.N` counter and the `.error` suffix within `NAME_MAX`; otherwise a readable prefix (bytes
    /// that are not UTF-8 as `_`) and a hash of the whole name, so distinct names stay distinct.
    static func rejectedName(_ raw: [UInt8]) -> String {
        let room = Int(NAME_MAX) - ".error".utf8.count - ".9999".utf8.count
        if let name = String(validating: raw, as: UTF8.self), !name.isEmpty, raw.count <= room { return name }
        var prefix = ""
        var bytes = 0
        for scalar in String(decoding: raw, as: UTF8.self).unicodeScalars {
            let shown: Unicode.Scalar = scalar == "\u{FFFD}" || scalar == "/" ? "_" : scalar
            let size = String(shown).utf8.count
            if bytes + size > 200 { break }
            prefix.unicodeScalars.append(shown)
            bytes += size
        }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a: not for secrecy, only to keep names apart
        for byte in raw {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let digits = String(hash, radix: 16)
        return prefix + "-" + String(repeating: "0", count: 16 - digits.count) + digits
    }

    private func withCName<T>(_ raw: [UInt8], _ body: (UnsafePointer<CChar>) -> T) -> T {
        (raw + [0]).withUnsafeBufferPointer { bytes in
            bytes.baseAddress!.withMemoryRebound(to: CChar.self, capacity: bytes.count, body)
        }
    }

    private func exists(_ name: String, in folder: Int32) -> Bool {
        var info = stat()
        return fstatat(folder, name, &info, AT_SYMLINK_NOFOLLOW) == 0 || errno != ENOENT
    }

    /// `renameat2(…, RENAME_NOREPLACE)`: never replaces what is there (a planted name in `rejected/`
    /// cannot make the daemon overwrite anything). Falls back to a checked `renameat` on file systems
    /// without it.
    private func renameWithoutReplacing(_ from: Int32, _ name: UnsafePointer<CChar>, _ to: Int32, _ target: String)
        -> Int32
    {
        if let renameat2 = Self.renameat2 {
            let result = renameat2(from, name, to, target, 1)  // RENAME_NOREPLACE
            guard result != 0, errno == EINVAL || errno == ENOSYS else { return result }
        }
        if exists(target, in: to) {
            errno = EEXIST
            return -1
        }
        return renameat(from, name, to, target)
    }

    /// glibc's `renameat2`, which Swift's Glibc module leaves out (it sits behind `_GNU_SOURCE`).
    private typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32)
        -> Int32
    private static let renameat2: RenameAt2? = dlsym(nil, "renameat2").map { unsafeBitCast($0, to: RenameAt2.self) }

    /// Opens a spool folder without following a symbolic link in its place.
    private func openFolder(_ url: URL) throws -> Int32 {
        let fd = open(url.path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ELOOP || code == ENOTDIR {
                throw SpoolError("\(url.path) is not a folder (a symbolic link?): the daemon will not read through it")
            }
            throw SpoolError("cannot open \(url.path): \(String(cString: strerror(code)))")
        }
        return fd
    }

    private func writeAll(_ data: Data, to fd: Int32, path: String) throws {
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
        guard ok, fsync(fd) == 0 else { throw SpoolError("cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    private func writeDurably(_ data: Data, to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o660)
        guard fd >= 0 else { throw SpoolError("cannot create \(url.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        do {
            try writeAll(data, to: fd, path: url.path)
        } catch {
            unlink(url.path)
            throw error
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

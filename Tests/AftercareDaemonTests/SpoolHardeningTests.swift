import AftercareConfig
import AftercareCore
@testable import AftercareDaemon
import AftercareStore
import Foundation
import Logging
import Synchronization
import Testing

/// One intake pass at a time over a real spool and database, its journal lines captured.
private final class IntakeBench: Sendable {
    let harness: DaemonHarness
    let config: AftercareConfiguration
    let store: ReminderStore
    let spool: Spool
    let journal = Shared<[String]>([])

    init(maxFileSize: Int = Spool.defaultMaxFileSize) throws {
        harness = try DaemonHarness(start: SpoolHardeningTests.afternoon)
        config = try AftercareConfiguration.load(path: harness.root + "/aftercare.toml")
        try FileManager.default.createDirectory(atPath: config.paths.stateDirectory, withIntermediateDirectories: true)
        store = try ReminderStore(path: config.paths.database)
        spool = Spool(root: config.paths.spool, maxFileSize: maxFileSize)
        try spool.prepare()
    }

    var journalLines: [String] { journal.withLock { $0 } }

    /// Runs one intake pass; returns whether it asked to look again later.
    @discardableResult
    func pass(observingFileWork observe: (@Sendable (Bool) -> Void)? = nil) async -> Bool {
        let journal = self.journal
        let handler = JournalLogHandler(label: "test", level: .trace, environment: ["JOURNAL_STREAM": "8:1"]) { line in
            journal.withLock { $0.append(line) }
        }
        var intake = Intake(spool: spool, store: store, config: config, clock: harness.clock,
                            logger: Logger(label: "test", factory: { _ in handler }))
        intake.onFileWork = observe
        return await intake.run().retryAt != nil
    }

    func incoming(_ name: String) -> String { spool.incoming.path + "/" + name }
    func rejected(_ name: String) -> String { spool.rejected.path + "/" + name }

    /// Writes a file into `incoming/`, old enough that intake will not wait for its writer.
    func drop(_ name: String, _ text: String, old: Bool = true) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: incoming(name)))
        if old { try makeOld(incoming(name)) }
    }

    func makeOld(_ path: String) throws {
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-60)], ofItemAtPath: path)
    }

    func incomingNames() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: spool.incoming.path) }
    func rejectedNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: spool.rejected.path).sorted()
    }

    func reason(_ name: String) throws -> String {
        try String(contentsOfFile: rejected(name + ".error"), encoding: .utf8)
    }

    func kind(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & S_IFMT : 0
    }

    static func procedureJSON(_ id: String) -> String {
        String(decoding: IntakeCodec.encode(.procedure(DaemonHarness.procedure(id, at: SpoolHardeningTests.afternoon))),
               as: UTF8.self)
    }
}

/// A value shared with closures that run on other threads.
private final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { value.withLock { body(&$0) } }
}

/// Creates a file whose name is raw bytes (not necessarily UTF-8) in `folder`.
private func createFile(named raw: [UInt8], in folder: String, contents: String) throws {
    let path = Array(folder.utf8) + [UInt8(ascii: "/")] + raw + [0]
    let fd = path.withUnsafeBufferPointer { bytes in
        bytes.baseAddress!.withMemoryRebound(to: CChar.self, capacity: bytes.count) {
            open($0, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        }
    }
    guard fd >= 0 else { throw SpoolError("cannot create the test file: \(String(cString: strerror(errno)))") }
    _ = Array(contents.utf8).withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
    close(fd)
}

@Suite("The spool reads only regular files it opened itself, and refuses the rest", .serialized)
struct SpoolHardeningTests {
    static let afternoon = Date(timeIntervalSince1970: 1_780_000_000)

    @Test("a symbolic link to the database is moved as a link, never opened; the database stays whole")
    func symlinkToDatabase() async throws {
        let python = try #require(
            ProcessInfo.processInfo.environment["AFTERCARE_TEST_PYTHON"], "set AFTERCARE_TEST_PYTHON")
        let harness = try DaemonHarness(start: Self.afternoon)
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-1", at: Self.afternoon))], label: "P-1")
        let database = harness.state + "/aftercare.sqlite"
        #expect(await harness.eventually { (try? await harness.store().procedure("P-1")) != nil })
        let incoming = harness.spool.incoming.path
        let links = [("evil.json", database), ("wal.json", database + "-wal"), ("nowhere.json", "/nonexistent")]
        for (name, target) in links {
            try FileManager.default.createSymbolicLink(atPath: incoming + "/" + name, withDestinationPath: target)
        }
        // Wake the daemon: a symbolic link made in place raises no event that intake listens for.
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-2", at: Self.afternoon))], label: "P-2")
        let rejected = harness.spool.rejected.path
        #expect(await harness.eventually {
            (try? FileManager.default.contentsOfDirectory(atPath: incoming))?.isEmpty == true
        })
        for name in ["evil.json", "wal.json", "nowhere.json"] {
            // The link itself moved; its target is where it was.
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: rejected + "/" + name).hasPrefix("/"))
            #expect(try String(contentsOfFile: rejected + "/" + name + ".error", encoding: .utf8)
                == "a symbolic link is not a spool file\n")
        }
        // Another process opens and closes the database (as `aftercare audit prune` did); then the
        // daemon writes again. Had the daemon opened the database through the link, its locks would
        // be gone and that process would have removed the live WAL under it.
        func sqlite(_ statement: String) throws -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = ["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                + "print(c.execute(sys.argv[2]).fetchone()[0]); c.close()", database, statement]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            process.waitUntilExit()
            return String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try sqlite("PRAGMA integrity_check") == "ok")
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-3", at: Self.afternoon))], label: "P-3")
        #expect(await harness.eventually { (try? await harness.store().procedure("P-3")) != nil })
        try await harness.stop()
        #expect(try sqlite("PRAGMA integrity_check") == "ok")
        #expect(try sqlite("SELECT count(*) FROM procedure WHERE id IN ('P-1','P-2','P-3')") == "3")
        var info = stat()
        #expect(lstat(database, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG)
    }

    @Test("a FIFO, a folder, a device and a socket leave incoming/ for rejected/ without blocking intake",
          .timeLimit(.minutes(1)))
    func notRegularFiles() async throws {
        let bench = try IntakeBench()
        #expect(mkfifo(bench.incoming("pipe.json"), 0o666) == 0)
        try FileManager.default.createDirectory(
            atPath: bench.incoming("folder.json"), withIntermediateDirectories: false)
        try bench.drop("folder.json/inside.json", IntakeBench.procedureJSON("P-inside"))
        let device = mknod(bench.incoming("null.json"), S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0
        let socketFD = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socketFD) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let socketPath = Array(bench.incoming("s.json").utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: socketPath) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socketFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        try bench.drop("good.json", IntakeBench.procedureJSON("P-good"))

        await bench.pass()

        #expect(try bench.incomingNames().isEmpty)
        #expect(try await bench.store.procedure("P-good") != nil)
        #expect(try await bench.store.procedure("P-inside") == nil)
        #expect(bench.kind(bench.rejected("pipe.json")) == S_IFIFO)
        #expect(try bench.reason("pipe.json") == "a FIFO is not a spool file\n")
        #expect(bench.kind(bench.rejected("folder.json")) == S_IFDIR)
        #expect(try bench.reason("folder.json") == "a folder is not a spool file\n")
        if device {
            #expect(bench.kind(bench.rejected("null.json")) == S_IFCHR)
            #expect(try bench.reason("null.json") == "a character device is not a spool file\n")
        }
        if bound == 0 {
            #expect(bench.kind(bench.rejected("s.json")) == S_IFSOCK)
            #expect(try bench.reason("s.json") == "a socket is not a spool file\n")
        }
        // Each refusal is in the delivery log and the journal.
        let rejections = bench.journalLines.filter { $0.contains("rejected ") }
        #expect(rejections.contains { $0.hasPrefix("<4>rejected pipe.json: a FIFO is not a spool file") })
        let logged = try await bench.store.auditLog(AuditFilter(outcome: "rejected")).map(\.entry.detail)
        #expect(logged.count == 2 + (device ? 1 : 0) + (bound == 0 ? 1 : 0))
        #expect(logged.contains("pipe.json: a FIFO is not a spool file"))
    }

    @Test("a file over the size limit is refused from its size on the descriptor, without being read")
    func oversize() async throws {
        let bench = try IntakeBench(maxFileSize: 1024)
        try bench.drop("big.json", IntakeBench.procedureJSON("P-big") + String(repeating: " ", count: 2048))
        try bench.drop("small.json", IntakeBench.procedureJSON("P-small"))
        await bench.pass()
        #expect(try bench.incomingNames().isEmpty)
        #expect(try await bench.store.procedure("P-big") == nil)
        #expect(try await bench.store.procedure("P-small") != nil)
        let size = try FileManager.default.attributesOfItem(atPath: bench.rejected("big.json"))[.size] as? Int
        #expect(try bench.reason("big.json") == "the file is \(size ?? -1) bytes, over the limit of 1024 bytes\n")
    }

    @Test("the bounded read never holds more than the limit + 1 bytes, whatever the file holds")
    func boundedRead() throws {
        let path = NSTemporaryDirectory() + "aftercare-bounded-" + UUID().uuidString
        defer { unlink(path) }
        try Data(repeating: 0x41, count: 1 << 20).write(to: URL(fileURLWithPath: path))
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        // The size fstat gives is ignored for the bound: a file can grow while it is read.
        #expect(Spool.readBounded(fd, limit: 1000, expected: 10, chunk: 256) == .tooLarge(read: 1001))
        lseek(fd, 0, SEEK_SET)
        #expect(Spool.readBounded(fd, limit: 1000, expected: 1 << 30) == .tooLarge(read: 1001))
        lseek(fd, 0, SEEK_SET)
        let whole = Data(repeating: 0x41, count: 1 << 20)
        #expect(Spool.readBounded(fd, limit: 1 << 20, expected: 1 << 20) == .complete(whole))
    }

    @Test("a file the daemon may not read is refused with the reason, not retried forever")
    func unreadable() async throws {
        // Tests run as root, and root reads anything. A thread whose file-system uid is `nobody`
        // loses that power (setfsuid(2) is per thread), so the read is tried there.
        let bench = try IntakeBench()
        try bench.drop("secret.json", IntakeBench.procedureJSON("P-secret"))
        chmod(bench.incoming("secret.json"), 0o600)
        let files = try bench.spool.pendingFiles()
        let file = try #require(files.first)
        typealias SetFSUID = @convention(c) (UInt32) -> Int32
        let setfsuid = try #require(dlsym(nil, "setfsuid").map { unsafeBitCast($0, to: SetFSUID.self) })
        let outcome = Shared<Spool.Reading?>(nil)
        let spool = bench.spool
        let thread = Thread {
            let previous = setfsuid(65534)
            outcome.withLock { $0 = spool.read(file) }
            _ = setfsuid(UInt32(previous))
        }
        thread.start()
        while !thread.isFinished { usleep(1000) }
        guard case .refused(let reason)? = outcome.withLock({ $0 }) else {
            Issue.record("expected a refusal, got \(String(describing: outcome.withLock { $0 }))")
            return
        }
        #expect(reason == "cannot be read: Permission denied")
        try bench.spool.reject(file, reason: reason)
        #expect(try bench.reason("secret.json") == "cannot be read: Permission denied\n")
    }

    @Test("a name that is not UTF-8 is refused under a safe name; the .error quotes the original escaped")
    func invalidName() async throws {
        let bench = try IntakeBench()
        try createFile(named: Array("bad-".utf8) + [0xFF, 0xFE] + Array(".json".utf8), in: bench.spool.incoming.path,
                       contents: IntakeBench.procedureJSON("P-badname"))
        await bench.pass()
        #expect(try bench.incomingNames().isEmpty)
        #expect(try await bench.store.procedure("P-badname") == nil)
        let names = try bench.rejectedNames()
        #expect(names.count == 2)
        let moved = try #require(names.first { !$0.hasSuffix(".error") })
        #expect(moved.hasPrefix("bad-__.json-") && names.contains(moved + ".error"))
        #expect(try bench.reason(moved)
            == #"the file name is not valid UTF-8 (name in incoming/: bad-\x{FF}\x{FE}.json)"# + "\n")
        #expect(bench.journalLines.contains {
            $0.contains(#"rejected bad-\x{FF}\x{FE}.json (now rejected/bad-__.json-"#)
        })
    }

    @Test("a 255-byte name, too long for its .error sibling, is refused under a shortened name")
    func longName() async throws {
        let bench = try IntakeBench()
        let name = String(repeating: "x", count: 250) + ".json"
        try bench.drop(name, "{\"procedure_id\": ")
        try bench.drop(String(repeating: "y", count: 250) + ".json", "{\"procedure_id\": ")
        await bench.pass()
        #expect(try bench.incomingNames().isEmpty)
        let names = try bench.rejectedNames()
        #expect(names.count == 4)
        for moved in names where !moved.hasSuffix(".error") {
            #expect(moved.utf8.count + ".error".utf8.count <= 255)
            #expect(try bench.reason(moved).hasPrefix("not valid JSON (name in incoming/: "))
        }
        #expect(names.contains { $0.hasPrefix(String(repeating: "x", count: 200) + "-") })
    }

    @Test("a hard link (to the database, say) is never opened: looked at again while new, then refused")
    func hardLink() async throws {
        let bench = try IntakeBench()
        try bench.drop("first.json", IntakeBench.procedureJSON("P-first"))
        await bench.pass()
        #expect(link(bench.config.paths.database, bench.incoming("link.json")) == 0)
        // The database was just written: a new link may be a writer's link-then-unlink in progress.
        #expect(await bench.pass())
        #expect(try bench.incomingNames() == ["link.json"])
        try bench.makeOld(bench.config.paths.database)
        #expect(await bench.pass() == false)
        #expect(try bench.incomingNames().isEmpty)
        #expect(try bench.reason("link.json")
            == "the file has 2 hard links; spool files are moved in with rename, never linked\n")
        #expect(try await bench.store.procedure("P-first") != nil)
    }

    @Test("listing, reading, parsing, rejecting and removing spool files all run on the file-work queue")
    func fileWorkOffThePool() async throws {
        let bench = try IntakeBench()
        try bench.drop("good.json", IntakeBench.procedureJSON("P-QUEUE-1"))
        try bench.drop("bad.json", "{\"kind\": \"nonsense\"}")
        let seen = Shared<[Bool]>([])
        await bench.pass(observingFileWork: { onQueue in seen.withLock { $0.append(onQueue) } })
        #expect(try bench.incomingNames().isEmpty)
        #expect(try bench.rejectedNames() == ["bad.json", "bad.json.error"])
        // The listing, two reads, one move to rejected/ and one removal.
        let calls = seen.withLock { $0 }
        #expect(calls.count == 5)
        #expect(calls.allSatisfy { $0 })
        #expect(!FileWork.isCurrent)
    }

    @Test("a half-written regular file is still looked at again rather than refused")
    func settleStillWorks() async throws {
        let bench = try IntakeBench()
        try bench.drop("half.json", "{\"procedure_id\": ", old: false)
        #expect(await bench.pass())
        #expect(try bench.incomingNames() == ["half.json"])
        try bench.makeOld(bench.incoming("half.json"))
        #expect(await bench.pass() == false)
        #expect(try bench.reason("half.json") == "not valid JSON\n")
    }

    @Test("names and ids with line breaks, ESC or bidi controls reach the journal and .error files escaped, one line")
    func logInjection() async throws {
        let bench = try IntakeBench()
        let hostileName = "evil\n<3>forged line\u{1B}[2J\u{202E}nosj.json"
        try bench.drop(hostileName, "{\"procedure_id\": ")
        try bench.drop("crlf.json", #"{"kind":"cancel","procedure_id":"A\r\n<3>forged\u001b[31m\u202eB"}"#)
        let longID = String(repeating: "Z", count: 10_000)
        try bench.drop("long.json", #"{"kind":"cancel","procedure_id":""# + longID + #""}"#)
        await bench.pass()
        #expect(try bench.incomingNames().isEmpty)

        let lines = bench.journalLines
        #expect(!lines.isEmpty)
        for line in lines {
            #expect(line.last == "\n" && line.dropLast().allSatisfy { $0 != "\n" && $0 != "\r" })
            #expect(!line.unicodeScalars.contains { UntrustedText.needsEscape($0) && $0 != "\n" })
            #expect(line.unicodeScalars.count < 2_000)
        }
        #expect(lines.contains {
            $0.contains(#"rejected evil\n<3>forged line\u{1B}[2J\u{202E}nosj.json: not valid JSON"#)
        })

        for name in try bench.rejectedNames() where name.hasSuffix(".error") {
            let text = try String(contentsOfFile: bench.rejected(name), encoding: .utf8)
            #expect(text.last == "\n" && text.dropLast().allSatisfy { $0 != "\n" && $0 != "\r" })
            #expect(!text.unicodeScalars.contains { UntrustedText.needsEscape($0) && $0 != "\n" })
            #expect(text.unicodeScalars.count < 1_300)
        }
        #expect(try bench.reason(hostileName) == "not valid JSON\n")
        let crlf = try bench.reason("crlf.json")
        #expect(crlf.contains(#"A\r\n<3>forged\u{1B}[31m\u{202E}B"#))
        let long = try bench.reason("long.json")
        #expect(long.contains(String(repeating: "Z", count: 40) + "…(+9960 chars)"))
        #expect(!long.contains(String(repeating: "Z", count: 201)))
    }

    @Test("the journal handler keeps one event on one line, metadata included")
    func journalOneLine() {
        let lines = Shared<[String]>([])
        let handler = JournalLogHandler(label: "t", level: .info, environment: ["JOURNAL_STREAM": "8:1"]) { line in
            lines.withLock { $0.append(line) }
        }
        let logger = Logger(label: "t", factory: { _ in handler })
        logger.warning(
            "id A\r\nB\u{0}\u{1B}]0;title\u{07}\u{2067}",
            metadata: ["file": "x\ny", "n": "\(String(repeating: "q", count: 5_000))"])
        let line = try? #require(lines.withLock { $0 }.first)
        #expect(lines.withLock { $0.count } == 1)
        #expect(line?.hasPrefix(#"<4>id A\r\nB\0\u{1B}]0;title\u{07}\u{2067} file=x\ny n=q"#) == true)
        #expect(line?.hasSuffix("…(+4000 chars)\n") == true)
    }
}

@Suite("The spool folders recreated and watched again while the daemon runs", .serialized)
struct SpoolFolderTests {
    static let afternoon = Date(timeIntervalSince1970: 1_780_000_000)


    /// Removes or moves the spool away under a running daemon, waits for the daemon to put the
    /// folders back, then drops a file and expects it ingested without a restart.
    /// - Parameter timeout: how long the daemon may take to notice; the file that follows must be
    ///   taken sooner than the periodic check would look, so the new folder must be watched.
    private func recovers(timeout: Double, _ takeAway: (DaemonHarness) throws -> Void) async throws {
        let harness = try DaemonHarness(start: Self.afternoon)
        harness.start()
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-before", at: Self.afternoon))], label: "b")
        #expect(await harness.eventually { (try? await harness.store().procedure("P-before")) != nil })
        let incoming = harness.spool.incoming.path
        // Hidden entries are left alone by intake: this one tells the old incoming/ from a new one
        // (inode numbers are reused, so they cannot). A folder, as making one raises no event that
        // would wake intake.
        let marker = incoming + "/.old-folder"
        try FileManager.default.createDirectory(atPath: marker, withIntermediateDirectories: false)
        try takeAway(harness)
        // The daemon (not the writer below, which would also create it) recreates incoming/.
        #expect(await harness.eventually(timeout: timeout) {
            FileManager.default.fileExists(atPath: incoming) && !FileManager.default.fileExists(atPath: marker)
                && FileManager.default.fileExists(atPath: harness.spool.rejected.path)
        })
        try harness.spool.submit([.procedure(DaemonHarness.procedure("P-after", at: Self.afternoon))], label: "a")
        #expect(await harness.eventually(timeout: Intake.folderCheckSeconds / 2) {
            (try? await harness.store().procedure("P-after")) != nil
        })
        try await harness.stop()
    }

    @Test("removing the spool folder: inotify tells the daemon, which recreates it and ingests what comes next")
    func removed() async throws {
        try await recovers(timeout: 3) { harness in
            // The daemon may recreate folders while the removal is still walking the tree.
            for _ in 0..<10 {
                if (try? FileManager.default.removeItem(atPath: harness.spool.root.path)) != nil { break }
            }
        }
    }

    @Test("moving the spool folder away: the periodic check notices without any event and recovers")
    func movedAway() async throws {
        try await recovers(timeout: Intake.folderCheckSeconds * 3) { harness in
            let root = harness.spool.root.path
            #expect(rename(root, root + ".gone") == 0)
        }
    }

    @Test("the watcher says what it mended, refuses a symbolic link in a folder's place, and fires on the new folder")
    func watcherRearms() throws {
        let root = NSTemporaryDirectory() + "aftercare-watch-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        let spool = Spool(root: root + "/spool")
        try spool.prepare()
        let events = Shared(0)
        let watcher = try SpoolWatcher(folder: spool.incoming.path) { events.withLock { $0 += 1 } }
        defer { watcher.stop() }
        #expect(watcher.ensureWatching(spool) == .intact)

        try FileManager.default.removeItem(at: spool.incoming)
        try FileManager.default.createSymbolicLink(atPath: spool.incoming.path, withDestinationPath: root)
        guard case .broken(let problem) = watcher.ensureWatching(spool) else {
            Issue.record("a symbolic link in place of incoming/ was accepted")
            return
        }
        #expect(problem == "\(spool.incoming.path) is a symbolic link, not a folder: remove it")

        try FileManager.default.removeItem(at: spool.incoming)
        #expect(watcher.ensureWatching(spool) == .restored(
            "spool folder(s) incoming/ were missing under \(spool.root.path) (removed or moved while the daemon ran?); "
                + "recreated, watching \(spool.incoming.path) again"))
        #expect(watcher.ensureWatching(spool) == .intact)
        let seen = events.withLock { $0 }
        try Data("{}".utf8).write(to: spool.incoming.appendingPathComponent("new.json"))
        let deadline = Date().addingTimeInterval(5)
        while events.withLock({ $0 }) == seen && Date() < deadline { usleep(5_000) }
        #expect(events.withLock { $0 } > seen)
    }
}

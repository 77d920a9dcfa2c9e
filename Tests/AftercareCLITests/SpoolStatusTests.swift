import Foundation
import Testing

@Suite("status tells staff what the spool could not take", .serialized)
struct SpoolStatusTests {
    @Test("refused entries are counted, a missing incoming/ is called out, the daemon's log is one line per event")
    func refusedAndMissing() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        let incoming = harness.state + "/spool/incoming"
        #expect(harness.eventually { FileManager.default.fileExists(atPath: incoming) })

        #expect(mkfifo(incoming + "/pipe.json", 0o666) == 0)
        try FileManager.default.createSymbolicLink(
            atPath: incoming + "/db.json", withDestinationPath: harness.state + "/aftercare.sqlite")
        try Data("{".utf8).write(to: URL(fileURLWithPath: incoming + "/.evil\n<3>forged\u{1B}[2J.json"))
        #expect(rename(incoming + "/.evil\n<3>forged\u{1B}[2J.json", incoming + "/evil\n<3>forged\u{1B}[2J.json") == 0)
        #expect(harness.eventually { harness.incomingFiles().isEmpty })

        let status = try harness.run(["status"])
        #expect(status.status == 0, "\(status.stderr)")
        // The half-written-looking file is refused once it has settled; the FIFO and the link at once.
        #expect(harness.eventually(timeout: 15) {
            let shown = try? harness.run(["status"]).stdout
            return shown?.range(of: #"Spool rejected\s+3 file\(s\)"#, options: .regularExpression) != nil
        })
        #expect(!status.stdout.contains("Spool problem"))

        daemon.terminate()
        daemon.waitUntilExit()
        let log = harness.daemonLog
        #expect(log.contains("rejected pipe.json: a FIFO is not a spool file"))
        #expect(log.contains("rejected db.json: a symbolic link is not a spool file"))
        #expect(log.contains(#"rejected evil\n<3>forged\u{1B}[2J.json: not valid JSON"#))
        #expect(!log.contains("\u{1B}") && !log.split(separator: "\n").contains { $0.hasPrefix("<3>forged") })

        try FileManager.default.removeItem(atPath: incoming)
        let missing = try harness.run(["status"])
        #expect(missing.status == 0, "\(missing.stderr)")
        #expect(missing.stdout.contains("Spool problem"))
        #expect(missing.stdout.contains("\(incoming) is missing or not a folder"))
    }
}

import Foundation
import Testing

@Suite("aftercare audit: the words sent, prunes that cannot launder, anchors", .serialized)
struct AuditCLITests {
    /// Runs SQL on the database with Python's sqlite3, as someone with the file would.
    func tamper(_ harness: CLIHarness, _ sql: String) throws {
        let process = Process()
        let python = ProcessInfo.processInfo.environment["AFTERCARE_TEST_PYTHON"]
        process.executableURL = URL(fileURLWithPath: python ?? "/usr/bin/env")
        let script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()"
        process.arguments = (python == nil ? ["python3"] : []) + ["-c", script, harness.state + "/aftercare.sqlite", sql]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }

    /// The attempt rows of the log, as JSON objects.
    func attempts(_ harness: CLIHarness, procedure: String) throws -> [[String: Any]] {
        let audit = try harness.run(["audit", "--procedure", procedure, "--step", "ice", "--format", "jsonl"])
        #expect(audit.status == 0, "\(audit.stderr)")
        return audit.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }.filter { $0["event"] as? String == "attempt" }
    }

    func stop(_ daemon: Process, _ harness: CLIHarness) {
        daemon.terminate()
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus == 0, "daemon log: \(harness.daemonLog)")
    }

    @Test("after a protocol edit and a reload, audit message prints each attempt's exact words and version")
    func messagesAcrossAReload() throws {
        let harness = try CLIHarness()
        // A protocol file of our own, to edit while the daemon runs.
        let shipped = CLIHarness.repositoryRoot.appendingPathComponent("Config/protocols/trigger-point-injection.toml").path
        let local = harness.root + "/tpi.toml"
        let original = try String(contentsOfFile: shipped, encoding: .utf8)
        try original.write(toFile: local, atomically: true, encoding: .utf8)
        let config = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        try config.replacingOccurrences(of: shipped, with: local).write(toFile: harness.configPath, atomically: true, encoding: .utf8)

        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        #expect(harness.eventually { harness.daemonLog.contains("delivery log head:") })
        let add = ["--patient", "MRN-9", "--first-name", "Ana", "--performed-at", "now", "--route", "sms:+15551234567"]
        #expect(try harness.run(["add", "--procedure", "P-1"] + add).status == 0)
        #expect(harness.eventually { harness.outboxFiles().contains("P-1.ice.txt") })

        let edited = original.replacingOccurrences(of: "apply ice to the injection site", with: "apply ice for ten minutes")
        #expect(edited != original)
        try edited.write(toFile: local, atomically: true, encoding: .utf8)
        kill(daemon.processIdentifier, SIGHUP)
        #expect(harness.eventually { harness.daemonLog.contains("configuration reloaded") })
        #expect(try harness.run(["add", "--procedure", "P-2"] + add).status == 0)
        #expect(harness.eventually { harness.outboxFiles().contains("P-2.ice.txt") })
        #expect(harness.eventually { (try? attempts(harness, procedure: "P-2").count) == 1 })
        stop(daemon, harness)

        var versions: [String] = []
        for (procedure, words) in [("P-1", "apply ice to the injection site"), ("P-2", "apply ice for ten minutes")] {
            let row = try #require(try attempts(harness, procedure: procedure).first)
            let seq = try #require(row["seq"] as? Int)
            versions.append(try #require(row["protocol_version"] as? String))
            let shown = try harness.run(["audit", "message", String(seq)])
            #expect(shown.status == 0, "\(shown.stderr)")
            #expect(shown.stdout.contains("protocol: trigger-point-injection version \(versions.last!)"))
            #expect(shown.stdout.contains(words))
            // What audit message prints is exactly what the sender was handed.
            let sent = try String(contentsOfFile: harness.outbox + "/\(procedure).ice.txt", encoding: .utf8)
            let body = try #require(shown.stdout.components(separatedBy: "\nbody:\n").last?.dropLast())
            let subject = try #require(shown.stdout.split(separator: "\n").first { $0.hasPrefix("subject: ") }?.dropFirst(9))
            #expect(sent.contains("\nSubject: \(subject)\n"))
            #expect(body.contains(words) && sent.hasSuffix("\n\n" + body + "\n"), "sent:\n\(sent)\nshown:\n\(body)")
        }
        #expect(versions[0] != versions[1])

        // Changing the stored words is caught.
        let row = try #require(try attempts(harness, procedure: "P-2").first)
        try tamper(harness, "UPDATE message SET body = 'Take two aspirin.' WHERE hash = '\(row["message_hash"] as! String)'")
        let tampered = try harness.run(["audit", "message", String(row["seq"] as! Int)])
        #expect(tampered.status != 0)
        #expect(tampered.stderr.contains("does NOT match the hash"))
        #expect(!tampered.stdout.contains("aspirin"))
        let notAnAttempt = try harness.run(["audit", "message", "1"])
        #expect(notAnAttempt.status != 0)
        #expect(notAnAttempt.stderr.contains("not an attempt"))
        let garbage = try harness.run(["audit", "message", "x\u{1B}"])
        #expect(garbage.status != 0)
        #expect(garbage.stderr.split(separator: "\n").count == 1)
    }

    @Test("prune refuses the future and a broken chain, prints the new head; anchors hold only while unpruned")
    func pruneAndAnchors() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        #expect(harness.eventually { harness.daemonLog.contains("delivery log head:") })
        #expect(try harness.run([
            "add", "--procedure", "P-1", "--patient", "MRN-9", "--first-name", "Ana", "--performed-at", "now",
            "--route", "sms:+15551234567",
        ]).status == 0)
        #expect(harness.eventually { harness.outboxFiles().count == 2 })
        #expect(try harness.run(["cancel", "P-1"]).status == 0)
        stop(daemon, harness)

        let future = try harness.run(["audit", "prune", "--before", "2099-01-01"])
        #expect(future.status != 0)
        #expect(future.stderr.contains("is in the future"))
        for bad in ["nothex", "12:abc", String(repeating: "z", count: 64)] {
            let result = try harness.run(["audit", "verify", "--expect-head", bad])
            #expect(result.status != 0)
            #expect(result.stderr.contains("--expect-head: ") && result.stderr.split(separator: "\n").count == 1,
                    "\(result.stderr)")
        }
        let head = try harness.run(["audit", "head"])
        let parts = head.stdout.split(separator: " ", omittingEmptySubsequences: true)
        let oldHead = "\(parts[2].trimmingCharacters(in: .whitespacesAndNewlines)):\(parts[0])"
        #expect(try harness.run(["audit", "verify", "--expect-head", oldHead]).status == 0)

        usleep(1_100_000)
        let cutoff = ISO8601DateFormatter().string(from: Date())
        let pruned = try harness.run(["audit", "prune", "--before", cutoff])
        #expect(pruned.status == 0, "\(pruned.stderr)")
        #expect(pruned.stdout.contains("pruned "))
        let newHead = try #require(
            pruned.stdout.split(separator: "\n").first { $0.hasPrefix("new head ") }?.split(separator: " ")[2]
                .trimmingCharacters(in: CharacterSet(charactersIn: ":")))
        let held = try harness.run(["audit", "verify", "--expect-head", newHead])
        #expect(held.status == 0, "\(held.stderr)")
        #expect(held.stdout.contains("chain intact from row"))
        let stale = try harness.run(["audit", "verify", "--expect-head", oldHead])
        #expect(stale.status != 0)
        #expect(stale.stderr.contains("BROKEN"))

        // Tampering, then a prune: refused, and the break stays visible.
        try tamper(harness, """
            DROP TRIGGER delivery_log_no_update;
            UPDATE delivery_log SET detail = 'edited' WHERE seq = (SELECT MIN(seq) FROM delivery_log);
            """)
        let refused = try harness.run(["audit", "prune", "--before", ISO8601DateFormatter().string(from: Date())])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("BROKEN") && refused.stderr.contains("nothing pruned"))
        let verify = try harness.run(["audit", "verify"])
        #expect(verify.status != 0)
        #expect(verify.stderr.contains("BROKEN"))
    }
}

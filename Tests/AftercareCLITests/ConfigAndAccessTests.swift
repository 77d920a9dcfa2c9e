import Foundation
import Testing

@Suite("config check and the daemon refuse the same things; permission errors say what to do", .serialized)
struct ConfigAndAccessTests {
    static let webhook = """
        [senders.hook]
        kind = "webhook"
        url = "http://127.0.0.1:9/hook"
        allow_insecure_http = true
        secret_file = "hook.secret"
        """

    /// The line of `config check`'s error, without ArgumentParser's "Error: ".
    func problem(_ result: CLIHarness.Result) -> String {
        let line = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
        return line.hasPrefix("Error: ") ? String(line.dropFirst("Error: ".count)) : line
    }

    /// Runs `config check` and the daemon on the same config; both must refuse with the same line.
    func expectBothRefuse(_ harness: CLIHarness, containing text: String, atLineOf key: String) throws {
        let check = try harness.run(["config", "check"])
        #expect(check.status != 0, "config check passed: \(check.stdout)")
        let message = problem(check)
        #expect(!message.contains("\n"), "\(message)")
        #expect(message.contains(text), "\(message)")
        let configLines = try String(contentsOfFile: harness.configPath, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false)
        let line = try #require(configLines.firstIndex { $0.trimmingCharacters(in: .whitespaces).hasPrefix(key) }) + 1
        #expect(message.contains("\(harness.configPath):\(line): "), "\(message)")
        #expect(!message.contains("sender 'hook': sender 'hook'"), "\(message)")

        let daemon = try harness.startDaemon()
        #expect(harness.eventually(timeout: 20) { !daemon.isRunning }, "the daemon started with a config check refuses")
        if daemon.isRunning { daemon.terminate() }
        daemon.waitUntilExit()
        #expect(daemon.terminationStatus != 0)
        #expect(harness.daemonLog.contains(message), "daemon said: \(harness.daemonLog)\ncheck said: \(message)")
        #expect(!harness.daemonLog.contains("sender 'hook': sender 'hook'"), "\(harness.daemonLog)")
    }

    @Test("a webhook secret without whsec_ is refused by config check and the daemon alike, at file:line")
    func secretWithoutPrefix() throws {
        let harness = try CLIHarness(extra: Self.webhook)
        try "C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n".write(
            toFile: harness.root + "/hook.secret", atomically: true, encoding: .utf8)
        try expectBothRefuse(harness, containing: "must start with whsec_", atLineOf: "secret_file")
    }

    @Test("a webhook secret with a key under 24 bytes is refused by both")
    func shortSecret() throws {
        let harness = try CLIHarness(extra: Self.webhook)
        try "whsec_C2FVsBQIhrscChlQIMV+bw==\n".write(
            toFile: harness.root + "/hook.secret", atomically: true, encoding: .utf8)
        try expectBothRefuse(harness, containing: "at least 24 are needed", atLineOf: "secret_file")
    }

    @Test("a secret_file naming a folder is refused by both")
    func secretFolder() throws {
        let harness = try CLIHarness(extra: Self.webhook)
        try FileManager.default.createDirectory(
            atPath: harness.root + "/hook.secret", withIntermediateDirectories: true)
        try expectBothRefuse(harness, containing: "a folder, not a file", atLineOf: "secret_file")
    }

    @Test("state_directory = \"\" is refused by both")
    func emptyStateDirectory() throws {
        let harness = try CLIHarness()
        let text = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        try text.replacingOccurrences(of: "state_directory = \"state\"", with: "state_directory = \"\"")
            .write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        try expectBothRefuse(harness, containing: "'paths.state_directory' is empty", atLineOf: "state_directory")
    }

    @Test("hostile ids on the command line are refused with the field named and the value escaped")
    func hostileIDs() throws {
        let harness = try CLIHarness()
        for arguments in [
            ["cancel", "A\u{1B}[2Jb"], ["reschedule", "P\u{202E}1", "--time-zone", "UTC"],
            ["replay", "--reminder", "P-1.step\u{7F}"], ["replay", "--reminder", "P-1"],
            ["replay", "--procedure", String(repeating: "x", count: 10_000)],
            ["cancel", "P-1", "--reason", "fine\u{2066}"],
        ] {
            let result = try harness.run(arguments + ["--wait", "0"])
            #expect(result.status != 0, "\(arguments) was accepted")
            let message = problem(result)
            #expect(!message.contains("\u{1B}") && !message.contains("\u{202E}") && !message.contains("\u{7F}")
                && !message.contains("\u{2066}"), "\(message.debugDescription)")
            #expect(message.count < 300, "\(message.count) characters")
            #expect(harness.incomingFiles().isEmpty, "\(arguments) queued a file")
        }
    }

    @Test("a cancel with a NUL in its id dropped in the spool is refused whole, and the log chain stays intact")
    func nulInSpool() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer {
            daemon.terminate()
            daemon.waitUntilExit()
        }
        #expect(harness.eventually { FileManager.default.fileExists(atPath: harness.state + "/spool/incoming") })
        let added = try harness.run([
            "add", "--procedure", "A", "--patient", "MRN-1", "--route", "sms:+15551234567", "--wait", "10",
        ])
        #expect(added.status == 0, "\(added.stderr)")
        let name = "zz-hostile.json"
        try Data(#"{"kind":"cancel","procedure_id":"A\u0000b"}"#.utf8)
            .write(to: URL(fileURLWithPath: harness.state + "/spool/tmp/" + name))
        rename(harness.state + "/spool/tmp/" + name, harness.state + "/spool/incoming/" + name)
        #expect(harness.eventually { !harness.incomingFiles().contains(name) }, "the daemon never took the file")
        let reason = try? String(contentsOfFile: harness.state + "/spool/rejected/" + name + ".error", encoding: .utf8)
        #expect(reason?.contains(#"procedure_id 'A\0b'"#) == true, "\(reason ?? "no .error file")")
        let shown = try harness.run(["show", "A"])
        #expect(shown.status == 0 && !shown.stdout.contains("cancelled"), "\(shown.stdout)")
        let verified = try harness.run(["audit", "verify"])
        #expect(verified.status == 0 && verified.stdout.contains("intact"), "\(verified.stdout)\(verified.stderr)")
    }

    /// Points the harness's config at a copy of the protocol beside it: the checkout (a `mktemp -d`
    /// clone, say) may be closed to other users, and `nobody` must be refused by the state folder's
    /// permissions, not by the protocol's.
    func protocolReadableByOthers(_ harness: CLIHarness) throws {
        let original = CLIHarness.repositoryRoot.appendingPathComponent("Config/protocols/trigger-point-injection.toml")
        let copy = harness.root + "/trigger-point-injection.toml"
        try FileManager.default.copyItem(atPath: original.path, toPath: copy)
        chmod(copy, 0o644)
        chmod(harness.root, 0o755)
        let config = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        try config.replacingOccurrences(of: original.path, with: copy)
            .write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        chmod(harness.configPath, 0o644)
    }

    /// Runs the binary as `nobody`, as a user outside the staff group would.
    func runAsNobody(_ harness: CLIHarness, _ arguments: [String]) throws -> CLIHarness.Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", CLIHarness.binary]
            + arguments + ["--config", harness.configPath]
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CLIHarness.Result(
            status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self))
    }

    @Test("a user who may not read the database is told so and what to do, apart from a missing database",
          .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func databasePermission() throws {
        let harness = try CLIHarness()
        try protocolReadableByOthers(harness)
        try FileManager.default.createDirectory(atPath: harness.state, withIntermediateDirectories: true)
        let missing = try runAsNobody(harness, ["list"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("no database at"), "\(missing.stderr)")
        #expect(!missing.stderr.contains("permission denied"), "\(missing.stderr)")

        // The daemon creates the database; then the state folder is closed to others, as at a clinic.
        let daemon = try harness.startDaemon()
        #expect(harness.eventually { FileManager.default.fileExists(atPath: harness.state + "/aftercare.sqlite") })
        daemon.terminate()
        daemon.waitUntilExit()
        #expect(try harness.run(["list"]).status == 0, "root can read it")
        chmod(harness.state, 0o750)
        for command in [["list"], ["status"], ["audit", "verify"]] {
            let denied = try runAsNobody(harness, command)
            #expect(denied.status != 0)
            let expected = "cannot read \(harness.state)/aftercare.sqlite: permission denied (staff commands need "
                + "membership of the aftercare-staff group: ask your administrator to run "
                + "`usermod -aG aftercare-staff nobody`, then log in again)"
            #expect(problem(denied) == expected, "\(command): \(denied.stderr)")
        }
        // A readable folder but an unreadable file says the same.
        chmod(harness.state, 0o755)
        chmod(harness.state + "/aftercare.sqlite", 0o600)
        let fileDenied = try runAsNobody(harness, ["list"])
        #expect(fileDenied.stderr.contains("cannot read \(harness.state)/aftercare.sqlite: permission denied"),
                "\(fileDenied.stderr)")
        // Readable, but with the daemon stopped its -shm file is gone and only the daemon may make it.
        chmod(harness.state + "/aftercare.sqlite", 0o644)
        unlink(harness.state + "/aftercare.sqlite-shm")  // root's own read left it; no one has it open now
        let stopped = try runAsNobody(harness, ["list"])
        #expect(stopped.status != 0)
        #expect(stopped.stderr.contains("while the daemon is stopped"), "\(stopped.stderr)")
    }

    @Test("a user who may not write the spool is told so and what to do at add",
          .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")))
    func spoolPermission() throws {
        let harness = try CLIHarness()
        try protocolReadableByOthers(harness)
        for folder in ["tmp", "incoming", "rejected"] {
            try FileManager.default.createDirectory(
                atPath: harness.state + "/spool/" + folder, withIntermediateDirectories: true)
        }
        let result = try runAsNobody(harness, [
            "add", "--procedure", "P-1", "--patient", "MRN-1", "--route", "sms:+15551234567", "--wait", "0",
        ])
        #expect(result.status != 0)
        #expect(problem(result) == "cannot write to the spool \(harness.state)/spool/tmp: permission denied (staff "
            + "commands need membership of the aftercare-staff group: ask your administrator to run "
            + "`usermod -aG aftercare-staff nobody`, then log in again)", "\(result.stderr)")
        #expect(harness.incomingFiles().isEmpty)
    }
}

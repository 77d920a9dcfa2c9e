import Foundation
import Testing

@Suite("What the CLI says, said the way staff read it", .serialized)
struct ReadableOutputCLITests {
    /// The step ids of the shipped protocol, in its file's order.
    static func protocolOrder() throws -> [String] {
        let file = CLIHarness.repositoryRoot.appendingPathComponent("Config/protocols/trigger-point-injection.toml")
        let lines = try String(contentsOf: file, encoding: .utf8).split(separator: "\n").map(String.init)
        return lines.indices.compactMap { index in
            guard index > 0, lines[index - 1] == "[[steps]]", lines[index].hasPrefix("id = \"") else { return nil }
            return String(lines[index].dropFirst(6).dropLast())
        }
    }

    /// The first column of `show`'s reminder table.
    static func steps(_ show: String) -> [String] {
        let lines = show.split(separator: "\n").map(String.init)
        guard let header = lines.firstIndex(where: { $0.hasPrefix("STEP ") }) else { return [] }
        return lines[(header + 1)...].compactMap { $0.split(separator: " ").first.map(String.init) }
    }

    @Test("show: zone names not offsets, the year of another year, steps in protocol order; status as JSON")
    func showAndStatus() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        #expect(harness.eventually { FileManager.default.fileExists(atPath: harness.state + "/spool/incoming") })
        for (id, zone) in [("P-NY", "America/New_York"), ("P-TYO", "Asia/Tokyo")] {
            let add = try harness.run([
                "add", "--procedure", id, "--patient", "MRN-1", "--time-zone", zone, "--performed-at", "now",
                "--route", "sms:+15551234567",
            ])
            #expect(add.status == 0, "\(add.stderr)")
            #expect(!add.stdout.contains("GMT"), "\(add.stdout)")
        }
        let old = try harness.run([
            "add", "--procedure", "P-OLD", "--patient", "MRN-2", "--performed-at", "2020-03-10T10:00:00-04:00",
            "--route", "sms:+15551234567", "--force",
        ])
        #expect(old.status == 0, "\(old.stderr)")

        let newYork = try harness.run(["show", "P-NY"])
        #expect(newYork.status == 0, "\(newYork.stderr)")
        #expect(!newYork.stdout.contains("GMT"), "\(newYork.stdout)")
        #expect(newYork.stdout.range(of: #"\d\d:\d\d E[SD]T"#, options: .regularExpression) != nil, "\(newYork.stdout)")
        #expect(Self.steps(newYork.stdout) == (try Self.protocolOrder()), "\(newYork.stdout)")
        let tokyo = try harness.run(["show", "P-TYO"])
        #expect(!tokyo.stdout.contains("GMT+9"), "\(tokyo.stdout)")
        #expect(tokyo.stdout.range(of: #"\d\d:\d\d (JST|Asia/Tokyo)"#, options: .regularExpression) != nil, "\(tokyo.stdout)")
        let thisYear = String(Calendar(identifier: .gregorian).component(.year, from: Date()))
        #expect(!newYork.stdout.contains(thisYear), "the current year is left out: \(newYork.stdout)")
        let past = try harness.run(["show", "P-OLD"])
        #expect(past.stdout.contains("Tue Mar 10 2020 10:00 EDT"), "\(past.stdout)")

        #expect(harness.eventually(timeout: 10) { harness.outboxFiles().count == 4 })
        let json = try harness.run(["status", "--format", "json"])
        #expect(json.status == 0, "\(json.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(object["procedures"] as? Int == 3)
        let reminders = try #require(object["reminders"] as? [String: Int])
        #expect(reminders["delivered"] == 4)
        #expect(reminders["expired"] == 6)
        #expect(reminders.keys.contains("dead") && reminders.keys.contains("cancelled"))
        let rfc3339 = #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"#
        #expect((object["next_due"] as? String)?.range(of: rfc3339, options: .regularExpression) != nil, "\(json.stdout)")
        #expect((object["last_delivery"] as? String)?.range(of: rfc3339, options: .regularExpression) != nil)
        let spool = try #require(object["spool"] as? [String: Any])
        #expect(spool["waiting"] as? Int == 0 && spool["rejected"] as? Int == 0)
        #expect(object.keys.contains("failed_tries_last_day") && object.keys.contains("booked"))
        let bad = try harness.run(["status", "--format", "yaml"])
        #expect(bad.status != 0)
        daemon.terminate()
        daemon.waitUntilExit()
    }

    @Test("a replay or cancel that changes nothing is an error; a refused staff request leaves no rejected count")
    func staffMistakes() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        #expect(harness.eventually { FileManager.default.fileExists(atPath: harness.state + "/spool/incoming") })
        let add = try harness.run([
            "add", "--procedure", "P-1", "--patient", "MRN-1", "--performed-at", "now", "--route", "sms:+15551234567",
        ])
        #expect(add.status == 0, "\(add.stderr)")

        for scope in [["--procedure", "P-1"], ["--reminder", "P-1.checkin-24h"], ["--since", "2020-01-01T00:00:00Z"]] {
            let replay = try harness.run(["replay"] + scope)
            #expect(replay.status == 1, "\(scope): \(replay.stdout)")
            #expect(replay.stderr.hasPrefix("Error: nothing to replay: "), "\(replay.stderr)")
            #expect(replay.stderr.split(separator: "\n").count == 1)
        }
        #expect(harness.incomingFiles().isEmpty)

        // The daemon refuses this one (a booked appointment is moved, not re-planned): the CLI says why
        // and takes the refusal back out of rejected/.
        let planned = Date().addingTimeInterval(2 * 86400).formatted(Date.ISO8601FormatStyle())
        let book = try harness.run([
            "book", "--procedure", "A-1", "--patient", "MRN-2", "--planned-at", planned, "--route", "sms:+15551234567",
        ])
        #expect(book.status == 0, "\(book.stderr)")
        let refused = try harness.run(["reschedule", "A-1", "--time-zone", "Europe/Berlin"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("the daemon refused it"), "\(refused.stderr)")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: harness.state + "/spool/rejected")) ?? []
        #expect(left.isEmpty, "\(left)")
        let status = try harness.run(["status"])
        #expect(status.stdout.range(of: #"Spool rejected\s+0 file"#, options: .regularExpression) != nil, "\(status.stdout)")

        let cancel = try harness.run(["cancel", "P-1"])
        #expect(cancel.status == 0, "\(cancel.stderr)")
        let again = try harness.run(["cancel", "P-1"])
        #expect(again.status == 1)
        #expect(again.stderr == "Error: procedure P-1 is already cancelled\n", "\(again.stderr)")
        daemon.terminate()
        daemon.waitUntilExit()
    }
}

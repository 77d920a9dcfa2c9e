import Foundation
import Testing

@Suite("Appointments, contact corrections and performed-time rules through the binary", .serialized)
struct AppointmentCLITests {
    static func local(_ date: Date, zone: String = "America/New_York") -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: zone)
        formatter.dateFormat = "yyyy-MM-dd HH:mm"
        return formatter.string(from: date)
    }

    @Test("book shows as booked and sends nothing; performed starts the reminders from the actual time")
    func bookThenPerformed() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        #expect(harness.eventually { FileManager.default.fileExists(atPath: harness.state + "/spool/incoming") })

        let book = try harness.run([
            "book", "--procedure", "A-100", "--patient", "MRN-5", "--planned-at",
            Self.local(Date().addingTimeInterval(2 * 86400)), "--route", "sms:+15551234567",
        ])
        #expect(book.status == 0, "\(book.stderr)")
        #expect(book.stdout.contains("The daemon has taken it."))
        let show = try harness.run(["show", "A-100"])
        #expect(show.stdout.contains("(booked,"), "\(show.stdout)")
        #expect(show.stdout.contains("reminders start once it is marked performed"))
        let list = try harness.run(["list", "--pending"])
        #expect(list.stdout.contains("A-100") && list.stdout.contains("booked"), "\(list.stdout)")
        let status = try harness.run(["status"])
        #expect(status.stdout.range(of: #"Booked\s+1 appointment"#, options: .regularExpression) != nil, "\(status.stdout)")
        #expect(harness.outboxFiles().isEmpty)

        let move = try harness.run(["move", "A-100", "--planned-at", Self.local(Date().addingTimeInterval(3 * 86400))])
        #expect(move.status == 0, "\(move.stderr)")
        let early = try harness.run(["performed", "A-100", "--at", Self.local(Date().addingTimeInterval(3600))])
        #expect(early.status == 1)
        #expect(early.stderr.contains("more than 5 minutes ahead"), "\(early.stderr)")

        let performed = try harness.run(["performed", "A-100"])
        #expect(performed.status == 0, "\(performed.stderr)")
        #expect(harness.eventually(timeout: 5) { harness.outboxFiles() == ["A-100.activity.txt", "A-100.ice.txt"] })
        let after = try harness.run(["show", "A-100"])
        #expect(after.stdout.contains("(active,"), "\(after.stdout)")
        #expect(after.stdout.contains("Planned ") && after.stdout.contains("Performed "))
        let again = try harness.run(["move", "A-100", "--planned-at", Self.local(Date().addingTimeInterval(86400))])
        #expect(again.status == 1)
        #expect(again.stderr.contains("not a booked appointment"), "\(again.stderr)")
    }

    @Test("add refuses a future time (book it) and one so far back nothing is sent, unless --force")
    func addTimeRules() throws {
        let harness = try CLIHarness()
        let base = ["add", "--procedure", "P-1", "--patient", "MRN-1", "--route", "sms:+15551234567", "--dry-run"]
        let future = try harness.run(base + ["--performed-at", Self.local(Date().addingTimeInterval(86400))])
        #expect(future.status == 1)
        #expect(future.stderr.contains("aftercare book"), "\(future.stderr)")
        #expect(future.stderr.split(separator: "\n").count == 1)
        let old = Self.local(Date().addingTimeInterval(-400 * 86400))
        let stale = try harness.run(base + ["--performed-at", old])
        #expect(stale.status == 1)
        #expect(stale.stderr.contains("nothing would be sent") && stale.stderr.contains("--force"), "\(stale.stderr)")
        let forced = try harness.run(base + ["--performed-at", old, "--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(harness.incomingFiles().isEmpty)
    }

    @Test("update corrects the patient's routes on every open procedure; opt-out marks the channel; bad input refused")
    func updateAndOptOut() throws {
        let harness = try CLIHarness()
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { daemon.terminate() } }
        #expect(harness.eventually { FileManager.default.fileExists(atPath: harness.state + "/spool/incoming") })
        for id in ["P-1", "P-2"] {
            let add = try harness.run([
                "add", "--procedure", id, "--patient", "MRN-7", "--route", "sms:+15551234567",
                "--route", "email:ana@example.org",
            ])
            #expect(add.status == 0, "\(add.stderr)")
        }
        let update = try harness.run([
            "update", "--patient", "MRN-7", "--route", "sms:+15557654321", "--route", "email:ana@example.org",
        ])
        #expect(update.status == 0, "\(update.stderr)")
        for id in ["P-1", "P-2"] {
            let show = try harness.run(["show", id, "--unmask"])
            #expect(show.stdout.contains("sms +15557654321"), "\(show.stdout)")
        }
        let audit = try harness.run(["audit", "show", "--patient", "MRN-7", "--outcome", "updated", "--format", "jsonl"])
        #expect(audit.stdout.contains("+1******4321"), "\(audit.stdout)")
        #expect(!audit.stdout.contains("+15557654321"))

        let stop = try harness.run(["opt-out", "--patient", "MRN-7", "--channel", "sms"])
        #expect(stop.status == 0, "\(stop.stderr)")
        for id in ["P-1", "P-2"] {
            let show = try harness.run(["show", id])
            #expect(show.stdout.contains("(opted out)"), "\(show.stdout)")
        }

        for bad in [
            ["update", "--patient", "MRN-7\u{1B}[31m", "--first-name", "Ana"],
            ["update", "--patient", "MRN-7", "--route", "sms:+1555\nX"],
            ["update", "--patient", "MRN-7"],
            ["opt-out", "--patient", "MRN-7", "--channel", "sms\u{1B}]0;x"],
            ["opt-out", "--patient", "MRN-404", "--channel", "sms"],
        ] {
            let result = try harness.run(bad)
            #expect(result.status != 0, "\(bad) was accepted")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(bad): \(result.stderr)")
            #expect(!result.stderr.contains("\u{1B}"))
        }
        #expect(harness.incomingFiles().isEmpty)
    }
}

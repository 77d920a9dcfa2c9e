import AftercareTestKit
import Foundation
import Testing

/// A clinic moving up to a shared PostgreSQL database, and two daemons sharing it: the built binary,
/// a real PostgreSQL server on loopback (TLS verified against its throwaway CA), file outboxes.
@Suite("A clinic group on one PostgreSQL database, from the command line")
struct ClinicGroupCLITests {
    static let add = ["--patient", "MRN-9", "--first-name", "Ana", "--performed-at", "now", "--route", "sms:+15551234567"]

    /// The `[store]` lines for `database`, naming this daemon `node`.
    static func store(_ database: PostgresTestDatabase, node: String, passwordFile: String) -> String {
        """
        [store]
        kind = "postgres"
        url = "\(database.url)"
        password_file = "\(passwordFile)"
        ca_file = "\(database.caFile)"
        node = "\(node)"

        [dispatch]
        lease = "10s"
        """
    }

    /// `audit head`'s `seq:hash`.
    static func head(_ harness: CLIHarness) throws -> String {
        let parts = try harness.run(["audit", "head"]).stdout.split(separator: " ", omittingEmptySubsequences: true)
        return "\(parts[2].trimmingCharacters(in: .whitespacesAndNewlines)):\(parts[0])"
    }

    static func stop(_ daemon: Process) {
        daemon.terminate()
        daemon.waitUntilExit()
    }

    @Test("store migrate copies a clinic into an empty database with the same head, refuses a second time, and the daemon goes on there")
    func migrateThenRun() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let sqlite = try CLIHarness()
        let passwordFile = sqlite.root + "/db-password"
        try (database.password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let first = try sqlite.startDaemon()
        #expect(sqlite.eventually { sqlite.daemonLog.contains("delivery log head:") })
        #expect(try sqlite.run(["add", "--procedure", "P-1"] + Self.add).status == 0)
        #expect(sqlite.eventually { sqlite.outboxFiles().contains("P-1.ice.txt") })
        Self.stop(first)
        let head = try Self.head(sqlite)

        let target = ["store", "migrate", "--to", database.url, "--password-file", passwordFile, "--ca-file", database.caFile]
        let migrated = try sqlite.run(target)
        #expect(migrated.status == 0, "\(migrated.stderr)")
        #expect(migrated.stdout.contains("chain verified on both sides; head \(head)"), "\(migrated.stdout)")
        #expect(migrated.stdout.contains("copied 1 procedure(s), 6 reminder(s)"), "\(migrated.stdout)")
        let again = try sqlite.run(target)
        #expect(again.status != 0)
        #expect(again.stderr.contains("not empty") && again.stderr.split(separator: "\n").count == 1, "\(again.stderr)")
        let wrongCA = try sqlite.run(
            ["store", "migrate", "--to", database.url, "--password-file", passwordFile, "--ca-file", "/etc/ssl/certs/ca-certificates.crt"])
        #expect(wrongCA.status != 0, "a certificate from an unknown CA is refused")

        // The same clinic on PostgreSQL: the head holds, the history shows, and new work is sent.
        let group = try CLIHarness(extra: Self.store(database, node: "north", passwordFile: passwordFile))
        #expect(try group.run(["audit", "verify", "--expect-head", head]).status == 0)
        let show = try group.run(["show", "P-1"])
        #expect(show.status == 0 && show.stdout.contains("delivered"), "\(show.stdout)\(show.stderr)")
        let daemon = try group.startDaemon()
        defer { if daemon.isRunning { Self.stop(daemon) } }
        #expect(group.eventually { group.daemonLog.contains("aftercare ready") }, "\(group.daemonLog)")
        #expect(try group.run(["add", "--procedure", "P-2"] + Self.add).status == 0)
        #expect(group.eventually { group.outboxFiles().contains("P-2.ice.txt") }, "\(group.daemonLog)")
        Self.stop(daemon)
        let verify = try group.run(["audit", "verify", "--expect-head", head])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test("two daemons on one database: procedures added on either host are each sent once, by one of them")
    func twoDaemonsShareTheQueue() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let north = try CLIHarness(extra: "")
        let passwordFile = north.root + "/db-password"
        try (database.password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
        let northConfig = try String(contentsOfFile: north.configPath, encoding: .utf8)
        try (northConfig + Self.store(database, node: "north", passwordFile: passwordFile))
            .write(toFile: north.configPath, atomically: true, encoding: .utf8)
        let south = try CLIHarness(extra: Self.store(database, node: "south", passwordFile: passwordFile))
        let daemons = [try north.startDaemon(), try south.startDaemon()]
        defer { for daemon in daemons where daemon.isRunning { Self.stop(daemon) } }
        #expect(north.eventually { north.daemonLog.contains("aftercare ready") }, "\(north.daemonLog)")
        #expect(south.eventually { south.daemonLog.contains("aftercare ready") }, "\(south.daemonLog)")
        // A performed time to the minute, so the same procedure handed in twice is the same procedure.
        let performed = AppointmentCLITests.local(Date().addingTimeInterval(-120))
        var add = Self.add
        add[add.firstIndex(of: "now")!] = performed
        for index in 0..<10 {
            let host = index.isMultiple(of: 2) ? north : south
            #expect(try host.run(["add", "--procedure", "G-\(index)"] + add).status == 0)
        }
        // The same procedure handed in on the other host too is known there: planned once.
        let twice = try north.run(["add", "--procedure", "G-1"] + add)
        #expect(twice.status == 0, "\(twice.stdout)\(twice.stderr)")
        let expected = Set((0..<10).flatMap { ["G-\($0).ice.txt", "G-\($0).activity.txt"] })
        #expect(
            north.eventually(timeout: 30) {
                Set(north.outboxFiles()).union(south.outboxFiles()).isSuperset(of: expected)
            }, "north: \(north.daemonLog)\nsouth: \(south.daemonLog)")
        let sent = north.outboxFiles().filter { $0.hasPrefix("G-") } + south.outboxFiles().filter { $0.hasPrefix("G-") }
        #expect(sent.count == expected.count, "each due reminder sent once, by one daemon: \(sent.sorted())")
        #expect(Set(sent) == expected)
        let status = try south.run(["status"])
        #expect(status.status == 0, "\(status.stderr)")
        for daemon in daemons { Self.stop(daemon) }
        #expect(try north.run(["audit", "verify"]).status == 0)
    }

    @Test("config check connects: it names the database and its schema, and a wrong password or CA is one line")
    func configCheckConnects() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let harness = try CLIHarness()
        // As installed: the password in credentials/ beside the config, named as the unit passes it in.
        try FileManager.default.createDirectory(atPath: harness.root + "/credentials", withIntermediateDirectories: true)
        try (database.password + "\n").write(
            toFile: harness.root + "/credentials/db-password", atomically: true, encoding: .utf8)
        let config = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        let store = """

            [store]
            kind = "postgres"
            url = "\(database.url)"
            password_credential = "aftercare_db-password"
            ca_file = "\(database.caFile)"
            node = "north"
            """
        try (config + store).write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        let fresh = try harness.run(["config", "check"])
        #expect(fresh.status == 0, "\(fresh.stderr)")
        #expect(fresh.stdout.contains("\(database.url) (node north, TLS verify-full with CA \(database.caFile)): connected, "
            + "no aftercare schema yet"), "\(fresh.stdout)")
        try "wrong\n".write(toFile: harness.root + "/credentials/db-password", atomically: true, encoding: .utf8)
        let refused = try harness.run(["config", "check"])
        #expect(refused.status != 0 && !refused.stdout.contains(": OK"))
        #expect(refused.stderr.contains("password authentication failed") && refused.stderr.split(separator: "\n").count == 1,
            "\(refused.stderr)")
        try (database.password + "\n").write(
            toFile: harness.root + "/credentials/db-password", atomically: true, encoding: .utf8)
        try (config + store.replacingOccurrences(of: database.caFile, with: "/etc/ssl/certs/ca-certificates.crt"))
            .write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        let untrusted = try harness.run(["config", "check"])
        #expect(untrusted.status != 0)
        #expect(untrusted.stderr.contains("TLS certificate is not signed by a trusted CA"), "\(untrusted.stderr)")
    }

    @Test("SIGTERM during a slow send: the daemon finishes it and records it on PostgreSQL before it stops")
    func stopRecordsTheLastSends() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let receiver = try Receiver(secret: WebhookEndToEndTests.secret)
        let secretFile = NSTemporaryDirectory() + "aftercare-secret-" + UUID().uuidString
        try (WebhookEndToEndTests.secret + "\n").write(toFile: secretFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: secretFile) }
        let passwordFile = NSTemporaryDirectory() + "aftercare-db-password-" + UUID().uuidString
        try (database.password + "\n").write(toFile: passwordFile, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: passwordFile) }
        let harness = try CLIHarness(
            channels: "sms = \"gateway\"",
            extra: """
                [senders.gateway]
                kind = "webhook"
                url = "http://127.0.0.1:\(receiver.port)/slow/2500"
                allow_insecure_http = true
                secret_file = "\(secretFile)"

                """ + Self.store(database, node: "north", passwordFile: passwordFile))
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { Self.stop(daemon) } }
        #expect(harness.eventually { harness.daemonLog.contains("aftercare ready") }, "\(harness.daemonLog)")
        #expect(try harness.run(["add", "--procedure", "S-1"] + Self.add).status == 0)
        // The two 0 h reminders are under way (the receiver answers after 2.5 s) when the stop comes.
        usleep(800_000)
        Self.stop(daemon)
        #expect(daemon.terminationStatus == 0, "\(harness.daemonLog)")
        let sent = receiver.requests().filter { $0["answered"] as? Int == 204 }
        #expect(sent.count == 2, "\(receiver.requests())")
        let states = try harness.run(["show", "S-1"]).stdout
        #expect(states.components(separatedBy: "delivered").count - 1 >= 2, "both sends recorded as delivered: \(states)")
        #expect(!states.contains("claimed"), "\(states)\n\(harness.daemonLog)")
        #expect(!harness.daemonLog.contains("STORE FAILING"), "\(harness.daemonLog)")
    }
}

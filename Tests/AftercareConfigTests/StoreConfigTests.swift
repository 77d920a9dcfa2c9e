import AftercareConfig
import AftercareCore
import Foundation
import Testing

@Suite("The [store] section")
struct StoreConfigTests {
    let base = ConfigTests()

    func load(_ store: String) throws -> AftercareConfiguration {
        try AftercareConfiguration.load(path: try base.variant { $0 + "\n[store]\n" + store + "\n" })
    }

    /// The error for a `[store]` body, which must name the file and the line of `key`.
    func refusal(_ store: String, at key: String) throws -> String {
        let path = try base.variant { $0 + "\n[store]\n" + store + "\n" }
        do {
            _ = try AftercareConfiguration.load(path: path)
            Issue.record("loaded: \(store)")
            return ""
        } catch {
            #expect(error.file == path)
            let lines = try String(contentsOfFile: path, encoding: .utf8).split(
                separator: "\n", omittingEmptySubsequences: false)
            #expect(error.line == lines.lastIndex { $0.hasPrefix(key) }.map { $0 + 1 }, "\(error)")
            return error.description
        }
    }

    @Test("absent or kind = sqlite keeps the SQLite file; postgres reads the URL, TLS, password source and node")
    func parses() throws {
        #expect(try AftercareConfiguration.load(path: try base.variant { $0 }).store == .sqlite)
        #expect(try load("kind = \"sqlite\"").store == .sqlite)
        let config = try load(
            """
            kind = "postgres"
            url = "postgres://aftercare@db.example.org:6543/clinics"
            password_credential = "aftercare_db-password"
            ca_file = "db-ca.crt"
            node = "north"
            connections = 6
            """)
        guard case .postgres(let settings) = config.store else {
            Issue.record("not postgres: \(config.store)")
            return
        }
        #expect(settings.host == "db.example.org")
        #expect(settings.port == 6543)
        #expect(settings.user == "aftercare")
        #expect(settings.database == "clinics")
        #expect(settings.tls == .verifyFull, "TLS is verified unless the file says otherwise")
        #expect(settings.passwordCredential == "aftercare_db-password")
        #expect(settings.caFile == base.folder + "/db-ca.crt", "relative to the config file")
        #expect(settings.node == "north")
        #expect(settings.connections == 6)
        #expect(settings.url == "postgres://aftercare@db.example.org:6543/clinics")

        let defaults = try load("kind = \"postgres\"\nurl = \"postgres://a@127.0.0.1/q\"\ntls = \"disable\"")
        guard case .postgres(let local) = defaults.store else { return }
        #expect(local.port == 5432)
        #expect(local.node == ProcessInfo.processInfo.hostName)
        #expect(local.tls == .disable)
    }

    @Test("a password in the URL, plain TLS to another host, two password sources and bad values are refused")
    func refuses() throws {
        #expect(
            try refusal("kind = \"postgres\"\nurl = \"postgres://a:secret@db/q\"", at: "url =")
                .contains("holds a password"))
        #expect(
            try refusal("kind = \"postgres\"\nurl = \"postgres://a@db.example.org/q\"\ntls = \"disable\"", at: "tls =")
                .contains("not loopback"))
        #expect(
            try refusal(
                "kind = \"postgres\"\nurl = \"postgres://a@db/q\"\npassword_file = \"p\"\npassword_credential = \"c\"",
                at: "password_credential =")
                .contains("not both"))
        #expect(try refusal("kind = \"mysql\"", at: "kind =").contains("unknown store kind"))
        #expect(try refusal("kind = \"postgres\"\nurl = \"http://a@db/q\"", at: "url =").contains("postgres://"))
        #expect(try refusal("kind = \"postgres\"\nurl = \"postgres://db/q\"", at: "url =").contains("no user"))
        #expect(try refusal("kind = \"postgres\"\nurl = \"postgres://a@db/\"", at: "url =").contains("no database"))
        #expect(
            try refusal("kind = \"postgres\"\nurl = \"postgres://a@db/q?sslmode=disable\"", at: "url =")
                .contains("tls and ca_file"))
        #expect(
            try refusal("kind = \"postgres\"\nurl = \"postgres://a@db/q\"\ntls = \"prefer\"", at: "tls =")
                .contains("verify-full"))
        #expect(try refusal("kind = \"postgres\"\nurl = \"postgres://a@db/q\"\nport = 1", at: "port =").contains("port"))
    }
}

import AftercareConfig
import Foundation
import Testing

@Suite("The [metrics] section: a loopback listener, or none")
struct MetricsConfigTests {
    let base = ConfigTests()

    func load(_ section: String) throws -> AftercareConfiguration {
        try AftercareConfiguration.load(path: try base.variant { $0 + "\n[metrics]\n" + section + "\n" })
    }

    func refusal(_ section: String) throws -> ConfigError {
        let path = try base.variant { $0 + "\n[metrics]\n" + section + "\n" }
        do {
            _ = try AftercareConfiguration.load(path: path)
        } catch {
            #expect(error.file == path)
            return error
        }
        Issue.record("[metrics] \(section) was accepted")
        return ConfigError(file: path, line: nil, message: "")
    }

    @Test("absent, nothing listens; the shipped example leaves it off")
    func absentMeansOff() throws {
        #expect(try AftercareConfiguration.load(path: ConfigTests.example).metrics == nil)
    }

    @Test("loopback addresses are taken, IPv4, IPv6 and localhost, port 0 included; defaults filled in")
    func loopbackAccepted() throws {
        let v4 = try #require(try load("listen = \"127.0.0.1:9464\"").metrics)
        #expect(v4 == MetricsSettings(host: "127.0.0.1", port: 9464))
        #expect(v4.stallAfterSeconds == 900 && v4.refreshSeconds == 10)
        let v6 = try #require(try load("listen = \"[::1]:0\"\nstall_after = \"5m\"\nrefresh = \"2s\"").metrics)
        #expect(v6.host == "::1" && v6.port == 0 && v6.listen == "[::1]:0")
        #expect(v6.stallAfterSeconds == 300 && v6.refreshSeconds == 2)
        #expect(try load("listen = \"localhost:9100\"").metrics?.host == "localhost")
        #expect(try load("listen = \"127.8.9.10:9100\"").metrics?.port == 9100)
    }

    @Test("a non-loopback address is refused at its line, saying why and how to allow it")
    func remoteRefused() throws {
        for address in ["0.0.0.0:9464", "192.168.1.20:9464", "[::]:9464", "[2001:db8::1]:9464"] {
            let error = try refusal("listen = \"\(address)\"")
            #expect(error.message.contains("is not a loopback address"), "\(error)")
            #expect(error.message.contains("allow_remote = true"), "\(error)")
            #expect(error.line == (try base.line(of: "listen = \"\(address)\"", in: error.file)))
            #expect(!error.description.contains("\n"))
        }
        let allowed = try #require(try load("listen = \"0.0.0.0:9464\"\nallow_remote = true").metrics)
        #expect(allowed.host == "0.0.0.0" && allowed.allowRemote)
    }

    @Test("a malformed address, an out-of-range value or an unknown key is refused with file:line")
    func malformedRefused() throws {
        for address in ["127.0.0.1", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http", "::1:9464",
                        "metrics.clinic.example:9464", ":9464", "[::1]9464", "127.0.0.1:9464/metrics"]
        {
            let error = try refusal("listen = \"\(address)\"")
            #expect(error.message.contains("is not an address such as 127.0.0.1:9464"), "\(address): \(error)")
        }
        #expect(try refusal("listen = 9464").message.contains("must be a string"))
        #expect(try refusal("allow_remote = true").message.contains("missing key 'listen' in [metrics]"))
        #expect(try refusal("listen = \"127.0.0.1:9464\"\nstall_after = \"10s\"").message.contains("between"))
        #expect(try refusal("listen = \"127.0.0.1:9464\"\nrefresh = \"1h\"").message.contains("between"))
        let unknown = try refusal("listen = \"127.0.0.1:9464\"\nport = 9464")
        #expect(unknown.message == "unknown key 'port' in [metrics]")
        #expect(unknown.line == (try base.line(of: "port = 9464", in: unknown.file)))
    }
}

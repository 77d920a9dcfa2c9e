import AftercareConfig
import AftercareCore
import Foundation
import Testing

@Suite("Configuration checks the daemon relies on")
struct ConfigValidationTests {
    let base = ConfigTests()

    static let webhook = """
        [senders.hook]
        kind = "webhook"
        url = "http://127.0.0.1:8080/hook"
        allow_insecure_http = true
        secret_file = "hook.secret"
        """

    /// Loads the example with a webhook sender whose secret file holds `secret`, then reads its
    /// secrets as the daemon does.
    func secretError(_ secret: String?, folderInstead: Bool = false) throws -> ConfigError? {
        let path = try base.variant { $0 + "\n" + Self.webhook + "\n" }
        let secretPath = base.folder + "/hook.secret"
        if folderInstead {
            try FileManager.default.createDirectory(atPath: secretPath, withIntermediateDirectories: true)
        } else if let secret {
            try secret.write(toFile: secretPath, atomically: true, encoding: .utf8)
        }
        let config = try AftercareConfiguration.load(path: path)
        do {
            _ = try config.readSecrets(ofSender: "hook")
            return nil
        } catch {
            #expect(error.file == path)
            #expect(error.line == (try base.line(of: "secret_file = \"hook", in: path)), "\(error)")
            #expect(!error.description.contains("sender 'hook'"), "the caller names the sender once: \(error)")
            return error
        }
    }

    @Test("a webhook secret is refused at its file:line when it lacks whsec_, is not base64 or is too short")
    func webhookSecretShapes() throws {
        let noPrefix = try #require(try secretError("C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n"))
        #expect(noPrefix.message.contains("must start with whsec_"))
        let short = try #require(try secretError("whsec_" + Data(count: 16).base64EncodedString()))
        #expect(short.message.contains("16 bytes; at least 24 are needed"))
        let notBase64 = try #require(try secretError("whsec_not base64!!"))
        #expect(notBase64.message.contains("not base64"))
        #expect(!noPrefix.description.contains("C2FVsBQIhrscChlQIMV"), "the secret is never shown")
        #expect(try secretError("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n") == nil)
    }

    @Test("a secret_file naming a folder, or missing, is refused at its line with the reason")
    func secretFileNotAFile() throws {
        let missing = try #require(try secretError(nil))
        #expect(missing.message.contains("no such file"), "\(missing)")
        let folder = try #require(try secretError(nil, folderInstead: true))
        #expect(folder.message.contains("a folder, not a file"), "\(folder)")
    }

    @Test("empty or control-character paths are refused with file:line, not read as the config's folder")
    func emptyPaths() throws {
        for (original, replacement, key) in [
            ("state_directory = \"../state\"", "state_directory = \"\"", "state_directory"),
            ("state_directory = \"../state\"", "state_directory = \"../state\"\ndatabase = \" \"", "database"),
            ("state_directory = \"../state\"", "state_directory = \"../state\"\nspool = \"\"", "spool"),
            ("outbox = \"../state/outbox\"", "outbox = \"\"", "outbox"),
            ("state_directory = \"../state\"", "state_directory = \"../st\\u0007ate\"", "state_directory"),
            ("files = [\"protocols/trigger-point-injection.toml\"]", "files = [\"\"]", "files"),
        ] {
            let error = try #require(try base.loadError { $0.replacingOccurrences(of: original, with: replacement) },
                                     "\(replacement) should be refused")
            let path = base.folder + "/aftercare.toml"
            #expect(error.file == path)
            let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            let keyLine = try #require(lines.firstIndex { $0.hasPrefix(key + " = ") }) + 1
            #expect(error.line == keyLine, "\(error)")
            #expect(error.message.contains(key), "\(error)")
            #expect(!error.description.unicodeScalars.contains(where: InputRules.isUnsafe))
        }
    }
}

import AftercareCore
import AftercareStore
import Foundation
import Testing

@Suite("The database password's sources")
struct StoreOpenerTests {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("aftercare-password-\(UUID())").path

    func settings(file: String? = nil, credential: String? = nil) -> PostgresSettings {
        PostgresSettings(
            host: "127.0.0.1", user: "aftercare", database: "q", passwordFile: file, passwordCredential: credential,
            node: "n")
    }

    @Test("the first line of the password file, or of the systemd credential; none when neither is named")
    func reads() throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try "s3cret pass\r\nignored\n".write(toFile: folder + "/pw", atomically: true, encoding: .utf8)
        #expect(try StoreOpener.password(for: settings(file: folder + "/pw")) == "s3cret pass")
        try "from-systemd".write(toFile: folder + "/aftercare_db", atomically: true, encoding: .utf8)
        #expect(
            try StoreOpener.password(
                for: settings(credential: "aftercare_db"), environment: ["CREDENTIALS_DIRECTORY": folder])
                == "from-systemd")
        #expect(try StoreOpener.password(for: settings()) == nil)
    }

    @Test("a missing, empty or unreadable source, or a credential outside systemd, is one clear line")
    func refuses() throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        #expect(throws: StoreError.self) { try StoreOpener.password(for: settings(file: folder + "/none")) }
        do {
            _ = try StoreOpener.password(for: settings(file: folder + "/none"))
        } catch {
            #expect("\(error)" == "cannot read the database password from \(folder)/none: no such file")
        }
        try "\n".write(toFile: folder + "/empty", atomically: true, encoding: .utf8)
        do {
            _ = try StoreOpener.password(for: settings(file: folder + "/empty"))
            Issue.record("an empty password file was accepted")
        } catch {
            #expect("\(error)".contains("is empty"))
        }
        do {
            _ = try StoreOpener.password(for: settings(credential: "aftercare_db"), environment: [:])
            Issue.record("a credential was read without CREDENTIALS_DIRECTORY")
        } catch {
            #expect("\(error)".contains("LoadCredential=aftercare_db"))
        }
    }
}

import AftercareConfig
import AftercareCore
import Foundation
import Testing

@Suite("Configuration and protocol files")
struct ConfigTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let example = repository.appendingPathComponent("Config/aftercare.toml").path
    static let defaultProtocol = repository.appendingPathComponent("Config/protocols/trigger-point-injection.toml").path

    let folder: String = {
        let path = NSTemporaryDirectory() + "aftercare-config-tests-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    /// The shipped example with `edit` applied, written beside a copy of the protocols folder.
    func variant(_ edit: (String) -> String) throws -> String {
        try FileManager.default.createDirectory(atPath: folder + "/protocols", withIntermediateDirectories: true)
        try? FileManager.default.copyItem(atPath: Self.defaultProtocol, toPath: folder + "/protocols/trigger-point-injection.toml")
        let path = folder + "/aftercare.toml"
        try edit(try String(contentsOfFile: Self.example, encoding: .utf8)).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func loadError(_ edit: (String) -> String) throws -> ConfigError? {
        let path = try variant(edit)
        do {
            _ = try AftercareConfiguration.load(path: path)
            return nil
        } catch {
            return error
        }
    }

    /// The line of the first occurrence of `text` in the edited file.
    func line(of text: String, in path: String) throws -> Int {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        return lines.firstIndex { $0.contains(text) }! + 1
    }

    @Test("the shipped example and default protocol load")
    func shippedExample() throws {
        let config = try AftercareConfiguration.load(path: Self.example)
        #expect(config.policy.clinicName == "Riverside Pain Clinic")
        #expect(config.policy.quietHours == QuietHours(startMinute: 1260, endMinute: 480))
        #expect(config.channels == ["sms": "outbox", "email": "outbox"])
        #expect(config.senders["outbox"] == .file(outbox: Self.repository.appendingPathComponent("state/outbox").path))
        #expect(config.paths.database == Self.repository.appendingPathComponent("state/aftercare.sqlite").path)
        #expect(config.retry.maxAttempts == 8)
        #expect(config.dispatch.leaseSeconds == 300)
        #expect(config.protocols.keys.sorted() == ["trigger-point-injection"])
    }

    @Test("the default protocol has the six steps, the warning signs in every check-in, and no diagnosis")
    func defaultProtocol() throws {
        let careProtocol = try ProtocolFile.load(path: Self.defaultProtocol)
        #expect(careProtocol.steps.map(\.id) == ["ice", "activity", "resume-activity", "checkin-24h", "checkin-48h", "checkin-72h"])
        #expect(careProtocol.step("ice")?.offset == .elapsed(seconds: 0))
        #expect(careProtocol.step("resume-activity")?.offset == .elapsed(seconds: 86400))
        #expect(careProtocol.step("checkin-72h")?.offset == .elapsed(seconds: 3 * 86400))
        #expect(careProtocol.step("ice")?.validForSeconds == 6 * 3600)
        let policy = ClinicPolicy(clinicName: "Riverside Pain Clinic", clinicPhone: "+1 555-010-2030",
                                  clinicTimeZone: "America/New_York", quietHours: nil, urgentQuietHours: nil)
        let procedure = Procedure(
            id: "P-1", protocolID: careProtocol.id, performedAt: Timestamp.parse("2026-11-25T15:40:00-05:00")!,
            patient: Patient(id: "MRN-1", firstName: "Ana", timeZone: "America/New_York", routes: []))
        let context = TemplateContext(procedure: procedure, policy: policy, sendAt: procedure.performedAt)
        for step in careProtocol.steps {
            let text = (step.subject.render(context) + "\n" + step.body.render(context)).lowercased()
            #expect(text.contains("riverside pain clinic"), "\(step.id) names the clinic")
            #expect(text.contains("+1 555-010-2030"), "\(step.id) gives the phone")
            for word in ["trigger", "injection point", "myofascial", "anesthetic", "lidocaine", "corticosteroid", "steroid", "diagnos"] {
                #expect(!text.contains(word), "\(step.id) mentions \(word)")
            }
        }
        #expect(careProtocol.step("activity")!.body.render(context).contains("avoid strenuous exercise until 3:40 PM tomorrow"))
        #expect(careProtocol.step("ice")!.body.render(context).contains("apply ice"))
        for id in ["checkin-24h", "checkin-48h", "checkin-72h"] {
            let body = careProtocol.step(id)!.body.render(context)
            #expect(careProtocol.step(id)!.urgent)
            for sign in ["severe pain that worsens", "redness, swelling, or drainage", "fever or flu-like symptoms",
                         "numbness or tingling that doesn't go away"]
            {
                #expect(body.contains(sign), "\(id) lists '\(sign)'")
            }
        }
    }

    @Test("an unknown key is refused with its file and line")
    func unknownKey() throws {
        let error = try #require(try loadError { $0.replacingOccurrences(of: "phone = ", with: "fone = \"x\"\nphone = ") })
        #expect(error.file == folder + "/aftercare.toml")
        #expect(error.line == (try line(of: "fone =", in: folder + "/aftercare.toml")))
        #expect(error.message == "unknown key 'fone' in [clinic]")
    }

    @Test("bad values of each kind name the file and line")
    func badValues() throws {
        let path = folder + "/aftercare.toml"
        let cases: [(String, String, String, String)] = [
            ("start = \"21:00\"", "start = \"25:00\"", "start = \"25:00\"", "is not a time HH:MM"),
            ("initial_delay = \"30s\"", "initial_delay = \"soon\"", "initial_delay = \"soon\"", "is not a duration"),
            ("time_zone = \"America/New_York\"", "time_zone = \"Mars/Base\"", "time_zone =", "is not a known IANA time zone"),
            ("max_attempts = 8", "max_attempts = \"eight\"", "max_attempts = \"eight\"", "must be a whole number"),
            ("jitter = 0.2", "jitter = 3.0", "jitter = 3.0", "must be between 0.0 and 1.0"),
            ("kind = \"file\"", "kind = \"carrier-pigeon\"", "kind = \"carrier-pigeon\"", "unknown sender kind 'carrier-pigeon'"),
            ("sms = \"outbox\"", "sms = \"gateway\"", "sms = \"gateway\"", "names sender 'gateway', which is not defined"),
        ]
        for (original, replacement, marker, message) in cases {
            let error = try #require(try loadError { $0.replacingOccurrences(of: original, with: replacement) }, "\(replacement)")
            #expect(error.line == (try line(of: marker, in: path)), "\(replacement): \(error)")
            #expect(error.message.contains(message), "\(replacement): \(error)")
        }
    }

    @Test("a webhook over plain http needs the explicit flag, and secrets are never inline")
    func senderRules() throws {
        let webhook = """
            [senders.gateway]
            kind = "webhook"
            url = "http://127.0.0.1:8080/hook"
            secret_file = "webhook.secret"
            """
        let plain = try #require(try loadError { $0 + "\n" + webhook })
        #expect(plain.message.contains("http:// is not encrypted"))
        let allowed = try variant { $0 + "\n" + webhook + "\nallow_insecure_http = true\n" }
        let config = try AftercareConfiguration.load(path: allowed)
        guard case .webhook(let settings) = config.senders["gateway"] else {
            Issue.record("expected a webhook sender")
            return
        }
        #expect(settings.secret == .file(path: folder + "/webhook.secret"))
        let inline = try #require(try loadError {
            $0 + "\n" + webhook.replacingOccurrences(of: "secret_file = \"webhook.secret\"", with: "secret = \"whsec_abc\"")
        })
        #expect(inline.message.contains("secrets are never written in the configuration"))
        #expect(!inline.description.contains("whsec_abc"))
    }

    @Test("a TOML syntax error gives its line")
    func syntaxError() throws {
        let error = try #require(try loadError { $0.replacingOccurrences(of: "name = \"Riverside Pain Clinic\"", with: "name = \"Riverside") })
        #expect(error.line == (try line(of: "name = \"Riverside", in: folder + "/aftercare.toml")))
        #expect(error.message.hasPrefix("TOML syntax"))
    }

    @Test("protocol errors name the protocol file and line")
    func protocolErrors() throws {
        let path = folder + "/broken.toml"
        let text = try String(contentsOfFile: Self.defaultProtocol, encoding: .utf8)
        for (original, replacement, message) in [
            ("at = \"+48h\"", "at = \"after lunch\"", "is not an offset"),
            // The first message no longer ends "{clinic_phone}." (issue 9 put the warning signs after it).
            ("{clinic_phone}", "{clinic_fax}", "unknown field {clinic_fax}"),
            ("id = \"checkin-72h\"", "id = \"checkin-48h\"", "step id 'checkin-48h' appears twice"),
            ("valid_for = \"6h\"", "valid_for = \"6h\"\nrepeat = true", "unknown key 'repeat' in [steps[0]]"),
        ] {
            try text.replacingOccurrences(of: original, with: replacement).write(toFile: path, atomically: true, encoding: .utf8)
            do {
                _ = try ProtocolFile.load(path: path)
                Issue.record("\(replacement) should be refused")
            } catch {
                #expect(error.file == path)
                #expect(error.line != nil, "\(error)")
                #expect(error.message.contains(message), "\(error)")
            }
        }
    }

    @Test("credentials come from files or $CREDENTIALS_DIRECTORY, and errors never show them")
    func credentials() throws {
        try "whsec_secretvalue\n".write(toFile: folder + "/key", atomically: true, encoding: .utf8)
        #expect(try Credentials.read(.file(path: folder + "/key")) == "whsec_secretvalue")
        #expect(try Credentials.read(.credential(name: "key"), environment: ["CREDENTIALS_DIRECTORY": folder]) == "whsec_secretvalue")
        do {
            _ = try Credentials.read(.credential(name: "key"), environment: [:])
            Issue.record("should need CREDENTIALS_DIRECTORY")
        } catch {
            #expect(error.message.contains("$CREDENTIALS_DIRECTORY"))
        }
        do {
            _ = try Credentials.read(.file(path: folder + "/missing"))
            Issue.record("should fail")
        } catch {
            #expect(error.description == "\(folder)/missing: cannot read secret: no such file")
        }
        try "".write(toFile: folder + "/empty", atomically: true, encoding: .utf8)
        #expect(throws: ConfigError.self) { try Credentials.read(.file(path: folder + "/empty")) }
    }
}

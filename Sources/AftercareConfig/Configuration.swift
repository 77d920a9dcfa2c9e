import AftercareCore
import Foundation

/// Where aftercare keeps its state. All paths are absolute.
public struct StoragePaths: Sendable, Hashable {
    public var stateDirectory: String
    /// The SQLite database (default `<state>/aftercare.sqlite`).
    public var database: String
    /// The intake spool (default `<state>/spool`).
    public var spool: String

    public init(stateDirectory: String, database: String, spool: String) {
        self.stateDirectory = stateDirectory
        self.database = database
        self.spool = spool
    }
}

/// How the dispatcher works through due reminders.
public struct DispatchSettings: Sendable, Hashable {
    /// Reminders claimed per transaction.
    public var batchSize: Int
    /// How long a claim holds before it lapses and the reminder goes back to the queue.
    public var leaseSeconds: Double
    /// Sends under way at once, in all.
    public var maxConcurrent: Int
    /// Sends under way at once to any one host.
    public var maxPerHost: Int
    /// On SIGTERM, how long sends under way may take to finish.
    public var shutdownGrace: Double

    public init(
        batchSize: Int = 256, leaseSeconds: Double = 300, maxConcurrent: Int = 64, maxPerHost: Int = 16,
        shutdownGrace: Double = 10
    ) {
        self.batchSize = batchSize
        self.leaseSeconds = leaseSeconds
        self.maxConcurrent = maxConcurrent
        self.maxPerHost = maxPerHost
        self.shutdownGrace = shutdownGrace
    }
}

/// How booked appointments are handled.
public struct AppointmentSettings: Sendable, Hashable {
    /// How long after its planned time a booked appointment that was never marked performed is
    /// closed as not performed (it then never sends aftercare).
    public var closeUnconfirmedAfter: Double

    public init(closeUnconfirmedAfter: Double = 12 * 3600) {
        self.closeUnconfirmedAfter = closeUnconfirmedAfter
    }
}

/// The whole configuration: `/etc/aftercare/aftercare.toml` and the protocol files it names.
/// `Config/aftercare.toml` is the annotated example.
public struct AftercareConfiguration: Sendable {
    /// The absolute path it was loaded from.
    public var file: String
    public var policy: ClinicPolicy
    /// Protocols by id.
    public var protocols: [String: CareProtocol]
    public var paths: StoragePaths
    /// Senders by the name the file gives them.
    public var senders: [String: SenderSettings]
    /// Channel name → sender name; every sender named exists.
    public var channels: [String: String]
    public var retry: RetryPolicy
    public var dispatch: DispatchSettings
    /// The `[metrics]` listener, or `nil` when the section is absent (nothing listens).
    public var metrics: MetricsSettings? = nil
    /// Sender name → the secrets it names, with the line of each, so a bad secret is reported at
    /// the line that names it.
    public var secretKeys: [String: [SecretKey]] = [:]
    public var appointments = AppointmentSettings()
    /// Which engine keeps the queue (`[store]`): SQLite unless it says PostgreSQL.
    public var store = StoreSettings.sqlite

    /// The `credentials/` folder beside the configuration: what the unit passes in as credentials
    /// `aftercare_<file>`, read directly when a command runs outside systemd.
    public var credentialsFolder: String {
        URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent("credentials").path
    }

    /// Loads and checks the configuration and every protocol it names. Unknown keys and bad values
    /// are errors naming the file and line.
    public static func load(path: String) throws(ConfigError) -> AftercareConfiguration {
        let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
        let source = try TOMLSource(path: absolute)
        let folder = URL(fileURLWithPath: absolute).deletingLastPathComponent()
        func resolve(_ value: String) -> String {
            value.hasPrefix("/") ? value : folder.appendingPathComponent(value).standardizedFileURL.path
        }
        let root = Section(source, source.root, path: "")

        guard let clinic = try root.subtable("clinic") else { throw root.error(nil, "missing table [clinic]") }
        let name = try clinic.requiredString("name")
        let phone = try clinic.requiredString("phone")
        let zone = try clinic.requiredString("time_zone")
        for (key, value) in [("name", name), ("phone", phone)] {
            do {
                try InputRules.checkText(value, field: "clinic.\(key)", maxLength: 120)
            } catch {
                throw clinic.error(key, "\(error)")
            }
        }
        do {
            try InputRules.checkTimeZone(zone, field: "clinic.time_zone")
        } catch {
            throw clinic.error("time_zone", "\(error)")
        }
        try clinic.rejectUnknownKeys()

        var quietHours: QuietHours?
        var urgentQuietHours: QuietHours?
        if let quiet = try root.subtable("quiet_hours") {
            quietHours = try readWindow(quiet, startKey: "start", endKey: "end")
            urgentQuietHours = try readWindow(quiet, startKey: "urgent_start", endKey: "urgent_end")
            try quiet.rejectUnknownKeys()
        }

        var stateDirectory = "/var/lib/aftercare"
        var database: String?
        var spool: String?
        if let paths = try root.subtable("paths") {
            stateDirectory = try paths.path("state_directory", resolve: resolve) ?? stateDirectory
            database = try paths.path("database", resolve: resolve)
            spool = try paths.path("spool", resolve: resolve)
            try paths.rejectUnknownKeys()
        }
        let storage = StoragePaths(
            stateDirectory: stateDirectory, database: database ?? stateDirectory + "/aftercare.sqlite",
            spool: spool ?? stateDirectory + "/spool")

        guard let protocolsSection = try root.subtable("protocols"),
            let files = try protocolsSection.paths("files", resolve: { $0 }), !files.isEmpty
        else {
            throw root.error("protocols", "missing [protocols] files = [\"protocols/trigger-point-injection.toml\"]")
        }
        try protocolsSection.rejectUnknownKeys()
        var protocols: [String: CareProtocol] = [:]
        for file in files {
            let careProtocol = try ProtocolFile.load(path: resolve(file))
            if protocols[careProtocol.id] != nil {
                throw protocolsSection.error("files", "two protocol files define the id '\(careProtocol.id)'")
            }
            protocols[careProtocol.id] = careProtocol
        }

        var senders: [String: SenderSettings] = [:]
        var secretKeys: [String: [SecretKey]] = [:]
        guard let sendersSection = try root.subtable("senders"), !sendersSection.table.keys.isEmpty else {
            throw root.error("senders", "missing [senders.NAME] tables (at least one sender is needed)")
        }
        for senderName in sendersSection.table.keys.sorted() {
            guard let section = try sendersSection.subtable(senderName) else { continue }
            var keys: [SecretKey] = []
            senders[senderName] = try readSender(section, resolve: resolve, secrets: &keys)
            secretKeys[senderName] = keys
        }
        try sendersSection.rejectUnknownKeys()

        var channels: [String: String] = [:]
        guard let channelsSection = try root.subtable("channels"), !channelsSection.table.keys.isEmpty else {
            throw root.error("channels", "missing [channels] (e.g. sms = \"outbox\")")
        }
        for channel in channelsSection.table.keys.sorted() {
            do {
                try InputRules.checkName(channel, field: "channel")
            } catch {
                throw channelsSection.error(channel, "channel name '\(InputRules.printable(channel))': \(error.problem)")
            }
            let target = try channelsSection.requiredString(channel)
            guard senders[target] != nil else {
                throw channelsSection.error(
                    channel, "channel '\(channel)' names sender '\(InputRules.printable(target))', which is not defined "
                        + "(defined: \(senders.keys.sorted().joined(separator: ", ")))")
            }
            channels[channel] = target
        }

        var retry = RetryPolicy()
        if let section = try root.subtable("retry") {
            retry.initialDelay = Double(try section.duration("initial_delay", in: 1...86400) ?? Int(retry.initialDelay))
            retry.multiplier = try section.number("multiplier", in: 1...10) ?? retry.multiplier
            retry.maxDelay = Double(try section.duration("max_delay", in: 1...(7 * 86400)) ?? Int(retry.maxDelay))
            retry.maxAttempts = try section.int("max_attempts", in: 1...100) ?? retry.maxAttempts
            retry.jitter = try section.number("jitter", in: 0...1) ?? retry.jitter
            try section.rejectUnknownKeys()
        }

        var dispatch = DispatchSettings()
        if let section = try root.subtable("dispatch") {
            dispatch.batchSize = try section.int("batch_size", in: 1...10_000) ?? dispatch.batchSize
            dispatch.leaseSeconds = Double(try section.duration("lease", in: 10...86400) ?? Int(dispatch.leaseSeconds))
            dispatch.maxConcurrent = try section.int("max_concurrent", in: 1...4096) ?? dispatch.maxConcurrent
            dispatch.maxPerHost = try section.int("max_per_host", in: 1...4096) ?? dispatch.maxPerHost
            dispatch.shutdownGrace = Double(
                try section.duration("shutdown_grace", in: 0...600) ?? Int(dispatch.shutdownGrace))
            try section.rejectUnknownKeys()
        }
        let metrics = try MetricsSettings.read(try root.subtable("metrics"))
        let store = try StoreSettings.read(try root.subtable("store"), resolve: resolve)
        var appointments = AppointmentSettings()
        if let section = try root.subtable("appointments") {
            appointments.closeUnconfirmedAfter = Double(
                try section.duration("close_unconfirmed_after", in: 600...(7 * 86400))
                    ?? Int(appointments.closeUnconfirmedAfter))
            try section.rejectUnknownKeys()
        }
        try root.rejectUnknownKeys()

        var configuration = AftercareConfiguration(
            file: absolute,
            policy: ClinicPolicy(
                clinicName: name, clinicPhone: phone, clinicTimeZone: zone, quietHours: quietHours,
                urgentQuietHours: urgentQuietHours),
            protocols: protocols, paths: storage, senders: senders, channels: channels, retry: retry, dispatch: dispatch
        )
        configuration.secretKeys = secretKeys
        configuration.metrics = metrics
        configuration.appointments = appointments
        configuration.store = store
        return configuration
    }

    private static func readWindow(_ section: Section, startKey: String, endKey: String) throws(ConfigError) -> QuietHours? {
        let start = try section.string(startKey)
        let end = try section.string(endKey)
        switch (start, end) {
        case (nil, nil): return nil
        case (let start?, let end?):
            guard let startMinute = ProtocolFile.parseClock(start) else {
                throw section.error(startKey, "'\(section.keyPath(startKey))' = \"\(InputRules.printable(start))\" is not a time HH:MM")
            }
            guard let endMinute = ProtocolFile.parseClock(end) else {
                throw section.error(endKey, "'\(section.keyPath(endKey))' = \"\(InputRules.printable(end))\" is not a time HH:MM")
            }
            return QuietHours(startMinute: startMinute, endMinute: endMinute)
        default:
            throw section.error(start == nil ? endKey : startKey, "give both \(startKey) and \(endKey), or neither")
        }
    }

    private static func readSender(
        _ section: Section, resolve: (String) -> String, secrets: inout [SecretKey]
    ) throws(ConfigError) -> SenderSettings {
        let kind = try section.requiredString("kind")
        for inline in ["secret", "password", "token"] where section.has(inline) {
            throw section.error(
                inline, "secrets are never written in the configuration: use \(inline)_file or \(inline)_credential")
        }
        func transport() throws(ConfigError) -> TransportSettings {
            var settings = TransportSettings()
            settings.connectTimeout = Double(try section.duration("connect_timeout", in: 1...300) ?? Int(settings.connectTimeout))
            settings.totalTimeout = Double(try section.duration("total_timeout", in: 1...600) ?? Int(settings.totalTimeout))
            settings.caFile = try section.path("ca_file", resolve: resolve)
            return settings
        }
        func credential(_ base: String, use: SecretKey.Use) throws(ConfigError) -> CredentialSource? {
            let file = try section.path(base + "_file", resolve: resolve)
            let name = try section.string(base + "_credential")
            switch (file, name) {
            case (nil, nil): return nil
            case (let file?, nil):
                secrets.append(SecretKey(key: base + "_file", line: section.line(of: base + "_file"), use: use,
                                         source: .file(path: file)))
                return .file(path: file)
            case (nil, let name?):
                guard !name.isEmpty, !name.contains("/"), name != ".", name != "..",
                    !name.unicodeScalars.contains(where: InputRules.isUnsafe)
                else {
                    throw section.error(base + "_credential", "a credential name is a plain file name, not a path")
                }
                secrets.append(SecretKey(key: base + "_credential", line: section.line(of: base + "_credential"),
                                         use: use, source: .credential(name: name)))
                return .credential(name: name)
            default:
                throw section.error(base + "_file", "give \(base)_file or \(base)_credential, not both")
            }
        }
        /// The URL, checked: one of `schemes`; `http://` only with the insecure flag set.
        func url(schemes: [String], insecureKey: String) throws(ConfigError) -> (String, Bool) {
            let text = try section.requiredString("url")
            let insecure = try section.bool(insecureKey) ?? false
            guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
                let host = components.host, !host.isEmpty,
                !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == " " })
            else {
                throw section.error("url", "'\(section.keyPath("url"))' = \"\(InputRules.printable(text))\" is not a URL")
            }
            if scheme == "http" && !insecure {
                throw section.error(
                    "url", "http:// is not encrypted: use https://, or set \(insecureKey) = true for a loopback gateway")
            }
            guard schemes.contains(scheme) else {
                throw section.error("url", "'\(section.keyPath("url"))' must start with \(schemes.map { $0 + "://" }.joined(separator: " or "))")
            }
            return (text, insecure)
        }
        func address(_ key: String) throws(ConfigError) -> String {
            let value = try section.requiredString(key)
            do {
                try InputRules.checkEmail(value, field: section.keyPath(key))
            } catch {
                throw section.error(key, "\(error)")
            }
            return value
        }
        func displayName() throws(ConfigError) -> String? {
            guard let value = try section.string("from_name") else { return nil }
            do {
                try InputRules.checkText(value, field: section.keyPath("from_name"), maxLength: 120)
            } catch {
                throw section.error("from_name", "\(error)")
            }
            return value
        }

        let settings: SenderSettings
        switch kind {
        case "file":
            guard let outbox = try section.path("outbox", resolve: resolve) else {
                throw section.error(nil, "missing key 'outbox' in \(section.display)")
            }
            settings = .file(outbox: outbox)
        case "webhook":
            let (target, insecure) = try url(schemes: ["http", "https"], insecureKey: "allow_insecure_http")
            guard let secret = try credential("secret", use: .webhookSecret) else {
                throw section.error(nil, "a webhook sender needs secret_file or secret_credential (the whsec_ signing secret)")
            }
            settings = .webhook(WebhookSettings(url: target, secret: secret, allowInsecureHTTP: insecure, transport: try transport()))
        case "smtp":
            let (target, insecure) = try url(schemes: ["smtp", "smtps"], insecureKey: "allow_insecure")
            let from = try address("from")
            let fromName = try displayName()
            let username = try section.string("username")
            let password = try credential("password", use: .password)
            if username != nil && password == nil {
                throw section.error("username", "a username needs password_file or password_credential")
            }
            settings = .smtp(
                SMTPSettings(
                    url: target, fromAddress: from, fromName: fromName, username: username, password: password,
                    allowInsecure: insecure, transport: try transport()))
        case "http-email":
            let (target, insecure) = try url(schemes: ["http", "https"], insecureKey: "allow_insecure_http")
            guard let token = try credential("token", use: .token) else {
                throw section.error(nil, "an http-email sender needs token_file or token_credential")
            }
            settings = .httpEmail(
                HTTPEmailSettings(
                    url: target, token: token, fromAddress: try address("from"), fromName: try displayName(),
                    allowInsecureHTTP: insecure, transport: try transport()))
        default:
            throw section.error("kind", "unknown sender kind '\(InputRules.printable(kind))' (file, webhook, smtp, http-email)")
        }
        try section.rejectUnknownKeys()
        return settings
    }
}

/// Reads secrets from files or systemd credentials. Never puts a secret in an error or a log.
public enum Credentials {
    public static func read(
        _ source: CredentialSource, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigError) -> String {
        let path: String
        switch source {
        case .file(let file):
            path = file
        case .credential(let name):
            guard let directory = environment["CREDENTIALS_DIRECTORY"], !directory.isEmpty else {
                throw ConfigError(
                    file: name, line: nil,
                    message: "credential '\(name)' needs $CREDENTIALS_DIRECTORY (set by systemd's LoadCredential=)")
            }
            path = directory + "/" + name
        }
        let data: Data
        do {
            data = try SecretFile.read(path)
        } catch {
            throw ConfigError(file: path, line: nil, message: "cannot read secret: \(error.reason)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(file: path, line: nil, message: "the secret is not UTF-8 text")
        }
        let secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !secret.isEmpty else { throw ConfigError(file: path, line: nil, message: "the secret file is empty") }
        return secret
    }
}

/// A secret a sender names: which key, on which line, what it is for and where it is read from.
public struct SecretKey: Sendable, Hashable {
    /// What the secret is used as, which decides the shape it must have.
    public enum Use: Sendable, Hashable {
        case webhookSecret
        case password
        case token
    }

    /// `secret_file`, `password_credential`, …
    public var key: String
    public var line: Int?
    public var use: Use
    public var source: CredentialSource
}

extension AftercareConfiguration {
    /// Reads every secret sender `name` needs and checks its shape: the one check that
    /// `aftercare config check` and the daemon (at start and at each reload) both run, so one
    /// refuses exactly what the other does. Errors name the configuration file and the line of the
    /// key that names the secret; never the secret itself.
    ///
    /// - Parameter read: reads a secret (the daemon: `Credentials.read`; `config check` maps
    ///   systemd credentials to files beside the configuration first).
    /// - Returns: each secret by its source.
    public func readSecrets(
        ofSender name: String,
        read: (CredentialSource) throws(ConfigError) -> String = { source throws(ConfigError) in
            try Credentials.read(source)
        }
    ) throws(ConfigError) -> [CredentialSource: String] {
        var secrets: [CredentialSource: String] = [:]
        for secretKey in secretKeys[name] ?? [] {
            func refuse(_ problem: String) -> ConfigError {
                ConfigError(file: file, line: secretKey.line, message: "\(secretKey.key): \(problem)")
            }
            let secret: String
            do {
                secret = try read(secretKey.source)
            } catch {
                throw refuse(error.line == nil ? "\(error.file): \(error.message)" : error.description)
            }
            do {
                switch secretKey.use {
                case .webhookSecret: _ = try SecretRules.webhookSigningKey(secret)
                case .password, .token: try SecretRules.checkToken(secret, field: "the secret")
                }
            } catch {
                throw refuse("\(secretKey.source): \(error)")
            }
            secrets[secretKey.source] = secret
        }
        return secrets
    }
}

/// Reads a small secret file, saying plainly why when it cannot.
enum SecretFile {
    struct Problem: Error {
        var reason: String
    }

    static func read(_ path: String) throws(Problem) -> Data {
        var info = stat()
        guard stat(path, &info) == 0 else {
            let code = errno
            switch code {
            case ENOENT, ENOTDIR: throw Problem(reason: "no such file")
            case EACCES: throw Problem(reason: "not readable by this user (permission denied)")
            default: throw Problem(reason: String(cString: strerror(code)))
            }
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw Problem(reason: info.st_mode & S_IFMT == S_IFDIR ? "a folder, not a file" : "not a regular file")
        }
        guard info.st_size <= 64 * 1024 else { throw Problem(reason: "larger than 64 KiB: not a secret") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Problem(reason: access(path, R_OK) == 0 ? "cannot be read" : "not readable by this user")
        }
        return data
    }
}

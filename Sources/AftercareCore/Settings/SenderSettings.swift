import Foundation

/// Where a secret comes from. Secrets never live in the TOML itself and are never logged.
public enum CredentialSource: Sendable, Hashable, CustomStringConvertible {
    /// A file at this absolute path (the config loader resolves relative paths against the config
    /// file's folder).
    case file(path: String)
    /// A systemd credential by name: `$CREDENTIALS_DIRECTORY/<name>` (from `LoadCredential=`).
    case credential(name: String)

    public var description: String {
        switch self {
        case .file(let path): return "file \(path)"
        case .credential(let name): return "credential \(name)"
        }
    }
}

extension CredentialSource {
    /// Where a command run outside systemd (no `$CREDENTIALS_DIRECTORY`) reads this: a credential
    /// named `aftercare_<file>`, which the unit's `LoadCredential=aftercare:…/credentials` provides,
    /// is the file `<credentialsFolder>/<file>`; anything else is read as it is.
    public func outsideSystemd(
        credentialsFolder: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> CredentialSource {
        guard case .credential(let name) = self, environment["CREDENTIALS_DIRECTORY"] ?? "" == "",
            name.hasPrefix("aftercare_")
        else { return self }
        return .file(path: credentialsFolder + "/" + name.dropFirst("aftercare_".count))
    }
}

/// Timeouts and TLS settings every network sender shares.
public struct TransportSettings: Sendable, Hashable {
    /// Seconds to establish the connection (TCP and TLS).
    public var connectTimeout: Double
    /// Seconds for the whole transfer.
    public var totalTimeout: Double
    /// A transfer slower than `lowSpeedBytes` per second for `lowSpeedSeconds` is abandoned.
    public var lowSpeedBytes: Int
    public var lowSpeedSeconds: Int
    /// A CA bundle to verify the receiver against, instead of the system's. Verification is always on.
    public var caFile: String?

    public init(
        connectTimeout: Double = 5,
        totalTimeout: Double = 15,
        lowSpeedBytes: Int = 1,
        lowSpeedSeconds: Int = 10,
        caFile: String? = nil
    ) {
        self.connectTimeout = connectTimeout
        self.totalTimeout = totalTimeout
        self.lowSpeedBytes = lowSpeedBytes
        self.lowSpeedSeconds = lowSpeedSeconds
        self.caFile = caFile
    }
}

/// A Standard Webhooks receiver: the clinic's SMS gateway, patient portal or messaging platform.
public struct WebhookSettings: Sendable, Hashable {
    /// `https://…`, or `http://…` only when `allowInsecureHTTP` is set (loopback gateways).
    public var url: String
    /// The `whsec_…` signing secret.
    public var secret: CredentialSource
    public var allowInsecureHTTP: Bool
    public var transport: TransportSettings

    public init(url: String, secret: CredentialSource, allowInsecureHTTP: Bool, transport: TransportSettings) {
        self.url = url
        self.secret = secret
        self.allowInsecureHTTP = allowInsecureHTTP
        self.transport = transport
    }
}

/// The clinic's SMTP relay.
public struct SMTPSettings: Sendable, Hashable {
    /// `smtp://host:587` (STARTTLS required) or `smtps://host:465`.
    public var url: String
    /// The envelope and header sender, e.g. `aftercare@clinic.example`.
    public var fromAddress: String
    /// The display name in `From:`; defaults to the clinic's name.
    public var fromName: String?
    /// AUTH user name, if the relay wants one.
    public var username: String?
    /// AUTH password, required when `username` is set.
    public var password: CredentialSource?
    /// Plain SMTP without STARTTLS, only when the config says so explicitly (loopback relays).
    public var allowInsecure: Bool
    public var transport: TransportSettings

    public init(
        url: String,
        fromAddress: String,
        fromName: String?,
        username: String?,
        password: CredentialSource?,
        allowInsecure: Bool,
        transport: TransportSettings
    ) {
        self.url = url
        self.fromAddress = fromAddress
        self.fromName = fromName
        self.username = username
        self.password = password
        self.allowInsecure = allowInsecure
        self.transport = transport
    }
}

/// An HTTP "send mail" API of the common JSON shape (bearer token, idempotency key).
public struct HTTPEmailSettings: Sendable, Hashable {
    public var url: String
    public var token: CredentialSource
    public var fromAddress: String
    public var fromName: String?
    public var allowInsecureHTTP: Bool
    public var transport: TransportSettings

    public init(
        url: String,
        token: CredentialSource,
        fromAddress: String,
        fromName: String?,
        allowInsecureHTTP: Bool,
        transport: TransportSettings
    ) {
        self.url = url
        self.token = token
        self.fromAddress = fromAddress
        self.fromName = fromName
        self.allowInsecureHTTP = allowInsecureHTTP
        self.transport = transport
    }
}

/// One configured sender, by kind.
public enum SenderSettings: Sendable, Hashable {
    /// Writes each message as a file into `outbox` (the zero-setup default).
    case file(outbox: String)
    case webhook(WebhookSettings)
    case smtp(SMTPSettings)
    case httpEmail(HTTPEmailSettings)

    /// The kind as the config file names it.
    public var kind: String {
        switch self {
        case .file: return "file"
        case .webhook: return "webhook"
        case .smtp: return "smtp"
        case .httpEmail: return "http-email"
        }
    }
}

/// How failed attempts are retried: exponential backoff with jitter, never past the step's window.
public struct RetryPolicy: Sendable, Hashable {
    /// Delay before the first retry, in seconds.
    public var initialDelay: Double
    /// Each further retry waits this many times longer.
    public var multiplier: Double
    /// No single wait is longer than this.
    public var maxDelay: Double
    /// Total tries, the first included; after the last the reminder is `dead`.
    public var maxAttempts: Int
    /// Each wait is spread by up to this fraction either way (0.2 = ±20 %).
    public var jitter: Double

    public init(initialDelay: Double = 30, multiplier: Double = 2, maxDelay: Double = 3600, maxAttempts: Int = 8,
                jitter: Double = 0.2)
    {
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
        self.maxAttempts = maxAttempts
        self.jitter = jitter
    }

    /// The wait after try number `attempt` (1-based) failed, before jitter, in seconds.
    public func baseDelay(afterAttempt attempt: Int) -> Double {
        let exponent = Double(max(0, attempt - 1))
        return min(maxDelay, initialDelay * pow(multiplier, exponent))
    }

    /// The wait after try `attempt` failed, with jitter drawn from `unit` (a number in 0..<1), and
    /// no shorter than the receiver's own `Retry-After` if it gave one.
    public func delay(afterAttempt attempt: Int, retryAfter: Double?, unit: Double) -> Double {
        let base = baseDelay(afterAttempt: attempt)
        let spread = base * jitter * (unit * 2 - 1)
        return max(retryAfter ?? 0, max(0, base + spread))
    }
}

/// The shapes of the secrets senders use. `aftercare config check`, the daemon's start and reload,
/// and the senders themselves all check through these, so they refuse the same secrets.
public enum SecretRules {
    /// The shortest HMAC key a `whsec_` secret may carry (Standard Webhooks: 24 to 64 bytes).
    public static let minimumWebhookKeyBytes = 24

    /// The HMAC key inside a `whsec_` secret: `whsec_` then the base64 of at least 24 bytes.
    public static func webhookSigningKey(_ secret: String) throws(ValidationError) -> Data {
        guard secret.hasPrefix("whsec_") else {
            throw ValidationError(
                field: "webhook secret",
                problem: "must start with whsec_ (Standard Webhooks), followed by base64 of at least "
                    + "\(minimumWebhookKeyBytes) random bytes")
        }
        guard let bytes = Data(base64Encoded: String(secret.dropFirst(6))) else {
            throw ValidationError(field: "webhook secret", problem: "the part after whsec_ is not base64")
        }
        guard bytes.count >= minimumWebhookKeyBytes else {
            throw ValidationError(
                field: "webhook secret",
                problem: "the key after whsec_ is \(bytes.count) bytes; at least \(minimumWebhookKeyBytes) are needed")
        }
        return bytes
    }

    /// A password or API token: one line of printable text.
    public static func checkToken(_ secret: String, field: String) throws(ValidationError) {
        if secret.unicodeScalars.contains(where: InputRules.isUnsafe) {
            throw ValidationError(field: field, problem: "contains a control character or a line break")
        }
    }
}

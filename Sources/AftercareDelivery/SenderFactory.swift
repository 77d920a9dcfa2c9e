import AftercareCore
import Foundation

/// Builds senders from their configured settings.
public enum SenderFactory {
    /// - Parameters:
    ///   - readSecret: reads a secret from its file or credential (the config loader's `Credentials`).
    ///   - engine: the curl engine network senders share.
    public static func make(
        name: String,
        settings: SenderSettings,
        clinicName: String,
        readSecret: (CredentialSource) throws -> String,
        engine: CurlEngine
    ) throws -> any Sender {
        // The caller names the sender in its own message: errors from here must not name it again.
        do {
            return try build(
                name: name, settings: settings, clinicName: clinicName, readSecret: readSecret, engine: engine)
        } catch let error as DeliveryError {
            let prefix = "sender '\(name)': "
            let message = error.message
            throw SenderSetupError(message: message.hasPrefix(prefix) ? String(message.dropFirst(prefix.count)) : message)
        }
    }

    private static func build(
        name: String,
        settings: SenderSettings,
        clinicName: String,
        readSecret: (CredentialSource) throws -> String,
        engine: CurlEngine
    ) throws -> any Sender {
        func secret(_ source: CredentialSource) throws -> String {
            do {
                return try readSecret(source)
            } catch {
                throw SenderSetupError(message: "\(error)")
            }
        }
        switch settings {
        case .file(let outbox):
            return try FileSender(outbox: URL(fileURLWithPath: outbox))
        case .webhook(let webhook):
            return try WebhookSender(name: name, settings: webhook, secret: try secret(webhook.secret), engine: engine)
        case .smtp(let smtp):
            return try SMTPSender(
                name: name, settings: smtp, password: try smtp.password.map(secret), clinicName: clinicName,
                engine: engine)
        case .httpEmail(let email):
            return try HTTPEmailSender(
                name: name, settings: email, token: try secret(email.token), clinicName: clinicName, engine: engine)
        }
    }
}

/// Why a sender could not be built, without the sender's name (the caller says which sender).
public struct SenderSetupError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

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
        func secret(_ source: CredentialSource) throws -> String {
            do {
                return try readSecret(source)
            } catch {
                throw DeliveryError(sender: name, "\(error)")
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

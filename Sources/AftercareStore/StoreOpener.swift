import AftercareCore
import Foundation
import Logging

/// Opens the queue the configuration names: the SQLite file, or the shared PostgreSQL database.
public enum StoreOpener {
    /// Opens the store. `readOnly` is for staff commands: nothing is created or migrated.
    ///
    /// - Parameter credentials: where a credential named `aftercare_<file>` is read from as `<file>`
    ///   when the process runs outside systemd (no `$CREDENTIALS_DIRECTORY`): the `credentials/`
    ///   folder beside the configuration, which the unit's `LoadCredential=aftercare:…` passes in.
    public static func open(
        _ settings: StoreSettings, sqlitePath: String, credentials: String? = nil, readOnly: Bool = false,
        logger: Logger? = nil
    ) async throws -> any ReminderQueue {
        switch settings {
        case .sqlite:
            return try ReminderStore(path: sqlitePath, readOnly: readOnly)
        case .postgres(let postgres):
            return try await PostgresReminderStore(
                settings: postgres, password: try password(for: postgres, credentials: credentials),
                readOnly: readOnly, logger: logger)
        }
    }

    /// The password from `password_file`, or from the systemd credential named by
    /// `password_credential` (`$CREDENTIALS_DIRECTORY/<name>`, or outside systemd
    /// `<credentials>/<file>` for a name `aftercare_<file>`); nil when neither is set (the server
    /// then must not ask for one). Only the first line counts, without its line break.
    public static func password(
        for settings: PostgresSettings, credentials: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> String? {
        var source: CredentialSource
        if let path = settings.passwordFile {
            source = .file(path: path)
        } else if let credential = settings.passwordCredential {
            source = .credential(name: credential)
        } else {
            return nil
        }
        if let credentials { source = source.outsideSystemd(credentialsFolder: credentials, environment: environment) }
        let file: String
        switch source {
        case .file(let path):
            file = path
        case .credential(let credential):
            guard let folder = environment["CREDENTIALS_DIRECTORY"], !folder.isEmpty else {
                throw StoreError(
                    "password_credential = \"\(credential)\" needs the unit's LoadCredential=\(credential):<file> "
                        + "(CREDENTIALS_DIRECTORY is not set)")
            }
            file = folder + "/" + credential
        }
        return try read(file)
    }

    private static func read(_ file: String) throws -> String {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: file))
        } catch {
            throw StoreError("cannot read the database password from \(file): \(describeReadError(file))")
        }
        let text = String(decoding: data, as: UTF8.self)
        let password = text.components(separatedBy: .newlines).first ?? ""
        guard !password.isEmpty else { throw StoreError("the database password file \(file) is empty") }
        return password
    }

    private static func describeReadError(_ path: String) -> String {
        if access(path, F_OK) != 0 { return "no such file" }
        if access(path, R_OK) != 0 { return "permission denied" }
        return "unreadable"
    }
}

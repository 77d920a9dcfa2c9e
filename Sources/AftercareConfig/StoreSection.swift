import AftercareCore
import Foundation

extension StoreSettings {
    /// Reads `[store]`. Absent, or `kind = "sqlite"`, the queue is the SQLite file of `[paths]`.
    static func read(_ section: Section?, resolve: (String) -> String) throws(ConfigError) -> StoreSettings {
        guard let section else { return .sqlite }
        let kind = try section.string("kind") ?? "sqlite"
        switch kind {
        case "sqlite":
            try section.rejectUnknownKeys()
            return .sqlite
        case "postgres":
            break
        default:
            throw section.error("kind", "unknown store kind '\(kind)' (expected \"sqlite\" or \"postgres\")")
        }
        guard let url = try section.string("url") else {
            throw section.error(nil, "kind = \"postgres\" needs url = \"postgres://user@host:5432/database\"")
        }
        let parts: (host: String, port: Int, user: String, database: String)
        do {
            parts = try PostgresSettings.parse(url: url)
        } catch {
            throw section.error("url", "\(error)")
        }
        var tls = PostgresSettings.TLS.verifyFull
        if let text = try section.string("tls") {
            guard let value = PostgresSettings.TLS(rawValue: text) else {
                throw section.error("tls", "unknown tls '\(text)' (expected \"verify-full\" or \"disable\")")
            }
            tls = value
        }
        if tls == .disable, !MetricsSettings.isLoopback(parts.host) {
            throw section.error(
                "tls", "tls = \"disable\" is only allowed for a server on this host; \(parts.host) is not loopback")
        }
        let passwordFile = try section.path("password_file", resolve: resolve)
        let credential = try section.string("password_credential")
        if passwordFile != nil, credential != nil {
            throw section.error("password_credential", "give password_file or password_credential, not both")
        }
        if let credential, credential.isEmpty || credential.contains("/") {
            throw section.error("password_credential", "'\(credential)' is not a credential name")
        }
        let node = try section.string("node") ?? ProcessInfo.processInfo.hostName
        do {
            try InputRules.checkText(node, field: "store.node", maxLength: 64)
        } catch {
            throw section.error("node", "\(error)")
        }
        let settings = PostgresSettings(
            host: parts.host, port: parts.port, user: parts.user, database: parts.database, tls: tls,
            caFile: try section.path("ca_file", resolve: resolve), passwordFile: passwordFile,
            passwordCredential: credential, node: node, connections: try section.int("connections", in: 2...64) ?? 4)
        try section.rejectUnknownKeys()
        return .postgres(settings)
    }
}

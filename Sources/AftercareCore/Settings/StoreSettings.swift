import Foundation

/// Which engine keeps the reminder queue: the `[store]` section.
public enum StoreSettings: Sendable, Hashable {
    /// One SQLite file (`[paths] database`), one daemon: the default.
    case sqlite
    /// One PostgreSQL database shared by any number of daemons.
    case postgres(PostgresSettings)
}

/// How to reach the shared PostgreSQL database. The password is never in the file or the URL: it
/// is read from `password_file` or a systemd credential when the store opens.
public struct PostgresSettings: Sendable, Hashable {
    /// How the server's certificate is checked.
    public enum TLS: String, Sendable, Hashable, CaseIterable {
        /// TLS, and the certificate must chain to a trusted CA and name the host (the default).
        case verifyFull = "verify-full"
        /// No TLS: only for a server on this host (a loopback address or a unix socket).
        case disable
    }

    public var host: String
    public var port: Int
    public var user: String
    public var database: String
    public var tls: TLS
    /// A PEM file of the CA(s) to trust instead of the system's.
    public var caFile: String?
    /// A file holding the password (its first line).
    public var passwordFile: String?
    /// The name of a systemd credential (`LoadCredential=`) holding the password.
    public var passwordCredential: String?
    /// This daemon's name in leases and the log: unique per daemon sharing the database.
    public var node: String
    /// Connections this daemon keeps open.
    public var connections: Int

    public init(
        host: String, port: Int = 5432, user: String, database: String, tls: TLS = .verifyFull, caFile: String? = nil,
        passwordFile: String? = nil, passwordCredential: String? = nil, node: String, connections: Int = 4
    ) {
        self.host = host
        self.port = port
        self.user = user
        self.database = database
        self.tls = tls
        self.caFile = caFile
        self.passwordFile = passwordFile
        self.passwordCredential = passwordCredential
        self.node = node
        self.connections = connections
    }

    /// The URL without a password, for messages and `aftercare config`.
    public var url: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        return "postgres://\(user)@\(shownHost):\(port)/\(database)"
    }

    /// Parses `postgres://user@host[:port]/database`. A password in the URL is refused: it would
    /// end up in files, process lists and logs.
    public static func parse(url text: String) throws(SettingsError)
        -> (host: String, port: Int, user: String, database: String)
    {
        guard let components = URLComponents(string: text), let scheme = components.scheme,
            scheme == "postgres" || scheme == "postgresql"
        else {
            throw SettingsError("'\(text)' is not a postgres://user@host:port/database URL")
        }
        if components.password != nil {
            throw SettingsError("the URL holds a password; give it in a password file or a systemd credential instead")
        }
        guard let user = components.user, !user.isEmpty else {
            throw SettingsError("the URL names no user (postgres://USER@host/database)")
        }
        guard let host = components.host, !host.isEmpty else {
            throw SettingsError("the URL names no host (postgres://user@HOST/database)")
        }
        let database = String(components.path.drop(while: { $0 == "/" }))
        guard !database.isEmpty, !database.contains("/") else {
            throw SettingsError("the URL names no database (postgres://user@host/DATABASE)")
        }
        if let query = components.query, !query.isEmpty {
            throw SettingsError("the URL has options (?\(query)); set tls and ca_file in [store] instead")
        }
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else { throw SettingsError("port \(port) is out of range") }
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        return (bare, port, user.removingPercentEncoding ?? user, database.removingPercentEncoding ?? database)
    }
}

/// A setting that cannot be used, as one line.
public struct SettingsError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

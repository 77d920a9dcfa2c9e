import AftercareCore
import Foundation
import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// The reminder queue in one PostgreSQL database, shared by every aftercare daemon of a clinic group.
///
/// Claims take rows with `FOR UPDATE SKIP LOCKED` under fenced leases (a token from one sequence,
/// the daemon's node name beside it), so any number of daemons share the queue without waiting on
/// each other; a dead daemon's lapsed leases are taken over by the others. The delivery log stays
/// one hash chain: every transaction that appends to it takes the one `log_head` row's lock last,
/// just before it commits, so rows from concurrent writers are chained in commit order.
public final class PostgresReminderStore: ReminderQueue {
    let client: PostgresClient
    private let runner: Task<Void, Never>
    let settings: PostgresSettings
    private let password: String?
    let logger: Logger
    public let location: String
    /// The connection holding this daemon's node lock (``joinQueue()``), for as long as the store is open.
    private let nodeLock = Mutex<PostgresConnection?>(nil)
    /// Set by ``close()``: connections failing from then on are expected, not worth a warning.
    let closing = Mutex(false)

    /// The channel on which daemons tell each other that work may be due sooner.
    static let queueChannel = "aftercare_queue"

    /// Connects (creating and migrating the schema unless `readOnly`). Fails with one line if the
    /// server cannot be reached, refuses the password or the certificate, or holds no aftercare schema
    /// (read-only) or a newer one.
    public init(
        settings: PostgresSettings, password: String?, readOnly: Bool = false, logger: Logger? = nil
    ) async throws {
        self.settings = settings
        self.password = password
        self.logger = logger ?? Logger(label: "aftercare.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
        location = settings.url
        let tlsConfiguration = Self.tlsConfiguration(settings)
        // One connection first, on its own: a wrong password, an untrusted certificate or a server
        // that is not there is reported at once, in its own words, where the pool would retry
        // quietly for a minute and then say only that its circuit breaker tripped. It also sets up
        // or checks the schema, so the pool is first used once its run() is well under way.
        let probe = try await Self.connect(settings, password: password, logger: self.logger)
        do {
            if readOnly {
                try await Self.checkSchema(probe)
            } else {
                try await PostgresSchema.migrate(probe)
            }
            try await probe.close()
        } catch {
            try? await probe.close()
            throw StoreError("cannot open database \(settings.url): \(Self.describe(error))")
        }
        var configuration = PostgresClient.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: password,
            database: settings.database, tls: tlsConfiguration.map { .require($0) } ?? .disable)
        // postgres-nio sends a host name as SNI and NIOSSL checks the certificate names it; for an IP
        // literal (never sent as SNI) NIOSSL checks the certificate names the peer's address instead.
        configuration.options.maximumConnections = settings.connections
        configuration.options.connectTimeout = .seconds(10)
        client = PostgresClient(configuration: configuration, backgroundLogger: self.logger)
        // Detached: a task inherits the daemon's graceful-shutdown context, and the client would then
        // close its pool at SIGTERM while the daemon still records the outcomes of its last sends.
        // The pool closes when the store does.
        runner = Task.detached { [client] in await client.run() }
    }

    deinit {
        // A store dropped without close(): the node lock's connection is closed all the same.
        if let connection = nodeLock.withLock({ $0.take() }) {
            let closing: EventLoopFuture<Void> = connection.close()
            _ = closing
        }
        runner.cancel()
    }

    /// How far this host's clock may be off the server's before a daemon says so at start.
    static let clockSkewWarning = 2.0

    static func tlsConfiguration(_ settings: PostgresSettings) -> TLSConfiguration? {
        guard settings.tls == .verifyFull else { return nil }
        var verified = TLSConfiguration.makeClientConfiguration()
        verified.certificateVerification = .fullVerification
        if let caFile = settings.caFile { verified.trustRoots = .file(caFile) }
        return verified
    }

    /// One connection outside the pool; its errors are one line naming the server.
    static func connect(_ settings: PostgresSettings, password: String?, logger: Logger) async throws
        -> PostgresConnection
    {
        do {
            return try await PostgresConnection.connect(
                on: PostgresClient.defaultEventLoopGroup.any(),
                configuration: PostgresConnection.Configuration(
                    host: settings.host, port: settings.port, username: settings.user, password: password,
                    database: settings.database,
                    tls: try tlsConfiguration(settings).map { .require(try NIOSSLContext(configuration: $0)) }
                        ?? .disable),
                id: 0, logger: logger
            ).get()
        } catch {
            throw StoreError("cannot connect to \(settings.url): \(describe(error))")
        }
    }

    /// Connects once, as `aftercare config check` does: the schema version the database holds, or
    /// nil when no daemon has set it up yet. Throws the reason it cannot connect.
    public static func check(_ settings: PostgresSettings, password: String?) async throws -> Int? {
        let quiet = Logger(label: "aftercare.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
        let connection = try await connect(settings, password: password, logger: quiet)
        do {
            let version = try await schemaVersion(connection)
            try await connection.close()
            return version
        } catch {
            try? await connection.close()
            throw StoreError("cannot read \(settings.url): \(describe(error))")
        }
    }

    /// Closes the node lock's connection and the pool. The pool is given two seconds to hang up its
    /// connections: a daemon stopping must not wait on a server that no longer answers.
    public func close() async {
        closing.withLock { $0 = true }
        if let connection = nodeLock.withLock({ $0.take() }) { try? await connection.close() }
        runner.cancel()
        await withTaskGroup(of: Void.self) { [runner] group in
            group.addTask { await runner.value }
            group.addTask { try? await Task.sleep(for: .seconds(2)) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Holds a session advisory lock named after this daemon's node on a connection of its own:
    /// PostgreSQL releases it when that connection ends (the daemon stopped or died), so a restarted
    /// daemon takes it again while a second live one under the same name is refused.
    public func joinQueue() async throws {
        let connection = try await Self.connect(settings, password: password, logger: logger)
        let taken: Bool?
        do {
            taken = try await connection.value(
                Bool.self, "SELECT pg_try_advisory_lock(7261, hashtext(\(settings.node)))")
        } catch {
            try? await connection.close()
            throw StoreError("cannot take node '\(settings.node)' on \(settings.url): \(Self.describe(error))")
        }
        guard taken == true else {
            try? await connection.close()
            throw StoreError(
                "another daemon named '\(settings.node)' is running on \(settings.url): give each daemon its own "
                    + "[store] node")
        }
        // Leases are set and judged by each daemon's own clock: hosts out of step by more than a
        // few seconds could take each other's live claims. Said in the journal, at every start.
        if let serverNow = try? await connection.value(
            Double.self, "SELECT extract(epoch FROM clock_timestamp())::float8")
        {
            let skew = Date().timeIntervalSince1970 - serverNow
            if abs(skew) > Self.clockSkewWarning {
                let message = "this host's clock is \(String(format: "%+.1f", skew)) s off the database server's: "
                    + "leases are judged by each daemon's clock, so keep every host in time sync (NTP)"
                logger.warning("\(message)")
            }
        }
        let previous = nodeLock.withLock { held in
            defer { held = connection }
            return held
        }
        if let previous { try? await previous.close() }
    }

    /// The schema version the database holds, or nil before any daemon set it up.
    static func schemaVersion(_ connection: PostgresConnection) async throws -> Int? {
        guard try await connection.value(Bool.self, "SELECT to_regclass('aftercare_schema') IS NOT NULL") == true else {
            return nil
        }
        return try await connection.value(Int.self, "SELECT version FROM aftercare_schema")
    }

    /// One line for any PostgreSQL error, without the query's values.
    static func describe(_ error: any Error) -> String {
        if let error = error as? StoreError { return error.message }
        if let error = error as? PostgresTransactionError {
            return (error.closureError ?? error.beginError ?? error.commitError ?? error.rollbackError)
                .map(describe) ?? "transaction failed"
        }
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                return message + (error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? "")
            }
            if let underlying = error.underlying {
                let text = "\(underlying)"
                if text.contains("CERTIFICATE_VERIFY_FAILED") {
                    return "the server's TLS certificate is not signed by a trusted CA (ca_file) "
                        + "or does not name the host"
                }
                return "\(error.code): \(text)"
            }
            return "\(error.code)"
        }
        return "\(error)"
    }

    private static func checkSchema(_ connection: PostgresConnection) async throws {
        let version = try await schemaVersion(connection)
        guard let version else {
            throw StoreError("the database has not been set up by the daemon yet")
        }
        guard version >= PostgresSchema.version else {
            throw StoreError(
                "the database is from an older aftercare (schema \(version), this one needs "
                    + "\(PostgresSchema.version)): "
                    + "restart a daemon to upgrade it")
        }
    }

    /// Runs `body` in one transaction on a pooled connection. Errors are reported as one line.
    ///
    /// Read committed whatever the database's default: appenders wait on the log's head row and
    /// must then see it as the transaction before them left it, not fail to serialize.
    func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await inTransaction("BEGIN ISOLATION LEVEL READ COMMITTED", body)
        } catch let error as IntakeError {
            throw error
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(Self.describe(error))
        }
    }

    /// Runs a read on a pooled connection, in one snapshot (a repeatable-read, read-only transaction).
    func read<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await inTransaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", body)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(Self.describe(error))
        }
    }

    /// `begin`, `body`, `COMMIT`; on any failure `ROLLBACK`. A connection whose rollback fails is
    /// closed, so the pool never hands out one left inside a transaction.
    private func inTransaction<T: Sendable>(
        _ begin: PostgresQuery, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        try await client.withConnection { connection in
            do {
                try await connection.query(begin, logger: logger)
                let result = try await body(connection)
                try await connection.query("COMMIT", logger: logger)
                return result
            } catch {
                do {
                    try await connection.query("ROLLBACK", logger: logger)
                } catch {
                    try? await connection.close()
                }
                throw error
            }
        }
    }
}

/// Small helpers over postgres-nio's rows.
extension PostgresConnection {
    static let quiet = Logger(label: "aftercare.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    /// Runs a statement and returns how many rows it returned (a `RETURNING` clause counts the rows
    /// it changed).
    @discardableResult
    func run(_ query: PostgresQuery) async throws -> Int {
        let rows = try await self.query(query, logger: Self.quiet)
        var count = 0
        for try await _ in rows { count += 1 }
        return count
    }

    /// The first column of the first row, if any row (and it is not null).
    func value<T: PostgresDecodable>(_ type: T.Type, _ query: PostgresQuery) async throws -> T?
    where T._DecodableType == T {
        for try await row in try await self.query(query, logger: Self.quiet) {
            return try row.makeRandomAccess()[0].decode(T?.self)
        }
        return nil
    }

    /// Every row, decoded by `body`.
    func rows<T>(_ query: PostgresQuery, _ body: (PostgresRow) throws -> T) async throws -> [T] {
        var result: [T] = []
        for try await row in try await self.query(query, logger: Self.quiet) { result.append(try body(row)) }
        return result
    }
}

/// Doubles as PostgreSQL stores them: seconds since 1970, as SQLite's `REAL` columns hold them, so a
/// migrated row hashes exactly as it did.
extension Date {
    var seconds: Double { timeIntervalSince1970 }
    init(seconds: Double) { self.init(timeIntervalSince1970: seconds) }
}

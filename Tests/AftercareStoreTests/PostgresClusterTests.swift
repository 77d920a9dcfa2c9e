import AftercareTestKit
import Foundation
import Testing

/// The test kit's PostgreSQL: fresh databases on a real server, reached over verified TLS.
@Suite struct PostgresClusterTests {
    @Test func twoDatabasesAreDistinctAndBothAcceptAVerifiedTLSConnection() async throws {
        let first = try await PostgresCluster.shared.makeDatabase()
        let second = try await PostgresCluster.shared.makeDatabase()
        #expect(first.name != second.name)
        #expect(first.url == "postgres://aftercare@127.0.0.1:\(first.port)/\(first.name)")

        let whoAmI = "SELECT current_database(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        for database in [first, second] {
            let run = try await psql(database, whoAmI)
            #expect(run.status == 0, "\(run.output)")
            #expect(run.output == "\(database.name)|t")
        }
        let created = try await psql(first, "CREATE TABLE reminder (id int); SELECT count(*) FROM reminder")
        #expect(created.status == 0, "\(created.output)")
        let elsewhere = try await psql(second, "SELECT count(*) FROM reminder")
        #expect(elsewhere.status != 0)
        #expect(elsewhere.output.contains("relation \"reminder\" does not exist"))
    }

    @Test func aCertificateFromAnotherCAWithTheSameNameFailsVerification() async throws {
        let database = try await PostgresCluster.shared.makeDatabase()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("aftercare-ca-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let otherCA = folder.appendingPathComponent("ca.crt").path
        let made = try await ExternalCommand.run(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", folder.appendingPathComponent("ca.key").path, "-out", otherCA, "-days", "1",
                "-subj", "/CN=aftercare throwaway test CA",
            ])
        try #require(made.status == 0, "\(made.output)")

        let refused = try await psql(database, "SELECT 1", caFile: otherCA)
        #expect(refused.status != 0)
        #expect(refused.output.contains("certificate verify failed"))
    }

    @Test func aWrongPasswordIsRefused() async throws {
        var database = try await PostgresCluster.shared.makeDatabase()
        database.password += "x"
        let refused = try await psql(database, "SELECT 1")
        #expect(refused.status != 0)
        #expect(refused.output.contains("password authentication failed"))
    }

    private func psql(
        _ database: PostgresTestDatabase, _ sql: String, caFile: String? = nil
    ) async throws -> ExternalCommand.Result {
        let connection = [
            "host=\(database.host)", "port=\(database.port)", "user=\(database.user)", "dbname=\(database.name)",
            "sslmode=verify-full", "sslrootcert=\(caFile ?? database.caFile)", "connect_timeout=10",
        ].joined(separator: " ")
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = database.password
        return try await ExternalCommand.run(
            "/usr/bin/env", ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, connection],
            environment: environment)
    }
}

import AftercareConfig
import Foundation
import Hummingbird
import Logging
import Prometheus
import ServiceLifecycle

/// The HTTP listener: `GET /metrics` answers with the registry in the Prometheus text format,
/// `GET /health` with 200 and `ok: …` while the pipeline makes progress, 503 and `stuck: <reason>`
/// when it does not. Served by Hummingbird; stops with the service group.
///
/// Once listening it logs the address and writes it (`host:port`, the chosen port when the
/// configuration says 0) to `metrics.address` in the state folder, and removes that file at stop.
public struct MetricsEndpoint: Service {
    /// The file in the state folder that says where the listener is.
    public static let addressFile = "metrics.address"

    private let settings: MetricsSettings
    private let stateDirectory: String
    private let registry: PrometheusCollectorRegistry
    private let metrics: DaemonMetrics
    private let logger: Logger

    public init(
        settings: MetricsSettings, stateDirectory: String, registry: PrometheusCollectorRegistry,
        metrics: DaemonMetrics, logger: Logger
    ) {
        self.settings = settings
        self.stateDirectory = stateDirectory
        self.registry = registry
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        let router = Router()
        router.get("metrics") { [registry] _, _ -> Response in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        router.get("health") { [metrics] _, _ -> Response in
            let verdict = metrics.health()
            return Response(
                status: verdict.isHealthy ? .ok : .serviceUnavailable,
                headers: [.contentType: "text/plain; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: verdict.line + "\n")))
        }
        // Hummingbird's own request and start-up lines are noise in the journal: ours says where it listens.
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        let addressPath = stateDirectory + "/" + Self.addressFile
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: nil),
            onServerRunning: { [settings, logger, stateDirectory] channel in
                let port = channel.localAddress?.port ?? settings.port
                var bound = settings
                bound.port = port
                // The listener can be up before the daemon has made its state folder.
                try? FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
                do {
                    try (bound.listen + "\n").write(toFile: addressPath, atomically: true, encoding: .utf8)
                } catch {
                    logger.warning("cannot write \(addressPath): \(error)")
                }
                logger.notice("metrics on http://\(bound.listen)/metrics, health on http://\(bound.listen)/health")
            },
            logger: quiet
        )
        defer { try? FileManager.default.removeItem(atPath: addressPath) }
        do {
            try await app.run()
        } catch {
            throw MetricsEndpointError("cannot serve metrics on \(settings.listen): \(error)")
        }
    }
}

/// The metrics listener could not start or failed, as one line.
public struct MetricsEndpointError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

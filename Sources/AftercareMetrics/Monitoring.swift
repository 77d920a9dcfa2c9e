import AftercareConfig
import AftercareCore
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// Everything `[metrics]` turns on, put together: a Prometheus registry, the daemon's metrics
/// counting into it, the gauges read from the store, and the HTTP listener. Hand ``metrics`` to
/// the daemon and run ``services`` in its service group, ahead of the daemon, so the daemon stops
/// first and the listener answers until it has.
public struct Monitoring: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let metrics: DaemonMetrics
    public let services: [any Service]

    /// ``services`` as a service group runs them: if one fails (the port is taken), the group shuts
    /// down gracefully, letting the daemon finish what it sends, and then reports the error.
    public var serviceConfigurations: [ServiceGroupConfiguration.ServiceConfiguration] {
        services.map { .init(service: $0, failureTerminationBehavior: .gracefullyShutdownGroup) }
    }

    public init(
        settings: MetricsSettings, paths: StoragePaths, store: StoreSettings = .sqlite, credentials: String? = nil,
        clock: any WallClock, logger: Logger
    ) {
        registry = PrometheusCollectorRegistry()
        metrics = DaemonMetrics(factory: Self.factory(registry), stallAfter: .seconds(settings.stallAfterSeconds))
        services = [
            MetricsEndpoint(
                settings: settings, stateDirectory: paths.stateDirectory, registry: registry, metrics: metrics,
                logger: logger),
            QueueGauges(
                paths: paths, store: store, credentials: credentials, metrics: metrics, clock: clock,
                every: .seconds(settings.refreshSeconds),
                logger: logger),
        ]
    }

    /// A swift-metrics factory that counts into `registry`, with histogram buckets fit for sends
    /// and lateness.
    public static func factory(_ registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            DaemonMetrics.Name.sendDuration: DaemonMetrics.sendDurationBuckets,
            DaemonMetrics.Name.lateness: DaemonMetrics.latenessBuckets,
        ]
        return factory
    }
}

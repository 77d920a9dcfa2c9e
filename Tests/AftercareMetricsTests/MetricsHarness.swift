import AftercareConfig
import AftercareCore
import AftercareDaemon
import AftercareDelivery
import AftercareMetrics
import AftercareTestKit
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A daemon with `[metrics]` on, run as `aftercare daemon` runs it: the listener and the gauges in
/// one service group with the daemon, on a manual clock, in a temporary state folder.
final class MetricsHarness: Sendable {
    let root: String
    let clock: ManualClock
    let monitoring: Monitoring
    private let group: ServiceGroup
    private let task: Mutex<Task<Void, any Error>?> = Mutex(nil)

    init(start: Date, metricsSection: String = "listen = \"127.0.0.1:0\"\nrefresh = \"1s\"") throws {
        root = NSTemporaryDirectory() + "aftercare-metrics-tests-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let config = TestClinic.config(
            """
            [dispatch]
            max_concurrent = 8

            [metrics]
            \(metricsSection)
            """)
        let path = root + "/aftercare.toml"
        try config.write(toFile: path, atomically: true, encoding: .utf8)
        let loaded = try AftercareConfiguration.load(path: path)
        clock = ManualClock(start)
        var logger = Logger(label: "aftercare-test")
        let level = ProcessInfo.processInfo.environment["AFTERCARE_TEST_LOG"]
        logger.logLevel = level.flatMap(Logger.Level.init(rawValue:)) ?? .warning
        guard let settings = loaded.metrics else { throw DaemonError("the test config has no [metrics]") }
        monitoring = Monitoring(settings: settings, paths: loaded.paths, clock: clock, logger: logger)
        let daemon = AftercareDaemon(
            configPath: path, clock: clock, logger: logger, handlesSIGHUP: false, metrics: monitoring.metrics,
            makeSender: { name, settings, _ in
                guard case .file(let outbox) = settings else { throw DaemonError("unexpected sender \(name)") }
                return try FileSender(outbox: URL(fileURLWithPath: outbox))
            })
        group = ServiceGroup(
            configuration: .init(services: monitoring.serviceConfigurations + [.init(service: daemon)], logger: logger))
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    var state: String { root + "/state" }
    var database: String { state + "/aftercare.sqlite" }
    var spool: Spool { Spool(root: state + "/spool") }

    private let ended = Mutex(false)

    func start() {
        let group = self.group
        task.withLock {
            $0 = Task { [self] in
                defer { ended.withLock { $0 = true } }
                try await group.run()
            }
        }
    }

    /// Shuts the group down as SIGTERM does and waits for it.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.withLock { $0 }?.value
    }

    /// Waits up to `timeout` seconds for the group to end by itself (a service failed) and rethrows
    /// its error; false if it is still running.
    func exit(timeout: Double) async throws -> Bool {
        guard await eventually(timeout: timeout, { ended.withLock { $0 } }) else { return false }
        try await task.withLock { $0 }?.value
        return true
    }

    /// The listener's `host:port`, once it has written it.
    func address() async -> String? {
        let file = state + "/" + MetricsEndpoint.addressFile
        _ = await eventually { FileManager.default.fileExists(atPath: file) }
        return (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// GETs a path from the listener over real HTTP.
    func get(_ path: String) async throws -> (status: Int, body: String) {
        guard let address = await address() else { throw DaemonError("the listener never said where it is") }
        let session = URLSession(configuration: .ephemeral)
        defer { session.finishTasksAndInvalidate() }
        let (data, response) = try await session.data(from: URL(string: "http://\(address)\(path)")!)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    func scrape() async throws -> Exposition {
        let (status, body) = try await get("/metrics")
        guard status == 200 else { throw DaemonError("/metrics answered \(status)") }
        return Exposition(body)
    }

    /// Polls (in real time) until `condition` holds; false if it never did within `timeout` seconds.
    func eventually(timeout: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try await condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }

    func outboxFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: state + "/outbox")) ?? [])
            .filter { $0.hasSuffix(".txt") && !$0.hasPrefix(".") }
    }

    static func procedure(_ id: String, at performed: Date) -> Procedure {
        Procedure(
            id: id, protocolID: "trigger-point-injection", performedAt: performed,
            patient: Patient(id: "MRN-\(id)", firstName: "Ana", timeZone: "America/New_York",
                             routes: [ContactRoute(channel: "sms", address: "+15551234567")])
        )
    }
}

/// A Prometheus text exposition, read back: each sample by name and label set.
struct Exposition {
    let text: String
    private var samples: [String: [([String: String], Double)]] = [:]

    init(_ text: String) {
        self.text = text
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                continue
            }
            let series = line[..<space]
            var labels: [String: String] = [:]
            let name: Substring
            if let brace = series.firstIndex(of: "{") {
                name = series[..<brace]
                let body = series[series.index(after: brace)..<(series.lastIndex(of: "}") ?? series.endIndex)]
                for pair in body.split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    guard parts.count == 2 else { continue }
                    let key = String(parts[0]).trimmingCharacters(in: .whitespaces)
                    labels[key] = String(parts[1].dropFirst().dropLast())
                }
            } else {
                name = series
            }
            samples[String(name), default: []].append((labels, value))
        }
    }

    /// The sample with exactly these labels, if exposed.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples[name]?.first { $0.0 == labels }?.1
    }

    /// A histogram's cumulative count at the bucket whose bound is `le` seconds.
    func bucket(_ name: String, le: Double, _ labels: [String: String] = [:]) -> Double? {
        samples[name + "_bucket"]?.first { sample in
            var rest = sample.0
            guard let bound = rest.removeValue(forKey: "le").flatMap(Double.init) else { return false }
            return bound == le && rest == labels
        }?.1
    }
}

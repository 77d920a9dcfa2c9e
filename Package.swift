// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "aftercare",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "aftercare", targets: ["aftercare"]),
        .executable(name: "aftercare-bench", targets: ["AftercareBenchmarks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // Domain types, the planner, templates and the clock. Foundation only: no I/O.
        .target(name: "AftercareCore", swiftSettings: swiftSettings),
        // The TOML config and protocol files, with file-and-line errors.
        .target(
            name: "AftercareConfig",
            dependencies: ["AftercareCore", .product(name: "TOMLKit", package: "TOMLKit")],
            swiftSettings: swiftSettings
        ),
        // Persistence behind one protocol: the embedded SQLite store and the PostgreSQL one for clinic
        // groups (migrations, the reminder state machine, the delivery log).
        .target(
            name: "AftercareStore",
            dependencies: [
                "AftercareCore", "CSQLiteTuning",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // libcurl with typed shims for its variadic calls.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // SQLite's process-wide settings (sqlite3_config is variadic): multi-thread mode, no memory statistics.
        .systemLibrary(name: "CSQLiteTuning"),
        // glibc's heap controls (mallopt, malloc_trim): the daemon returns freed memory after bursts.
        .systemLibrary(name: "CMalloc"),
        // The curl wrapper, the Sender protocol and the shipped senders.
        .target(
            name: "AftercareDelivery",
            dependencies: [
                "AftercareCore",
                "CCurl",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // What the daemon counts (swift-metrics; a no-op unless a backend is given) and the loopback
        // endpoint that serves it to Prometheus, with a health check.
        .target(
            name: "AftercareMetrics",
            dependencies: [
                "AftercareCore",
                "AftercareConfig",
                "AftercareStore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The scheduler service: intake, dispatch, recovery, systemd notify, reload.
        .target(
            name: "AftercareDaemon",
            dependencies: [
                "AftercareCore",
                "AftercareConfig",
                "AftercareStore",
                "AftercareDelivery",
                "AftercareMetrics",
                "CMalloc",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The one binary: `aftercare daemon` and the staff commands.
        .executableTarget(
            name: "aftercare",
            dependencies: [
                "AftercareCore",
                "AftercareConfig",
                "AftercareStore",
                "AftercareDelivery",
                "AftercareDaemon",
                "AftercareMetrics",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // On-demand benchmarks that print their figures (never run by the test suite).
        .executableTarget(
            name: "AftercareBenchmarks",
            dependencies: [
                "AftercareCore",
                "AftercareConfig",
                "AftercareStore",
                "AftercareDelivery",
                "AftercareDaemon",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/AftercareBenchmarks",
            swiftSettings: swiftSettings
        ),
        // What several test targets share: a seeded generator, a database lock held from another connection.
        .target(
            name: "AftercareTestKit",
            dependencies: [.product(name: "GRDB", package: "GRDB.swift")],
            path: "Tests/AftercareTestKit",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AftercareCoreTests", dependencies: ["AftercareCore", "AftercareTestKit"], swiftSettings: swiftSettings),
        .testTarget(
            name: "AftercareConfigTests",
            dependencies: ["AftercareConfig", "AftercareCore", "AftercareTestKit"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AftercareStoreTests",
            dependencies: [
                "AftercareStore", "AftercareCore", "AftercareTestKit", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AftercareDeliveryTests",
            dependencies: [
                "AftercareDelivery", "AftercareCore", "AftercareTestKit",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AftercareDaemonTests",
            dependencies: [
                "AftercareDaemon", "AftercareCore", "AftercareConfig", "AftercareStore", "AftercareDelivery",
                "AftercareTestKit", .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AftercareMetricsTests",
            dependencies: [
                "AftercareMetrics", "AftercareDaemon", "AftercareCore", "AftercareConfig", "AftercareStore",
                "AftercareDelivery", "AftercareTestKit",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AftercareCLITests",
            dependencies: ["AftercareCore", "AftercareTestKit"],
            swiftSettings: swiftSettings
        ),
    ]
)

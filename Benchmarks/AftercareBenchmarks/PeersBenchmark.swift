import Foundation

/// Issue 11: aftercare's peers on the same receiver in the same run. `scripts/peers/` holds a huey
/// (SqliteHuey, a real consumer process) and an APScheduler 3.x (SQLAlchemyJobStore on SQLite)
/// program that each deliver `count` signed webhooks with bodies of aftercare's size, committing
/// every attempt to a SQLite table; `scripts/bench` installs them into a venv from PyPI.
struct PeersBenchmark {
    let receiver: Receiver
    let bodyBytes: Int
    let count: Int

    /// The venv's python: `$AFTERCARE_BENCH_PYTHON`, or the one `scripts/bench` makes.
    static var python: String? {
        if let given = ProcessInfo.processInfo.environment["AFTERCARE_BENCH_PYTHON"], !given.isEmpty { return given }
        let venv = Workbench.repositoryRoot.appendingPathComponent(".build/bench-venv/bin/python").path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : nil
    }

    /// Each peer's rate in webhooks per second, by name.
    func run() throws -> [(name: String, rate: Double)] {
        guard let python = Self.python else {
            throw BenchError(
                "no Python venv with huey and APScheduler: run `bash scripts/bench peers`, which makes one")
        }
        let folder = Workbench.repositoryRoot.appendingPathComponent("scripts/peers")
        var rates: [(name: String, rate: Double)] = []
        for script in ["huey_peer.py", "apscheduler_peer.py"] {
            let work = NSTemporaryDirectory() + "aftercare-bench-peer-" + UUID().uuidString
            defer { try? FileManager.default.removeItem(atPath: work) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.currentDirectoryURL = folder
            process.environment = ProcessInfo.processInfo.environment.merging(["PYTHONDONTWRITEBYTECODE": "1"]) { $1 }
            process.arguments = [
                folder.appendingPathComponent(script).path, "--url", receiver.url, "--count", "\(count)",
                "--body-bytes", "\(bodyBytes)", "--dir", work,
            ]
            let output = Pipe()
            process.standardOutput = output
            let mark = receiver.mark()
            try process.run()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            let lines = text.split(separator: "\n")
            guard process.terminationStatus == 0,
                let result = lines.last(where: { $0.hasPrefix("RESULT ") }),
                let name = result.split(separator: " ").dropFirst().first.map(String.init),
                let field = result.split(separator: " ").first(where: { $0.hasPrefix("rate=") }),
                let rate = Double(field.dropFirst(5))
            else { throw BenchError("\(script) failed (exit \(process.terminationStatus)): \(text)") }
            let seen = receiver.entries(since: mark).filter { $0.webhookID != "-" }
            let bodies = Set(seen.compactMap(\.bodyBytes))
            for line in lines where !line.hasPrefix("RESULT ") { report("peers: " + line) }
            report("peers: \(name): the receiver saw \(seen.count) webhooks, bodies of \(bodies.sorted()) bytes")
            guard seen.count >= count else { throw BenchError("\(name): the receiver saw \(seen.count) of \(count)") }
            rates.append((name, rate))
        }
        return rates
    }
}

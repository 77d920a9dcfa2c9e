import Foundation
import Synchronization

/// A test server script from `Servers/`, run with the test Python on an ephemeral loopback port.
final class LoopbackServer: Sendable {
    let port: Int
    let folder: String
    private let process: Process

    static var python: String {
        ProcessInfo.processInfo.environment["AFTERCARE_TEST_PYTHON"] ?? "/usr/bin/env"
    }

    static var scripts: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Servers") }

    /// Starts `script` with `arguments` (`{folder}` is replaced by the server's own temp folder).
    init(script: String, arguments: [String]) throws {
        let folder = NSTemporaryDirectory() + "aftercare-server-" + UUID().uuidString
        self.folder = folder
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let process = Process()
        let explicit = ProcessInfo.processInfo.environment["AFTERCARE_TEST_PYTHON"]
        process.executableURL = URL(fileURLWithPath: explicit ?? "/usr/bin/env")
        let scriptPath = Self.scripts.appendingPathComponent(script).path
        let resolved = arguments.map { $0.replacingOccurrences(of: "{folder}", with: folder) }
        process.arguments = (explicit == nil ? ["python3"] : []) + [scriptPath] + resolved
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        self.process = process
        // Read until the READY line (or give up after 20 s).
        var buffer = Data()
        let handle = output.fileHandleForReading
        let deadline = Date().addingTimeInterval(20)
        var found: Int?
        while Date() < deadline, found == nil {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            buffer.append(chunk)
            let text = String(decoding: buffer, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("READY ") }) {
                found = Int(line.dropFirst(6))
            }
        }
        guard let port = found else {
            kill(process.processIdentifier, SIGKILL)
            throw ServerError("\(script) did not start (is python3 with aiosmtpd installed? set AFTERCARE_TEST_PYTHON)")
        }
        self.port = port
    }

    deinit {
        // SIGKILL: the test runner's threads block SIGTERM, and a spawned Python inherits that mask.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: folder)
    }

    /// The receiver's request log, one JSON object per request.
    func requests() -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: folder + "/requests.jsonl", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// The SMTP server's parsed messages, in arrival order.
    func messages() -> [[String: Any]] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder + "/mail")) ?? []).sorted()
        return names.compactMap {
            guard let data = FileManager.default.contents(atPath: folder + "/mail/" + $0) else { return nil }
            return try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        }
    }
}

struct ServerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A throw-away certificate authority and a server certificate for 127.0.0.1, made with openssl.
struct TestCertificates {
    let folder: String
    var caFile: String { folder + "/ca.pem" }
    var certFile: String { folder + "/server.pem" }
    var keyFile: String { folder + "/server.key" }

    init() throws {
        folder = NSTemporaryDirectory() + "aftercare-tls-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: folder + "/ext.cnf", atomically: true, encoding: .utf8)
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try Self.openssl(["req", "-x509"] + ec + [
            "-keyout", folder + "/ca.key", "-out", folder + "/ca.pem", "-days", "2", "-subj", "/CN=aftercare test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        try Self.openssl(["req"] + ec + [
            "-keyout", folder + "/server.key", "-out", folder + "/server.csr", "-subj", "/CN=127.0.0.1",
        ])
        try Self.openssl([
            "x509", "-req", "-in", folder + "/server.csr", "-CA", folder + "/ca.pem", "-CAkey", folder + "/ca.key",
            "-CAcreateserial", "-out", folder + "/server.pem", "-days", "2", "-extfile", folder + "/ext.cnf",
        ])
    }

    static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw ServerError("openssl \(arguments.first ?? "") failed") }
    }
}

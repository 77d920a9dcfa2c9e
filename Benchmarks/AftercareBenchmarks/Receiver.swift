import Foundation

/// nginx on 127.0.0.1 answering 204 to everything: the one webhook receiver that aftercare, `wrk`
/// and the peers all send to. Its access log notes, per request, when it ended (ms), the body and
/// header sizes and the `webhook-id` header, so the benchmarks can count requests, measure
/// aftercare's real body size and time each reminder's arrival.
final class Receiver: @unchecked Sendable {
    /// One access-log line.
    struct Entry {
        var at: Double
        var status: Int
        var bodyBytes: Int?
        /// The request line and headers.
        var requestBytes: Int
        var webhookID: String
    }

    /// A `wrk` run's rate, and the size of the requests it sent as nginx saw them
    /// (`$request_length`: the request line and headers, as `return 204` reads no body).
    struct WrkRun {
        var rate: Double
        var requestBytes: Int?
        var bodyBytes: Int?
    }

    private let process = Process()
    let prefix: String
    let port: Int
    var url: String { "http://127.0.0.1:\(port)/hooks/aftercare" }
    private var logPath: String { prefix + "/logs/access.log" }

    init() throws {
        let candidates = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        guard let nginx = candidates.first(where: FileManager.default.isExecutableFile) else {
            throw BenchError("nginx is not installed (apt-get install nginx-light wrk)")
        }
        port = 18_000 + Int.random(in: 0..<2000)
        prefix = NSTemporaryDirectory() + "aftercare-bench-nginx-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: prefix + "/logs", withIntermediateDirectories: true)
        let conf = """
            worker_processes 1;
            error_log \(prefix)/logs/error.log warn;
            pid \(prefix)/nginx.pid;
            events { worker_connections 4096; }
            http {
                log_format bench '$msec $status $content_length $request_length $http_webhook_id';
                access_log \(prefix)/logs/access.log bench buffer=1m flush=1s;
                client_body_temp_path \(prefix)/body;
                keepalive_requests 1000000;
                server {
                    listen 127.0.0.1:\(port) reuseport;
                    location / { return 204; }
                }
            }
            """
        try conf.write(toFile: prefix + "/nginx.conf", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: nginx)
        process.arguments = ["-p", prefix, "-c", prefix + "/nginx.conf", "-g", "daemon off;"]
        try process.run()
        usleep(300_000)
        guard process.isRunning else { throw BenchError("nginx did not start (see \(prefix)/logs/error.log)") }
    }

    /// Where the access log ends now, once nginx has flushed what it buffered.
    func mark() -> UInt64 {
        usleep(1_200_000)  // the access log flushes every second
        let size = (try? FileManager.default.attributesOfItem(atPath: logPath)[.size] as? NSNumber)?.uint64Value
        return size ?? 0
    }

    /// Requests logged after `offset` (a ``mark()``), once flushed.
    func entries(since offset: UInt64) -> [Entry] {
        usleep(1_200_000)
        guard let handle = FileHandle(forReadingAtPath: logPath) else { return [] }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        let data = (try? handle.readToEnd()) ?? Data()
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap(Self.entry)
    }

    /// The number of requests logged after `offset`.
    func count(since offset: UInt64) -> Int {
        usleep(1_200_000)
        guard let handle = FileHandle(forReadingAtPath: logPath) else { return 0 }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        return ((try? handle.readToEnd()) ?? Data()).reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
    }

    private static func entry(_ line: Substring) -> Entry? {
        let fields = line.split(separator: " ")
        guard fields.count >= 5, let at = Double(fields[0]), let status = Int(fields[1]),
            let request = Int(fields[3])
        else { return nil }
        return Entry(
            at: at, status: status, bodyBytes: Int(fields[2]), requestBytes: request, webhookID: String(fields[4]))
    }

    /// `wrk`'s requests per second on the receiver (2 threads, 64 connections, 10 s): a bare GET, or
    /// with `post` a POST carrying a body of that many bytes and webhook headers the size of
    /// aftercare's, so the two send the same bytes.
    func wrk(post bodyBytes: Int? = nil, seconds: Int = 10) throws -> WrkRun? {
        guard let wrk = ["/usr/bin/wrk", "/usr/local/bin/wrk"].first(where: FileManager.default.isExecutableFile) else {
            return nil
        }
        var arguments = ["-t2", "-c64", "-d\(seconds)s", "--latency"]
        if let bodyBytes {
            let script = prefix + "/post.lua"
            try Self.postScript(bodyBytes: bodyBytes).write(toFile: script, atomically: true, encoding: .utf8)
            arguments += ["-s", script]
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: wrk)
        process.arguments = arguments + [url]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("Requests/sec:") }),
            let rate = Double(line.split(separator: " ").last ?? "")
        else { throw BenchError("wrk printed no rate: \(output)") }
        let last = lastEntry()
        return WrkRun(rate: rate, requestBytes: last?.requestBytes, bodyBytes: last?.bodyBytes)
    }

    /// The last request in the log (read from its end: a wrk run logs a million lines).
    private func lastEntry() -> Entry? {
        usleep(1_200_000)
        guard let handle = FileHandle(forReadingAtPath: logPath) else { return nil }
        defer { try? handle.close() }
        let end = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: end > 4096 ? end - 4096 : 0)
        let text = String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
        return text.split(separator: "\n").last.flatMap(Self.entry)
    }

    /// A wrk script for a POST shaped like aftercare's: the same headers, values of the same length,
    /// and a JSON body of exactly `bodyBytes` bytes.
    static func postScript(bodyBytes: Int) -> String {
        let head = #"{"type":"aftercare.reminder","reminder_id":"B-12345.ice","text":""#
        let tail = #""}"#
        let body = head + String(repeating: "x", count: max(0, bodyBytes - head.utf8.count - tail.utf8.count)) + tail
        return """
            wrk.method = "POST"
            wrk.headers["Content-Type"] = "application/json"
            wrk.headers["User-Agent"] = "aftercare/1"
            wrk.headers["Accept"] = "*/*"
            wrk.headers["webhook-id"] = "B-12345.ice"
            wrk.headers["webhook-timestamp"] = "1764400000"
            wrk.headers["webhook-signature"] = "v1,\(String(repeating: "A", count: 43))="
            wrk.body = [[\(body)]]

            """
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: prefix)
    }
}

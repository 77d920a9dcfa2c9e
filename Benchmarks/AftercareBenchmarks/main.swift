// aftercare-bench: the figures of DESIGN.md section 9 and issue 11, measured on this machine in one run.
//
//   swift run -c release aftercare-bench              all of them, then one markdown table
//   swift run -c release aftercare-bench delivery     signed webhooks per second to nginx on loopback, and
//                                                     wrk's GET and same-size POST rates on it
//   swift run -c release aftercare-bench peers        huey and APScheduler on the same receiver (needs the
//                                                     venv scripts/bench makes)
//   swift run -c release aftercare-bench ingest       100,000 procedures from the spool
//   swift run -c release aftercare-bench audit        `aftercare audit verify` on a 1,000,000-row log
//   swift run -c release aftercare-bench startup      spawn to READY=1 with 1,000,000 reminders scheduled
//   swift run -c release aftercare-bench lateness     reminders coming due at 1,000/s beside those 1,000,000
//   swift run -c release aftercare-bench memory       RSS (bulk intake, idle, backlog) and idle CPU
//
// Every daemon run samples the daemon's resident memory and reports its peak. Nothing here runs in
// the test suite.
import Foundation

let arguments = Array(CommandLine.arguments.dropFirst())
let known: Set<String> = ["all", "ingest", "memory", "startup", "lateness", "delivery", "audit", "peers", "cluster"]
if arguments.contains("--help") || arguments.contains("-h") {
    print(
        """
        usage: aftercare-bench [all|delivery|peers|ingest|audit|startup|lateness|memory|cluster]...
                               [--messages N] [--peer-count N] [--procedures N] [--rows N] [--reminders N]
                               [--rate N] [--seconds N] [--cluster-messages N]
        """)
    exit(0)
}
let which = Set(arguments.enumerated().filter { index, word in
    !word.hasPrefix("-") && (index == 0 || !arguments[index - 1].hasPrefix("--"))
}.map(\.element))
if let unknown = which.subtracting(known).first {
    FileHandle.standardError.write(Data("aftercare-bench: unknown benchmark '\(unknown)' (try --help)\n".utf8))
    exit(2)
}
let all = which.isEmpty || which.contains("all")
func wants(_ name: String) -> Bool { all || which.contains(name) }

func option(_ name: String, default value: Int) -> Int {
    guard let index = arguments.firstIndex(of: "--" + name), index + 1 < arguments.count,
        let number = Int(arguments[index + 1].replacingOccurrences(of: "_", with: ""))
    else { return value }
    return number
}

var figures: [Figure] = []
var failed = false
/// Runs one part; a part that fails is reported, and the others still run.
@MainActor
func part(_ name: String, _ body: () async throws -> Void) async {
    do {
        try await body()
    } catch {
        failed = true
        FileHandle.standardError.write(Data("aftercare-bench: \(name): \(error)\n".utf8))
        figures.append(Figure(name: name, target: "", measured: "failed: \(error)", met: false))
    }
}

let started = ContinuousClock.now
var receiver: Receiver?
if ["delivery", "peers", "memory", "startup", "lateness", "cluster"].contains(where: wants) {
    do {
        receiver = try Receiver()
    } catch {
        FileHandle.standardError.write(Data("aftercare-bench: \(error)\n".utf8))
        exit(1)
    }
}
var delivery: DeliveryBenchmark.Result?

if wants("delivery"), let receiver {
    await part("delivery") {
        let messages = option("messages", default: 100_000)
        let result = try await DeliveryBenchmark(messages: messages, receiver: receiver).run()
        delivery = result
        guard let get = try receiver.wrk(), let post = try receiver.wrk(post: result.bodyBytes) else {
            throw BenchError("wrk is not installed (apt-get install wrk)")
        }
        let ratio = result.rate / post.rate
        report(
            "delivery: wrk on the same receiver (2 threads, 64 connections, 10 s): GET \(Int(get.rate))/s; POST of a "
                + "\(post.bodyBytes ?? 0)-byte body with webhook headers (request line and "
                + "headers \(post.requestBytes ?? 0) bytes; aftercare's \(result.requestBytes)) \(Int(post.rate))/s",
            "delivery: aftercare/wrk POST = \(String(format: "%.2f", ratio)); aftercare/wrk GET = "
                + String(format: "%.2f", result.rate / get.rate))
        figures += [
            Figure(name: "wrk GET on nginx `return 204` (2 threads, 64 connections)", target: "reference",
                   measured: "\(Int(get.rate).grouped)/s", met: nil),
            Figure(name: "wrk POST, \(post.bodyBytes ?? 0)-byte body as aftercare's, same headers", target: "reference",
                   measured: "\(Int(post.rate).grouped)/s", met: nil),
            Figure(name: "aftercare: signed webhooks to the same nginx, every attempt committed to the log",
                   target: "≥ 0.30 × wrk POST",
                   measured: "\(Int(result.rate).grouped)/s = \(String(format: "%.2f", ratio)) × wrk POST",
                   met: ratio >= 0.30),
            Figure(name: "peak RSS, daemon delivering \(messages.grouped) webhooks",
                   target: "< 64 MiB", measured: mebibytes(result.peakKiB), met: result.peakKiB < 64 * 1024),
        ]
    }
}

if wants("peers"), let receiver {
    await part("peers") {
        var bodyBytes = delivery?.bodyBytes
        if bodyBytes == nil {
            // Alone, the peers still send aftercare's body size: measured from a short real run.
            bodyBytes = try await DeliveryBenchmark(messages: 2000, receiver: receiver).run(quiet: true).bodyBytes
            report("peers: aftercare's body size from a 2,000-webhook run: \(bodyBytes ?? 0) bytes")
        }
        let count = option("peer-count", default: 5000)
        for (name, rate) in try PeersBenchmark(receiver: receiver, bodyBytes: bodyBytes ?? 0, count: count).run() {
            let ratio = delivery.map { String(format: "; aftercare = %.1f×", $0.rate / rate) } ?? ""
            figures.append(Figure(
                name: "\(name): \(count.grouped) signed webhooks to the same nginx, each attempt committed",
                target: "peer", measured: "\(Int(rate).grouped)/s\(ratio)", met: nil))
        }
    }
}

if wants("cluster"), let receiver {
    await part("cluster") {
        let server = try ClusterBenchmark.Server()
        defer { server.stop() }
        let bench = ClusterBenchmark(messages: option("cluster-messages", default: 50_000), receiver: receiver)
        var single: Double?
        for daemons in [1, 2] {
            let result = try await bench.run(daemons: daemons, server: server)
            if daemons == 1 { single = result.rate }
            let scale = single.map { daemons > 1 ? String(format: " = %.2f × one daemon", result.rate / $0) : "" } ?? ""
            figures.append(Figure(
                name: "PostgreSQL store: \(daemons) daemon(s) on one database, \(bench.messages.grouped) signed webhooks "
                    + "to the same nginx, every attempt committed",
                target: "report", measured: "\(Int(result.rate).grouped)/s\(scale); \(result.duplicates) repeated ids",
                met: nil))
        }
    }
}

if wants("ingest") {
    await part("ingest") {
        figures.append(try await IngestBenchmark(procedures: option("procedures", default: 100_000)).run())
    }
}

if wants("audit") {
    await part("audit") {
        figures.append(try await AuditBenchmark(rows: option("rows", default: 1_000_000)).run())
    }
}

if ["memory", "startup", "lateness"].contains(where: wants), let receiver {
    await part("startup/lateness/memory") {
        figures += try await ScheduledBenchmark(
            reminders: option("reminders", default: 1_000_000), receiver: receiver, memory: wants("memory"),
            startup: wants("startup"), lateness: wants("lateness"), rate: option("rate", default: 1000),
            window: option("seconds", default: 30)
        ).run()
    }
}
receiver?.stop()

var load = [0.0, 0.0, 0.0]
getloadavg(&load, 3)
report(
    "",
    "## Figures (\(ProcessInfo.processInfo.activeProcessorCount) cores, load average "
        + String(format: "%.1f", load[0]) + " at the end, whole run \(Int(seconds(since: started))) s)",
    "",
    markdownTable(figures))
exit(failed ? 1 : 0)

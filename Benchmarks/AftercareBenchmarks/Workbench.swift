import AftercareCore
import AftercareDaemon
import Foundation

/// A throw-away clinic: a config, a state folder, and the repository's default protocol.
struct Workbench {
    let root: String
    var configPath: String { root + "/aftercare.toml" }
    var state: String { root + "/state" }

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The folder the benchmark binary sits in, where `aftercare` is built too.
    static var binFolder: URL {
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: executable).deletingLastPathComponent()
    }

    /// - Parameters:
    ///   - laterSteps: plan with a protocol of the same id whose six steps all fall 24 h or more after
    ///     the procedure, so procedures performed now leave every reminder scheduled and none due.
    ///   - extraProtocols: more protocol files (their TOML text) to load beside it.
    init(
        name: String, outbox: String? = nil, senders: String? = nil, channels: String? = nil, dispatch: String = "",
        laterSteps: Bool = false, extraProtocols: [String] = [], store: String = ""
    ) throws {
        root = NSTemporaryDirectory() + "aftercare-bench-\(name)-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var protocolFile = Self.repositoryRoot.appendingPathComponent("Config/protocols/trigger-point-injection.toml").path
        if laterSteps {
            protocolFile = root + "/later-steps.toml"
            var text = "id = \"trigger-point-injection\"\ntitle = \"Benchmark: every step a day or more after\"\n"
            for (index, hours) in [24, 30, 36, 48, 60, 72].enumerated() {
                text += """

                    [[steps]]
                    id = "step-\(index + 1)"
                    at = "+\(hours)h"
                    valid_for = "12h"
                    channels = ["sms", "email"]
                    subject = "Aftercare from {clinic_name}"
                    body = "Hi {first_name}, a reminder from {clinic_name}: {clinic_phone}"

                    """
            }
            try text.write(toFile: protocolFile, atomically: true, encoding: .utf8)
        }
        var protocolFiles = [protocolFile]
        for (index, text) in extraProtocols.enumerated() {
            protocolFiles.append(root + "/extra-\(index).toml")
            try text.write(toFile: protocolFiles[index + 1], atomically: true, encoding: .utf8)
        }
        let config = """
            [clinic]
            name = "Benchmark Clinic"
            phone = "+1 555-010-2030"
            time_zone = "America/New_York"

            [paths]
            state_directory = "state"

            [protocols]
            files = [\(protocolFiles.map { "\"\($0)\"" }.joined(separator: ", "))]

            [channels]
            \(channels ?? "sms = \"outbox\"\nemail = \"outbox\"")

            \(senders ?? "[senders.outbox]\nkind = \"file\"\noutbox = \"\(outbox ?? "state/outbox")\"")

            [dispatch]
            \(dispatch)
            \(store.isEmpty ? "" : "\n[store]\n" + store)
            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        try Spool(root: state + "/spool").prepare()
    }

    /// Runs intake passes until the spool is empty; throws if a pass takes nothing (a refused file
    /// would otherwise keep the benchmark waiting forever).
    func drainSpool(_ intake: Intake) async throws {
        let spool = Spool(root: state + "/spool")
        var waiting = try spool.pendingFiles().count
        while waiting > 0 {
            _ = await intake.run()
            let now = try spool.pendingFiles().count
            if now >= waiting {
                throw BenchError("intake took none of the \(now) waiting file(s); see \(state)/spool/rejected")
            }
            waiting = now
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }

    /// Writes `count` procedures performed at `performedAt` into the spool as JSON Lines files of
    /// `perFile` procedures each.
    /// With `force`, the records say so: a time so far back that nothing will be sent is recorded anyway.
    func spoolProcedures(_ count: Int, perFile: Int, performedAt: Date, prefix: String = "B", force: Bool = false) throws {
        let when = Timestamp.format(performedAt, in: TimeZone(identifier: "America/New_York")!)
        var file = 0
        var index = 0
        while index < count {
            var text = ""
            text.reserveCapacity(perFile * 260)
            for _ in 0..<min(perFile, count - index) {
                text += #"{"procedure_id":"\#(prefix)-\#(index)","protocol":"trigger-point-injection","performed_at":"\#(when)","#
                if force { text += #""force":true,"# }
                text += #""patient":{"id":"MRN-\#(index % 50_000)","first_name":"Ana","time_zone":"America/New_York","#
                text += #""routes":[{"channel":"sms","to":"+1555\#(String(format: "%07d", index % 10_000_000))"}]}}"#
                text += "\n"
                index += 1
            }
            let name = String(format: "%@-%06d.jsonl", prefix, file)
            try text.write(toFile: state + "/spool/incoming/" + name, atomically: true, encoding: .utf8)
            file += 1
        }
    }
}

/// Reads a process's resident memory and CPU time from /proc.
enum ProcessProbe {
    /// Resident set size now, and its peak (VmHWM), in KiB.
    static func memory(_ pid: Int32) -> (rss: Int, peak: Int) {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return (0, 0) }
        func field(_ name: String) -> Int {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name + ":") }) else { return 0 }
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
        }
        return (field("VmRSS"), field("VmHWM"))
    }

    /// Context switches so far of each of the process's threads, by thread id: how often it woke.
    static func contextSwitches(_ pid: Int32) -> [String: Int] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        var counts: [String: Int] = [:]
        for task in tasks {
            guard let status = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8) else {
                continue
            }
            // voluntary_ctxt_switches and nonvoluntary_ctxt_switches
            let lines = status.split(separator: "\n").filter { $0.contains("ctxt_switches:") }
            counts[task] = lines.reduce(0) { $0 + (Int($1.split(separator: "\t").last ?? "") ?? 0) }
        }
        return counts
    }

    /// Context switches between two readings, over the threads alive at the second (a thread that
    /// ended in between takes its count with it).
    static func contextSwitches(from before: [String: Int], to after: [String: Int]) -> Int {
        after.reduce(0) { total, entry in total + entry.value - (before[entry.key] ?? 0) }
    }

    /// User plus system CPU seconds the process has used.
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / ticks
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

func report(_ lines: String...) {
    for line in lines { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
}

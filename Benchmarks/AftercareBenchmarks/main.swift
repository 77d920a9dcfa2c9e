// aftercare-bench: the figures DESIGN.md section 9 asks for, measured on this machine.
//
//   swift run -c release aftercare-bench              all of them
//   swift run -c release aftercare-bench ingest       100,000 procedures from the spool
//   swift run -c release aftercare-bench memory       RSS and idle CPU with 1,000,000 reminders scheduled,
//                                                     and RSS while draining a 100,000-reminder backlog
//   swift run -c release aftercare-bench delivery     signed webhooks per second to a loopback receiver
//   swift run -c release aftercare-bench audit        `aftercare audit verify` on a 1,000,000-row log
//
// Each prints what it measured and how. Nothing here runs in the test suite.
import Foundation

let arguments = Array(CommandLine.arguments.dropFirst())
let known: Set<String> = ["all", "ingest", "memory", "delivery", "audit"]
if arguments.contains("--help") || arguments.contains("-h") {
    print(
        """
        usage: aftercare-bench [all|ingest|memory|delivery|audit]... [--procedures N] [--reminders N]
                               [--messages N] [--rows N]
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

func option(_ name: String, default value: Int) -> Int {
    guard let index = arguments.firstIndex(of: "--" + name), index + 1 < arguments.count,
        let number = Int(arguments[index + 1].replacingOccurrences(of: "_", with: ""))
    else { return value }
    return number
}

do {
    if all || which.contains("ingest") {
        try await IngestBenchmark(procedures: option("procedures", default: 100_000)).run()
    }
    if all || which.contains("memory") {
        try await MemoryBenchmark(reminders: option("reminders", default: 1_000_000)).run()
    }
    if all || which.contains("delivery") {
        try await DeliveryBenchmark(messages: option("messages", default: 100_000)).run()
    }
    if all || which.contains("audit") {
        try await AuditBenchmark(rows: option("rows", default: 1_000_000)).run()
    }
} catch {
    FileHandle.standardError.write(Data("aftercare-bench: \(error)\n".utf8))
    exit(1)
}

// aftercare-bench: the figures DESIGN.md section 9 asks for, measured on this machine.
//
//   swift run -c release aftercare-bench              all of them
//   swift run -c release aftercare-bench ingest       100,000 procedures from the spool
//   swift run -c release aftercare-bench memory       RSS and idle CPU with 1,000,000 reminders scheduled,
//                                                     and RSS while draining a 100,000-reminder backlog
//   swift run -c release aftercare-bench delivery     signed webhooks per second to a loopback receiver
//
// Each prints what it measured and how. Nothing here runs in the test suite.
import Foundation

let arguments = Array(CommandLine.arguments.dropFirst())
let which = Set(arguments.filter { !$0.hasPrefix("-") })
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
} catch {
    FileHandle.standardError.write(Data("aftercare-bench: \(error)\n".utf8))
    exit(1)
}

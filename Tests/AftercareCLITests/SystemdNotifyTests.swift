import Foundation
import Testing

@Suite("The daemon under a service manager that speaks sd_notify", .serialized)
struct SystemdNotifyTests {
    /// Starts the daemon with the notify variables set; `WATCHDOG_PID` is the daemon's own pid (the
    /// shell's, which exec keeps), as systemd sets it.
    func startDaemon(_ harness: CLIHarness, socket: String, watchdogMicros: Int?) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        var script = "export NOTIFY_SOCKET='\(socket)'; "
        if let watchdogMicros { script += "export WATCHDOG_USEC=\(watchdogMicros) WATCHDOG_PID=$$; " }
        script += "exec '\(CLIHarness.binary)' daemon --config '\(harness.configPath)'"
        process.arguments = ["-c", script]
        FileManager.default.createFile(atPath: harness.root + "/daemon.log", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: harness.root + "/daemon.log")
        try process.run()
        return process
    }

    @Test("start, reload, bad reload and stop send exactly READY, RELOADING/READY twice, STOPPING; watchdog within half the interval")
    func lifecycleOnPathSocket() throws {
        let harness = try CLIHarness()
        let listener = try NotifySocketListener(abstract: false)
        let daemon = try startDaemon(harness, socket: listener.address, watchdogMicros: 1_000_000)
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }

        #expect(listener.collect(timeout: 15) { $0.contains { $0.hasPrefix("READY=1") } }, "log: \(harness.daemonLog)")
        // Watch the pings for three seconds with nothing to do.
        listener.collect(timeout: 3)
        let pings = listener.watchdogTimes
        #expect(pings.count >= 6, "\(pings.count) pings in 3 s")
        // WATCHDOG_USEC is 1 s: a ping at least every half second (three quarters allowed for a busy
        // machine), and not more often than every quarter second.
        let gaps = zip(pings.dropFirst(), pings).map { $0.timeIntervalSince($1) }
        #expect(gaps.allSatisfy { $0 >= 0.2 && $0 <= 0.75 }, "gaps \(gaps)")

        kill(daemon.processIdentifier, SIGHUP)
        #expect(listener.collect(timeout: 10) { $0.filter { $0.hasPrefix("READY=1") }.count == 2 })
        // A broken configuration is refused; the daemon keeps running on the old one.
        let good = try String(contentsOfFile: harness.configPath, encoding: .utf8)
        try (good + "\nunknown_key = 1\n").write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        kill(daemon.processIdentifier, SIGHUP)
        #expect(listener.collect(timeout: 10) { $0.filter { $0.hasPrefix("READY=1") }.count == 3 })
        try good.write(toFile: harness.configPath, atomically: true, encoding: .utf8)
        let add = try harness.run(["add", "--procedure", "N-1", "--patient", "MRN-1", "--performed-at", "now",
                                   "--route", "sms:+15551234567"])
        #expect(add.stdout.contains("The daemon has taken it."), "the daemon still works after a refused reload")

        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        listener.collect(timeout: 1)
        #expect(daemon.terminationStatus == 0)

        let lifecycle = listener.lifecycle
        #expect(lifecycle.count == 6, "\(lifecycle)")
        guard lifecycle.count == 6 else { return }
        // Ready without waiting for the queue's figures, which follow in a status line of their own.
        #expect(lifecycle[0].hasPrefix("READY=1\nSTATUS=ready; counting the queue"))
        #expect(listener.received.contains { $0.message.hasPrefix("STATUS=scheduled 0, due 0, retrying 0, dead 0, expired 0") })
        #expect(lifecycle[1].hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        let micros = UInt64(lifecycle[1].split(separator: "\n")[1].dropFirst("MONOTONIC_USEC=".count)) ?? 0
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let nowMicros = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
        #expect(micros > 0 && micros <= nowMicros && nowMicros - micros < 60_000_000)
        #expect(lifecycle[2].hasPrefix("READY=1\nSTATUS=scheduled"))
        #expect(lifecycle[3].hasPrefix("RELOADING=1\nMONOTONIC_USEC="))
        #expect(lifecycle[4].hasPrefix("READY=1\nSTATUS=reload refused: "))
        #expect(lifecycle[4].contains("unknown key 'unknown_key'"))
        #expect(lifecycle[5].hasPrefix("STOPPING=1"))
        #expect(listener.received.allSatisfy { $0.message.hasSuffix("\n") && !$0.message.dropLast().contains("\n\n") })
    }

    @Test("an abstract @socket works too, and a watchdog meant for another process is not pinged")
    func abstractSocketAndForeignWatchdog() throws {
        let harness = try CLIHarness()
        let listener = try NotifySocketListener(abstract: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLIHarness.binary)
        process.arguments = ["daemon", "--config", harness.configPath]
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = listener.address
        environment["WATCHDOG_USEC"] = "200000"
        environment["WATCHDOG_PID"] = "1"
        process.environment = environment
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        #expect(listener.collect(timeout: 15) { $0.contains { $0.hasPrefix("READY=1") } })
        listener.collect(timeout: 1)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        listener.collect(timeout: 0.5)
        #expect(process.terminationStatus == 0)
        #expect(listener.watchdogTimes.isEmpty)
        #expect(listener.lifecycle.map { $0.split(separator: "\n").first.map(String.init) ?? "" } == ["READY=1", "STOPPING=1"])
    }

    @Test("SIGTERM while sends hang: exits 0 within the grace period, and every reminder stays due")
    func sigtermDuringHangingDelivery() throws {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
        let receiver = try Receiver(secret: secret)
        let secretFile = NSTemporaryDirectory() + "aftercare-secret-" + UUID().uuidString
        try secret.write(toFile: secretFile, atomically: true, encoding: .utf8)
        let harness = try CLIHarness(
            channels: "sms = \"gateway\"",
            extra: """
                [senders.gateway]
                kind = "webhook"
                url = "http://127.0.0.1:\(receiver.port)/hang"
                allow_insecure_http = true
                secret_file = "\(secretFile)"
                total_timeout = "60s"

                [dispatch]
                shutdown_grace = "2s"
                """)
        let daemon = try harness.startDaemon()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }
        for index in 0..<5 {
            let add = try harness.run(["add", "--procedure", "H-\(index)", "--patient", "MRN-1", "--performed-at", "now",
                                       "--route", "sms:+15551234567", "--wait", "0"])
            #expect(add.status == 0)
        }
        #expect(harness.eventually(timeout: 15) { receiver.requests().count == 10 }, "log: \(harness.daemonLog)")
        let stopped = Date()
        daemon.terminate()
        daemon.waitUntilExit()
        let took = Date().timeIntervalSince(stopped)
        #expect(daemon.terminationStatus == 0)
        #expect(took >= 1.5 && took < 6, "stopped in \(took) s")
        let status = try harness.run(["status"])
        #expect(status.stdout.range(of: #"In flight\s+0"#, options: .regularExpression) != nil, "\(status.stdout)")
        #expect(status.stdout.range(of: #"Scheduled\s+30 \(due now: 10"#, options: .regularExpression) != nil, "\(status.stdout)")
        #expect(status.stdout.range(of: #"Delivered\s+0"#, options: .regularExpression) != nil)
    }
}

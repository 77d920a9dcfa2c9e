import AftercareCore
import Foundation
import Testing

@Suite("Local times in every zone: gaps, repeats, zones east of +12, and which zone names are real")
struct LocalTimeZoneTests {
    /// The offset changes of `zone` between `start` and `end`: (instant, offset before, offset after),
    /// found by a daily scan and a bisection on Foundation's `secondsFromGMT`, not by `LocalTime`.
    static func transitions(_ zone: TimeZone, from start: Int, to end: Int) -> [(at: Int, before: Int, after: Int)] {
        func offset(_ seconds: Int) -> Int { zone.secondsFromGMT(for: Date(timeIntervalSince1970: Double(seconds))) }
        var found: [(Int, Int, Int)] = []
        var time = start
        var previous = offset(time)
        while time < end {
            let next = time + 86400
            let current = offset(next)
            if current != previous {
                var low = time
                var high = next
                while high - low > 1 {
                    let middle = (low + high) / 2
                    if offset(middle) == previous { low = middle } else { high = middle }
                }
                found.append((high, previous, current))
            }
            previous = current
            time = next
        }
        return found
    }

    @Test("every zone, across its 2026 and 2027 transitions: every 5 local minutes resolve as brute force says")
    func everyZoneEveryTransition() async throws {
        let (failures, zones, transitions) = await OwnThread.run { Self.checkEveryZone() }
        #expect(failures.isEmpty, "\(failures.count) wrong, first: \(failures.prefix(5).joined(separator: "; "))")
        #expect(zones.contains("Pacific/Chatham"))
        #expect(zones.contains("Pacific/Auckland"))
        #expect(zones.contains("Australia/Lord_Howe"))
        #expect(transitions > 100)
    }

    /// The mismatches between `LocalTime` and brute force, the zones with a transition, and how many.
    static func checkEveryZone() -> (failures: [String], zones: Set<String>, transitions: Int) {
        let start = Int(Timestamp.parse("2026-01-01T00:00:00Z")!.timeIntervalSince1970)
        let end = Int(Timestamp.parse("2028-01-01T00:00:00Z")!.timeIntervalSince1970)
        var failures: [String] = []
        var checkedTransitions = 0
        var checkedZones: Set<String> = []
        for id in TimeZone.knownTimeZoneIdentifiers {
            guard let zone = TimeZone(identifier: id) else {
                failures.append("\(id): not loadable")
                continue
            }
            for transition in Self.transitions(zone, from: start, to: end) {
                // Brute force: every UTC minute within 6 h of the change, read on the local clock.
                var instants: [Int: [Int]] = [:]
                for utc in stride(from: transition.at - 6 * 3600, to: transition.at + 6 * 3600, by: 60) {
                    let local = utc + zone.secondsFromGMT(for: Date(timeIntervalSince1970: Double(utc)))
                    instants[local, default: []].append(utc)
                }
                let low = transition.at + min(transition.before, transition.after) - 90 * 60
                let high = transition.at + max(transition.before, transition.after) + 90 * 60
                // Every 5 minutes: each zone's offsets and changes fall on whole quarter hours, so the
                // edges of every gap and doubled hour are among them.
                for wall in stride(from: low, through: high, by: 300) {
                    let local = LocalTime(wallSeconds: wall)
                    let expected = (instants[wall] ?? []).sorted()
                    let label = "\(id) wall \(wall) around \(transition.at)"
                    var right: Bool
                    switch local.resolve(in: zone) {
                    case .unique(let date):
                        right = expected == [Int(date.timeIntervalSince1970)]
                    case .repeated(let first, let second, let at, _, _):
                        right = expected == [Int(first.timeIntervalSince1970), Int(second.timeIntervalSince1970)]
                            && Int(at.timeIntervalSince1970) == transition.at
                    case .gap(let at, let before, let after):
                        right = expected.isEmpty && Int(at.timeIntervalSince1970) == transition.at
                            && before == transition.before && after == transition.after
                    }
                    // instant(in:): the first occurrence, or the same distance past a gap.
                    let instant = Int(local.instant(in: zone).timeIntervalSince1970)
                    right = right && instant == expected.first ?? wall - transition.before
                    if !right { failures.append("\(label): brute force \(expected), LocalTime \(instant)") }
                }
                checkedTransitions += 1
                checkedZones.insert(id)
            }
        }
        return (failures, checkedZones, checkedTransitions)
    }

    @Test("Chatham and Auckland: next-day wall-clock steps and quiet-hour ends land on the right local time")
    func eastOfTwelve() throws {
        // Chatham springs forward on 2026-09-27 at 02:45 (+12:45) to 03:45 (+13:45).
        let chatham = try #require(TimeZone(identifier: "Pacific/Chatham"))
        let procedure = try #require(Timestamp.parse("2026-09-26T10:00:00+12:45"))
        let step = Planner.nominalTime(of: .wallClock(days: 1, hour: 2, minute: 30), after: procedure, zone: chatham)
        #expect(Timestamp.format(step, in: chatham) == "2026-09-27T02:30:00+12:45")
        let inGap = Planner.nominalTime(of: .wallClock(days: 1, hour: 3, minute: 0), after: procedure, zone: chatham)
        #expect(Timestamp.format(inGap, in: chatham) == "2026-09-27T04:00:00+13:45")
        // Auckland springs forward on 2026-09-27 at 02:00 (+12) to 03:00 (+13); quiet hours end at 08:00 local.
        let auckland = try #require(TimeZone(identifier: "Pacific/Auckland"))
        let night = try #require(Timestamp.parse("2026-09-26T23:00:00+12:00"))
        let policy = PlanFixture.policy(quiet: QuietHours(startMinute: 21 * 60, endMinute: 8 * 60))
        let held = Planner.allowedTime(
            for: PlanFixture.step("x", .elapsed(seconds: 0)), at: night, zone: auckland,
            policy: policy)
        #expect(Timestamp.format(held, in: auckland) == "2026-09-27T08:00:00+13:00")
        let ending = Planner.allowedTime(
            for: PlanFixture.step("x", .elapsed(seconds: 0)),
            at: try #require(Timestamp.parse("2026-04-04T23:00:00+13:00")),
            zone: auckland, policy: policy)
        #expect(Timestamp.format(ending, in: auckland) == "2026-04-05T08:00:00+12:00")
    }

    @Test("typed local times: a DST gap and a doubled hour are refused with the zone's own change")
    func typedTimes() throws {
        let sydney = try #require(TimeZone(identifier: "Australia/Sydney"))
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        func problem(_ text: String, _ zone: TimeZone = sydney) -> String? {
            do {
                _ = try TimeInput.parse(text, in: zone, now: now)
                return nil
            } catch {
                return error.problem
            }
        }
        #expect(
            problem("2026-10-04 02:30")
                == "'2026-10-04 02:30' falls in Australia/Sydney's DST gap "
                + "(clocks jump from 02:00 to 03:00 on 2026-10-04); that local time does not exist")
        #expect(
            problem("2026-04-05 02:30")
                == "'2026-04-05 02:30' happens twice in Australia/Sydney "
                + "(clocks go back from 03:00 to 02:00 on 2026-04-05); give the offset: "
                + "2026-04-05T02:30:00+11:00 (first) or 2026-04-05T02:30:00+10:00 (second)")
        let chatham = try #require(TimeZone(identifier: "Pacific/Chatham"))
        #expect(problem("2026-09-27T03:00", chatham)?.contains("clocks jump from 02:45 to 03:45 on 2026-09-27") == true)
        #expect(
            problem("yesterday")?.hasSuffix(
                "is not now, a time with offset (2026-11-25T14:30:00-05:00) or a local "
                    + "time (2026-11-25 14:30)") == true)
        for bad in ["2026-02-30 10:00", "2026-11-25 24:00", "2026-11-25", "2026-11-25 14:30:00:00", "2026-11-25 1:30"] {
            #expect(problem(bad) != nil, "\(bad)")
        }
        // The answers, computed by hand.
        let newYork = try #require(TimeZone(identifier: "America/New_York"))
        #expect(try TimeInput.parse("now", in: newYork, now: now) == now)
        #expect(
            try TimeInput.parse("2026-11-25 14:30", in: newYork, now: now) == Timestamp.parse("2026-11-25T19:30:00Z"))
        #expect(
            try TimeInput.parse("2026-11-25T14:30:15", in: newYork, now: now) == Timestamp.parse("2026-11-25T19:30:15Z")
        )
        #expect(
            try TimeInput.parse("2026-04-05T02:30:00+10:00", in: sydney, now: now)
                == Timestamp.parse("2026-04-04T16:30:00Z"))
        // Spool files take only times with an offset, so a doubled local time cannot be read there either.
        let line =
            #"{"procedure_id":"P-1","protocol":"p","performed_at":"2026-04-05 02:30","patient":{"id":"M","#
            + #""time_zone":"Australia/Sydney","routes":[{"channel":"sms","to":"+61412345678"}]}}"#
        #expect(throws: IntakeError.self) { try IntakeCodec.decode(Data(line.utf8)) }
    }

    @Test("only real IANA zones: region names and their links; abbreviations and offset names refused with a hint")
    func realZonesOnly() throws {
        func problem(_ value: String) -> String? {
            do {
                try InputRules.checkTimeZone(value, field: "time_zone")
                return nil
            } catch {
                return error.description
            }
        }
        for good in [
            "America/New_York", "Asia/Kolkata", "Asia/Calcutta", "US/Eastern", "Pacific/Chatham", "UTC",
            "Etc/UTC", "America/Argentina/Buenos_Aires",
        ] {
            #expect(problem(good) == nil, "\(good)")
        }
        for abbreviation in ["EST", "PST", "CET", "GMT", "EST5EDT", "NZ"] {
            #expect(problem(abbreviation)?.contains("is an abbreviation, not a time zone") == true, "\(abbreviation)")
            #expect(problem(abbreviation)?.contains("use a region name such as America/New_York") == true)
        }
        for offset in ["GMT+5", "UTC+5", "UTC-03:00", "GMT+05:30", "+05:00", "-5", "GMT0", "UT+1"] {
            #expect(problem(offset)?.contains("is a fixed offset, not a time zone") == true, "\(offset)")
        }
        #expect(problem("Etc/GMT+5")?.contains("with the sign inverted (it means UTC-5)") == true)
        #expect(problem("Etc/GMT-14")?.contains("(it means UTC+14)") == true)
        for unknown in ["Mars/Base", "america/new_york", "", "Europe/Berlin "] {
            #expect(problem(unknown)?.contains("is not a known IANA time zone") == true, "\(unknown)")
        }
        // Every region the system knows is accepted.
        for id in TimeZone.knownTimeZoneIdentifiers where id.contains("/") && !id.hasPrefix("Etc/GMT") {
            #expect(problem(id) == nil, "\(id)")
        }
    }
}

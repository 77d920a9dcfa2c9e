@testable import AftercareDaemon
import Testing

/// The dispatch pipeline's decisions on their own: no store, no sender, no clock. Outcomes are
/// plain numbers; time is the uptime the test passes in.
@Suite("The dispatch pipeline's state machine, driven by hand")
struct PipelineStateTests {
    typealias State = PipelineState<Int>

    static func settings(
        limit: Int = 8, batch: Int = 4, grace: Duration = .seconds(10), watchdog: Duration? = nil
    ) -> State.Settings {
        State.Settings(maxConcurrent: limit, batchSize: batch, shutdownGrace: grace, watchdogInterval: watchdog)
    }

    /// A short name for an action, so a whole turn reads as a list.
    static func name(_ action: State.Action) -> String {
        switch action {
        case .reload: "reload"
        case .pingWatchdog: "ping"
        case .publishStatus: "status"
        case .report(.storeFailing(let what, _, let first)): "failing(\(what)\(first ? ",first" : ""))"
        case .report(.storeWorks): "works"
        case .checkLeases: "leases"
        case .recoverLapsed: "recover"
        case .claim(let limit): "claim(\(limit))"
        case .send(let count): "send(\(count))"
        case .releaseClaimed: "release"
        case .record(let outcomes): "record(\(outcomes.map(String.init).joined(separator: ",")))"
        case .cancelSends: "cancel"
        case .wait(let untilDue, let timeout):
            "wait(\(untilDue ? "due" : "-"),\(timeout.map { "\($0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000)ms" } ?? "-"))"
        case .stop(let unrecorded): "stop(\(unrecorded))"
        }
    }

    /// Runs one turn: asks for actions until a wait or a stop, answering each with `answer` (an
    /// event to apply, or nil), and returns their names.
    static func turn(
        _ state: inout State, at ms: Int, intakeFailing: Bool = false, answer: (State.Action) -> State.Event? = { _ in nil }
    ) -> [String] {
        var names: [String] = []
        let now = Duration.milliseconds(ms)
        while names.count < 50 {
            let action = state.nextAction(at: now, intakeStoreFailing: intakeFailing)
            names.append(name(action))
            switch action {
            case .wait, .stop: return names
            // The driver's own answers: every claimed reminder it is asked to send goes out.
            case .send(let count): state.apply(.dispatched(taken: count, sent: count, settled: []), at: now)
            case .releaseClaimed:
                let count = state.claimedWaiting
                state.apply(.dispatched(taken: count, sent: 0, settled: Array(repeating: -1, count: count)), at: now)
            default: if let event = answer(action) { state.apply(event, at: now) }
            }
        }
        Issue.record("no wait after 50 actions: \(names)")
        return names
    }

    /// The store's usual answers: leases fine, every claim filled with sends, as far as `due` lasts.
    static func store(due: Int) -> (State.Action) -> State.Event? {
        var left = due
        return { action in
            switch action {
            case .checkLeases: return .leasesChecked(lapsed: false)
            case .claim(let limit):
                let got = min(limit, left)
                left -= got
                return .claimed(asked: limit, got: got)
            case .recoverLapsed: return .recovered
            default: return nil
            }
        }
    }

    @Test("claims come in batches, one batch ahead of the sends, and stop when nothing more is due")
    func claimsInBatches() {
        var state = State(settings: Self.settings(limit: 8, batch: 4))
        // Eight sent, and a third claim runs ahead; the store had ten, so it is exhausted.
        #expect(Self.turn(&state, at: 0, answer: Self.store(due: 10)) == [
            "leases", "claim(4)", "send(4)", "claim(4)", "send(4)", "claim(4)", "status", "wait(due,-)",
        ])
        #expect(state.inFlight == 8)
        #expect(state.claimedWaiting == 2)
        // A send back: its slot goes at once to a reminder claimed ahead, without the store; the
        // outcome waits up to 20 ms to be written with others.
        state.apply(.resolved([1]), at: .milliseconds(5))
        #expect(Self.turn(&state, at: 5) == ["send(1)", "wait(due,25ms)"])
        state.apply(.resolved([2]), at: .milliseconds(6))
        #expect(Self.turn(&state, at: 6) == ["send(1)", "wait(due,25ms)"])
        #expect(state.claimedWaiting == 0)
        // Two more back: nothing more is due, so no claim; a batch's worth of outcomes is written.
        state.apply(.resolved([3, 4]), at: .milliseconds(7))
        #expect(Self.turn(&state, at: 7, answer: Self.store(due: 0)) == ["record(1,2,3,4)", "wait(due,-)"])
        // No more claims until a timer or a signal, however much room comes free.
        state.apply(.resolved([5, 6]), at: .milliseconds(8))
        #expect(Self.turn(&state, at: 8) == ["wait(due,-)"])
        state.apply(.timer, at: .milliseconds(9))
        // The timer: work fell due. Leases were looked at 9 ms ago: not again until a second has passed.
        #expect(Self.turn(&state, at: 9, answer: Self.store(due: 1)) == ["claim(4)", "send(1)", "wait(due,-)"])
        state.apply(.timer, at: .milliseconds(1000))
        #expect(Self.turn(&state, at: 1000, answer: Self.store(due: 0)) == ["leases", "claim(4)", "wait(due,-)"])
    }

    @Test("outcomes are written in groups, one at a time: after 20 ms, at once when idle or a batch waits")
    func outcomesInGroups() {
        var state = State(settings: Self.settings(limit: 8, batch: 4))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 8))
        state.apply(.resolved([1, 2]), at: .milliseconds(10))
        // Nothing more is due: the outcomes wait up to 20 ms for company.
        #expect(Self.turn(&state, at: 10) == ["wait(due,30ms)"])
        // 20 ms after the first finished, the group goes, and the next waits for it to be written.
        #expect(Self.turn(&state, at: 30) == ["record(1,2)", "wait(due,-)"])
        state.apply(.resolved([3, 4, 5, 6]), at: .milliseconds(31))
        #expect(Self.turn(&state, at: 31) == ["wait(due,-)"])
        state.apply(.recorded, at: .milliseconds(32))
        // A batch's worth waits: written at once.
        #expect(Self.turn(&state, at: 32) == ["record(3,4,5,6)", "wait(due,-)"])
        state.apply(.recorded, at: .milliseconds(33))
        state.apply(.resolved([7, 8]), at: .milliseconds(34))
        // Nothing else under way: written at once; then the pipeline sleeps until work falls due.
        #expect(Self.turn(&state, at: 34) == ["record(7,8)", "wait(due,-)"])
        state.apply(.recorded, at: .milliseconds(35))
        #expect(Self.turn(&state, at: 35) == ["wait(due,-)"])
    }

    @Test("idle, the pipeline waits for the next due time with no timeout; with a watchdog, half its interval")
    func idleWait() {
        var state = State(settings: Self.settings())
        #expect(Self.turn(&state, at: 0, answer: Self.store(due: 0)) == ["leases", "claim(4)", "status", "wait(due,-)"])
        #expect(Self.turn(&state, at: 0) == ["wait(due,-)"])
        var watched = State(settings: Self.settings(watchdog: .seconds(4)))
        #expect(Self.turn(&watched, at: 0, answer: Self.store(due: 0)) == ["ping", "leases", "claim(4)", "status", "wait(due,2000ms)"])
        #expect(Self.turn(&watched, at: 2000, answer: Self.store(due: 0)) == ["ping", "leases", "wait(due,4000ms)"])
    }

    @Test("a refused write: outcomes kept ahead of newer ones, claims paused 5 s, no pings, then written first")
    func refusedWrite() {
        var state = State(settings: Self.settings(limit: 8, batch: 4, watchdog: .seconds(4)))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 8))
        state.apply(.resolved([1, 2, 3, 4]), at: .milliseconds(10))
        #expect(Self.turn(&state, at: 10, answer: Self.store(due: 0)) == ["ping", "record(1,2,3,4)", "wait(due,2010ms)"])
        state.apply(.recordRefused([1, 2, 3, 4], error: "disk full"), at: .milliseconds(20))
        state.apply(.resolved([5]), at: .milliseconds(21))
        // Paused: no ping, no claim, no write; the status line says so; wake when the pause ends.
        #expect(Self.turn(&state, at: 21) == ["failing(recording outcomes,first)", "status", "wait(-,5020ms)"])
        #expect(state.failingSince == .milliseconds(20))
        #expect(Self.turn(&state, at: 3000) == ["wait(-,5020ms)"])
        // After the pause: lease check works, but only writing the refused outcomes clears the fault.
        #expect(Self.turn(&state, at: 5020, answer: Self.store(due: 0)) == ["leases", "record(1,2,3,4,5)", "wait(due,-)"])
        #expect(state.failingSince != nil)
        state.apply(.recorded, at: .milliseconds(5030))
        #expect(Self.turn(&state, at: 5030, answer: Self.store(due: 0)) == ["works", "ping", "status", "wait(due,7030ms)"])
        #expect(state.failingSince == nil)
    }

    @Test("intake's store failing stops the pings too")
    func intakeFailingStopsPings() {
        var state = State(settings: Self.settings(watchdog: .seconds(4)))
        #expect(!Self.turn(&state, at: 0, intakeFailing: true, answer: Self.store(due: 0)).contains("ping"))
        #expect(Self.turn(&state, at: 10, intakeFailing: false).first == "ping")
    }

    @Test("lapsed leases go back to the queue only after the outcomes in hand are written, and block claims till then")
    func recoveryAfterOutcomes() {
        var state = State(settings: Self.settings(limit: 8, batch: 4))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 4))
        state.apply(.resolved([1]), at: .milliseconds(2))
        // A lease expiry wakes the pipeline a second later; the look finds it lapsed.
        state.apply(.timer, at: .milliseconds(1002))
        let lapsed: (State.Action) -> State.Event? = { action in
            if case .checkLeases = action { return .leasesChecked(lapsed: true) }
            return nil
        }
        #expect(Self.turn(&state, at: 1002, answer: lapsed) == ["leases", "record(1)", "wait(-,-)"])
        state.apply(.recorded, at: .milliseconds(1004))
        #expect(Self.turn(&state, at: 1004, answer: Self.store(due: 4)) == [
            "recover", "claim(4)", "send(4)", "claim(4)", "wait(due,-)",
        ])
    }

    @Test("shutdown: nothing more claimed, sends finish within the grace, the rest are cancelled, all written, stop")
    func shutdown() {
        var state = State(settings: Self.settings(limit: 8, batch: 4, grace: .seconds(2)))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 8))
        state.apply(.signalled([.shutdown]), at: .milliseconds(100))
        state.apply(.resolved([1, 2]), at: .milliseconds(100))
        #expect(Self.turn(&state, at: 100) == ["record(1,2)", "wait(-,2100ms)"])
        state.apply(.recorded, at: .milliseconds(200))
        #expect(Self.turn(&state, at: 200) == ["wait(-,2100ms)"])
        #expect(Self.turn(&state, at: 2100) == ["cancel", "wait(-,-)"])
        state.apply(.resolved([3, 4, 5, 6, 7, 8]), at: .milliseconds(2110))
        #expect(Self.turn(&state, at: 2110) == ["record(3,4,5,6,7,8)", "wait(-,-)"])
        state.apply(.recorded, at: .milliseconds(2120))
        #expect(Self.turn(&state, at: 2120) == ["stop(0)"])
    }

    @Test("shutdown gives back, as released, what was claimed ahead and never sent")
    func shutdownReleasesClaimedAhead() {
        var state = State(settings: Self.settings(limit: 8, batch: 4, grace: .seconds(2)))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 12))
        #expect(state.inFlight == 8 && state.claimedWaiting == 4)
        state.apply(.signalled([.shutdown]), at: .milliseconds(10))
        #expect(Self.turn(&state, at: 10) == ["release", "record(-1,-1,-1,-1)", "wait(-,2010ms)"])
        #expect(state.claimedWaiting == 0)
        state.apply(.recorded, at: .milliseconds(20))
        state.apply(.resolved([1, 2, 3, 4, 5, 6, 7, 8]), at: .milliseconds(30))
        #expect(Self.turn(&state, at: 30) == ["record(1,2,3,4,5,6,7,8)", "wait(-,2010ms)"])
        state.apply(.recorded, at: .milliseconds(40))
        #expect(Self.turn(&state, at: 40) == ["stop(0)"])
    }

    @Test("a claim still under way holds the stop until it is back, then its reminders are released")
    func shutdownWaitsForClaim() {
        var state = State(settings: Self.settings(limit: 8, batch: 4, grace: .seconds(2)))
        // The claim is asked for but not answered yet.
        #expect(Self.turn(&state, at: 0, answer: { action in
            if case .checkLeases = action { return .leasesChecked(lapsed: false) }
            return nil
        }) == ["leases", "claim(4)", "status", "wait(-,-)"])
        state.apply(.signalled([.shutdown]), at: .milliseconds(5))
        #expect(Self.turn(&state, at: 5) == ["wait(-,2005ms)"])
        state.apply(.claimed(asked: 4, got: 3), at: .milliseconds(6))
        #expect(Self.turn(&state, at: 6) == ["release", "record(-1,-1,-1)", "wait(-,2005ms)"])
        state.apply(.recorded, at: .milliseconds(7))
        #expect(Self.turn(&state, at: 7) == ["stop(0)"])
    }

    @Test("stopping while the store refuses: tried again until the grace ends, then it stops and says how many")
    func stopWhileFailing() {
        var state = State(settings: Self.settings(limit: 8, batch: 4, grace: .seconds(8)))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 2))
        state.apply(.resolved([1, 2]), at: .milliseconds(10))
        #expect(Self.turn(&state, at: 10) == ["record(1,2)", "wait(due,-)"])
        state.apply(.recordRefused([1, 2], error: "locked"), at: .milliseconds(20))
        state.apply(.signalled([.shutdown]), at: .milliseconds(30))
        #expect(Self.turn(&state, at: 30) == ["failing(recording outcomes,first)", "status", "wait(-,5020ms)"])
        #expect(Self.turn(&state, at: 5020) == ["record(1,2)", "wait(-,8030ms)"])
        state.apply(.recordRefused([1, 2], error: "locked"), at: .milliseconds(5030))
        #expect(Self.turn(&state, at: 8030) == ["failing(recording outcomes)", "stop(2)"])
    }

    @Test("a reload comes first, its settings apply to the next claim; none once stopping")
    func reload() {
        var state = State(settings: Self.settings(limit: 8, batch: 4))
        _ = Self.turn(&state, at: 0, answer: Self.store(due: 0))
        state.apply(.signalled([.reload]), at: .milliseconds(10))
        let reloaded: (State.Action) -> State.Event? = { action in
            if case .reload = action { return .reloaded(Self.settings(limit: 8, batch: 2)) }
            return Self.store(due: 10)(action)
        }
        #expect(Self.turn(&state, at: 10, answer: reloaded) == [
            "reload", "claim(2)", "send(2)", "claim(2)", "send(2)", "claim(2)", "send(2)", "claim(2)", "send(2)",
            "claim(2)", "wait(-,-)",
        ])
        state.apply(.signalled([.shutdown, .reload]), at: .milliseconds(20))
        #expect(Self.turn(&state, at: 20).contains("reload") == false)
    }
}

import AftercareConfig
import AftercareCore
import AftercareDelivery
import AftercareStore
import Foundation
import Logging

/// The configuration in force and the senders built from it. Replaced whole on reload.
struct Runtime: Sendable {
    let config: AftercareConfiguration
    /// Senders by the name the config gives them.
    let senders: [String: any Sender]
    /// Each loaded protocol's content-addressed version, by protocol id, computed once per load.
    let protocolVersions: [String: ProtocolVersion]

    init(config: AftercareConfiguration, senders: [String: any Sender]) {
        self.config = config
        self.senders = senders
        protocolVersions = config.protocols.mapValues(ProtocolVersion.init)
    }
}

/// A contact route with the configured sender that takes its channel.
struct UsableRoute: Sendable {
    let route: ContactRoute
    let senderName: String
    let sender: any Sender
}

/// What a claimed reminder needs before anything goes over the wire.
enum Preparation: Sendable {
    /// Resolved without a send (expired, held for quiet hours, no usable route, no longer configured).
    case settled(Resolution)
    /// To be sent now.
    case send(SendJob)
}

/// One message ready to go, with what its result needs to become a resolution. A class: it travels
/// from the pipeline to the sender's completion and back through the mailbox, and a reference is
/// one retain where a copy of all it holds would be dozens.
final class SendJob: Sendable {
    /// The configuration the job was prepared under (a reload may replace it meanwhile).
    let runtime: Runtime
    let reminder: ClaimedReminder
    let step: Step
    let route: UsableRoute
    let optedOut: [String]
    let message: OutboundMessage
    let startedAt: Date
    let startedUptime: Duration
    let protocolVersion: ProtocolVersion

    init(
        runtime: Runtime, reminder: ClaimedReminder, step: Step, route: UsableRoute, optedOut: [String],
        message: OutboundMessage, startedAt: Date, startedUptime: Duration, protocolVersion: ProtocolVersion
    ) {
        self.runtime = runtime
        self.reminder = reminder
        self.step = step
        self.route = route
        self.optedOut = optedOut
        self.message = message
        self.startedAt = startedAt
        self.startedUptime = startedUptime
        self.protocolVersion = protocolVersion
    }

    var sender: any Sender { route.sender }
}

/// Takes one claimed reminder to its resolution: expiry and quiet-hours checks at send time, route
/// choice by the patient's preference and opt-outs, rendering (``prepare(_:)``), and, from the
/// send's result, what comes next (``conclude(_:result:endedAt:endedUptime:)``: delivered, a retry
/// inside the window, the next route, expired or dead). No I/O: the pipeline sends.
struct Dispatcher: Sendable {
    let runtime: Runtime
    let clock: any WallClock
    let logger: Logger

    /// Everything short of the send itself: expiry and quiet hours at send time, the route, the
    /// rendered message. No I/O.
    func prepare(_ reminder: ClaimedReminder) -> Preparation {
        let config = runtime.config
        let procedure = reminder.procedure
        guard let careProtocol = config.protocols[procedure.protocolID] else {
            return .settled(.dead(reason: "protocol '\(procedure.protocolID)' is no longer configured"))
        }
        guard let step = careProtocol.step(reminder.stepID) else {
            return .settled(.dead(reason: "step '\(reminder.stepID)' is no longer in protocol '\(careProtocol.id)'"))
        }
        let zone = procedure.patientTimeZone
        let now = clock.now()
        if now > reminder.expiresAt {
            return .settled(
                .expired(
                    reason: "window closed at \(Timestamp.format(reminder.expiresAt, in: zone)) before it went out"))
        }
        let allowed = Planner.allowedTime(for: step, at: now, zone: zone, policy: config.policy)
        if allowed.timeIntervalSince(now) >= 1 {
            if allowed > reminder.expiresAt {
                return .settled(
                    .expired(
                        reason: "quiet hours last until \(Timestamp.format(allowed, in: zone)), after its window closes"
                    ))
            }
            return .settled(
                .deferred(until: allowed, reason: "quiet hours: held until \(Timestamp.format(allowed, in: zone))"))
        }

        var optedOut: [String] = []
        var failedBefore = 0
        var chosen: UsableRoute?
        for route in usableRoutes(procedure.patient, step: step) {
            if route.route.optedOut {
                optedOut.append(route.route.channel)
                continue
            }
            if reminder.failedRoutes.contains(FailedRoute.key(route.route)) {
                failedBefore += 1
                continue
            }
            chosen = route
            break
        }
        guard let chosen else {
            if failedBefore > 0 {
                return .settled(.dead(reason: "every usable route failed permanently"))
            }
            return .settled(
                .skipped(
                    reason: optedOut.isEmpty
                        ? "no contact route on a channel this step may use has a configured sender"
                        : "patient opted out of every usable route (\(optedOut.joined(separator: ", ")))"
                ))
        }

        let context = TemplateContext(procedure: procedure, policy: config.policy, sendAt: now)
        let message = OutboundMessage(
            reminderID: reminder.reminderID, procedureID: procedure.id, patientID: procedure.patient.id,
            stepID: step.id, channel: chosen.route.channel, address: chosen.route.address,
            subject: step.subject.render(context), body: step.body.render(context), dueAt: reminder.dueAt,
            attempt: reminder.attempt, clinicName: config.policy.clinicName
        )
        return .send(
            SendJob(
                runtime: runtime, reminder: reminder, step: step, route: chosen, optedOut: optedOut, message: message,
                startedAt: now, startedUptime: clock.uptime(),
                protocolVersion: runtime.protocolVersions[careProtocol.id] ?? ProtocolVersion(careProtocol)))
    }

    /// What a send's result makes of its reminder: the attempt for the log, and where it goes next
    /// (delivered, a retry inside the window, the patient's next route, expired or dead), reckoned
    /// from when the send ended.
    func conclude(_ job: SendJob, result: SendResult, endedAt: Date, endedUptime: Duration) -> Resolution {
        let reminder = job.reminder
        let elapsed = endedUptime - job.startedUptime
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let attempt = Attempt(
            channel: job.route.route.channel, sender: job.route.senderName, destination: job.route.route.address,
            startedAt: job.startedAt, endedAt: job.startedAt.addingTimeInterval(max(0, seconds)), result: result,
            optedOutChannels: job.optedOut,
            message: SentMessage(
                subject: job.message.subject, body: job.message.body, protocolVersion: job.protocolVersion)
        )
        let zone = reminder.procedure.patientTimeZone
        var after = next(after: result, reminder: reminder, step: job.step, zone: zone, at: endedAt)
        if case .dead(let reason) = after, case .failed = result.outcome,
            let fallback = usableRoutes(reminder.procedure.patient, step: job.step).first(where: { candidate in
                !candidate.route.optedOut && candidate.route != job.route.route
                    && !reminder.failedRoutes.contains(FailedRoute.key(candidate.route))
            })
        {
            // A permanent failure belongs to the route, not the patient: their next route is tried.
            after = .nextRoute(
                at: endedAt,
                reason: "permanent failure on \(job.route.route.channel); trying \(fallback.route.channel) next: "
                    + reason)
        }
        return .attempted(attempt, next: after)
    }

    /// The patient's routes this step may use and a configured sender can take, in their order of
    /// preference (opted-out ones included, for the caller to pass over and log).
    func usableRoutes(_ patient: Patient, step: Step) -> [UsableRoute] {
        patient.routes.compactMap { route in
            if !step.channels.isEmpty && !step.channels.contains(route.channel) { return nil }
            guard let senderName = runtime.config.channels[route.channel], let sender = runtime.senders[senderName]
            else { return nil }
            return UsableRoute(route: route, senderName: senderName, sender: sender)
        }
    }

    /// Where a reminder goes after an attempt with this result.
    func next(
        after result: SendResult, reminder: ClaimedReminder, step: Step, zone: TimeZone, at now: Date
    ) -> AfterAttempt {
        let retry = runtime.config.retry
        switch result.outcome {
        case .delivered:
            return .delivered
        case .failed(let reason):
            return .dead(reason: reason)
        case .retry(let after, let reason):
            guard reminder.attempt < retry.maxAttempts else {
                return .dead(reason: "gave up after \(reminder.attempt) tries: \(reason)")
            }
            let delay = retry.delay(afterAttempt: reminder.attempt, retryAfter: after, unit: Double.random(in: 0..<1))
            let earliest = now.addingTimeInterval(delay)
            let at = Planner.allowedTime(for: step, at: earliest, zone: zone, policy: runtime.config.policy)
            if at > reminder.expiresAt, let last = lastUsefulMoment(reminder: reminder, step: step, zone: zone, now: now) {
                // The receiver asks to wait past the window: one more try just before it closes
                // beats none. Asked again then, the window leaves no room and it expires.
                return .retry(at: last)
            }
            guard at <= reminder.expiresAt else {
                return .expired(
                    reason: "next try at \(Timestamp.format(at, in: zone)) would fall after its window closed "
                        + "(\(Timestamp.format(reminder.expiresAt, in: zone))); last error: \(reason)"
                )
            }
            return .retry(at: at)
        }
    }

    /// How long before its window closes a last try is made when the receiver asks to wait past it.
    static let lastTryMargin: TimeInterval = 300

    /// The latest moment inside the reminder's window, outside quiet hours, at least a minute from
    /// now, at which a last try still makes sense; `nil` when there is none.
    func lastUsefulMoment(reminder: ClaimedReminder, step: Step, zone: TimeZone, now: Date) -> Date? {
        let policy = runtime.config.policy
        var candidate = reminder.expiresAt.addingTimeInterval(-Self.lastTryMargin)
        // Step back in 5-minute strides out of any quiet hours; a window is days long at most.
        while candidate.timeIntervalSince(now) >= 60 {
            if Planner.allowedTime(for: step, at: candidate, zone: zone, policy: policy) == candidate {
                return candidate
            }
            candidate.addTimeInterval(-Self.lastTryMargin)
        }
        return nil
    }
}

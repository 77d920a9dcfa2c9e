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

/// Takes one claimed reminder to its resolution: expiry and quiet-hours checks at send time, route
/// choice by the patient's preference and opt-outs, rendering, the send itself, and what comes next
/// (delivered, a retry inside the window, expired or dead).
struct Dispatcher: Sendable {
    let runtime: Runtime
    let clock: any WallClock
    let logger: Logger

    func resolve(_ reminder: ClaimedReminder) async -> Resolution {
        let config = runtime.config
        let procedure = reminder.procedure
        guard let careProtocol = config.protocols[procedure.protocolID] else {
            return .dead(reason: "protocol '\(procedure.protocolID)' is no longer configured")
        }
        guard let step = careProtocol.step(reminder.stepID) else {
            return .dead(reason: "step '\(reminder.stepID)' is no longer in protocol '\(careProtocol.id)'")
        }
        let zone = procedure.patientTimeZone
        let now = clock.now()
        if now > reminder.expiresAt {
            return .expired(reason: "window closed at \(Timestamp.format(reminder.expiresAt, in: zone)) before it went out")
        }
        let allowed = Planner.allowedTime(for: step, at: now, zone: zone, policy: config.policy)
        if allowed.timeIntervalSince(now) >= 1 {
            if allowed > reminder.expiresAt {
                return .expired(
                    reason: "quiet hours last until \(Timestamp.format(allowed, in: zone)), after its window closes"
                )
            }
            return .deferred(until: allowed, reason: "quiet hours: held until \(Timestamp.format(allowed, in: zone))")
        }

        var optedOut: [String] = []
        var chosen: (route: ContactRoute, senderName: String, sender: any Sender)?
        for route in procedure.patient.routes {
            if !step.channels.isEmpty && !step.channels.contains(route.channel) { continue }
            guard let senderName = config.channels[route.channel], let sender = runtime.senders[senderName] else {
                continue
            }
            if route.optedOut {
                optedOut.append(route.channel)
                continue
            }
            chosen = (route, senderName, sender)
            break
        }
        guard let chosen else {
            return .skipped(
                reason: optedOut.isEmpty
                    ? "no contact route on a channel this step may use has a configured sender"
                    : "patient opted out of every usable route (\(optedOut.joined(separator: ", ")))"
            )
        }

        let context = TemplateContext(procedure: procedure, policy: config.policy, sendAt: now)
        let subject = step.subject.render(context)
        let body = step.body.render(context)
        let message = OutboundMessage(
            reminderID: reminder.reminderID, procedureID: procedure.id, patientID: procedure.patient.id,
            stepID: step.id, channel: chosen.route.channel, address: chosen.route.address,
            subject: subject, body: body, dueAt: reminder.dueAt,
            attempt: reminder.attempt, clinicName: config.policy.clinicName
        )
        let started = ContinuousClock.now
        let result = await chosen.sender.send(message)
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let attempt = Attempt(
            channel: chosen.route.channel, sender: chosen.senderName, destination: chosen.route.address,
            startedAt: now, endedAt: now.addingTimeInterval(seconds), result: result, optedOutChannels: optedOut,
            message: SentMessage(
                subject: subject, body: body,
                protocolVersion: runtime.protocolVersions[careProtocol.id] ?? ProtocolVersion(careProtocol))
        )
        return .attempted(attempt, next: next(after: result, reminder: reminder, step: step, zone: zone))
    }

    /// Where a reminder goes after an attempt with this result.
    func next(after result: SendResult, reminder: ClaimedReminder, step: Step, zone: TimeZone) -> AfterAttempt {
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
            let earliest = clock.now().addingTimeInterval(delay)
            let at = Planner.allowedTime(for: step, at: earliest, zone: zone, policy: runtime.config.policy)
            guard at <= reminder.expiresAt else {
                return .expired(
                    reason: "next try at \(Timestamp.format(at, in: zone)) would fall after its window closed "
                        + "(\(Timestamp.format(reminder.expiresAt, in: zone))); last error: \(reason)"
                )
            }
            return .retry(at: at)
        }
    }
}

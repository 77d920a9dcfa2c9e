import AftercareCore
import Foundation

/// The plug-in point for delivery: something that can take a rendered, addressed reminder to a
/// patient (through an SMS gateway webhook, an SMTP relay, an HTTP email API, a folder).
///
/// Implementers guarantee:
/// - `send` never throws and never traps on a receiver's behaviour: every failure comes back as a
///   ``SendResult`` classified as `retry` (passing: timeouts, resets, 408/429/5xx, SMTP 4xx) or
///   `failed` (permanent: other 4xx, 3xx, SMTP 5xx, an address the channel cannot take).
/// - `send` is safe to call from many tasks at once, and does not block the cooperative pool.
/// - The message's `reminderID` is used as the idempotency key on the wire, identical on every
///   retry, so a receiver can drop the duplicate that at-least-once delivery may produce.
/// - No secret and no unmasked address is written to a log.
public protocol Sender: Sendable {
    /// Delivers one message and reports what happened.
    func send(_ message: OutboundMessage) async -> SendResult
    /// Starts one send and returns at once; `completion` is called exactly once with the result,
    /// on whatever thread finished the send. This is how the dispatch pipeline sends: completions
    /// come back without a task per message, and the pipeline collects them in batches.
    /// `ticket.cancel()` abandons the send if it has not finished (its result then comes back as a
    /// `retry`, and the pipeline puts the reminder back as it was).
    func submit(_ message: OutboundMessage, completion: @escaping @Sendable (SendResult) -> Void) -> SendTicket
    /// Lets in-flight sends finish and releases connections. No `send` follows it.
    func shutdown() async
}

extension Sender {
    /// The default: one task per message, around ``send(_:)``. Senders built on the curl engine
    /// hand the transfer to its thread directly instead.
    public func submit(
        _ message: OutboundMessage, completion: @escaping @Sendable (SendResult) -> Void
    ) -> SendTicket {
        let task = Task { completion(await send(message)) }
        return SendTicket { task.cancel() }
    }
}

/// Cancels one submitted send. Cancelling twice, or after the send finished, does nothing.
public struct SendTicket: Sendable {
    private let cancelAction: @Sendable () -> Void

    public init(cancel: @escaping @Sendable () -> Void) {
        cancelAction = cancel
    }

    public func cancel() { cancelAction() }
}

/// A message a sender will not put on the wire (an address its channel cannot take): a permanent failure.
/// A sender that turns a message into one curl transfer (or refuses it before sending) and its
/// response into a result: `send` and `submit` are the same for all of them.
protocol CurlTransferSender: Sender {
    var engine: CurlEngine { get }
    /// The transfer for a message, or why it is refused before anything is sent.
    func transfer(for message: OutboundMessage) -> Result<CurlRequest, Refusal>
    /// What a finished transfer means for the reminder.
    func classify(_ response: CurlResponse) -> SendResult
}

extension CurlTransferSender {
    public func send(_ message: OutboundMessage) async -> SendResult {
        switch transfer(for: message) {
        case .success(let request): return classify(await engine.perform(request))
        case .failure(let refusal): return refusal.result
        }
    }

    public func submit(
        _ message: OutboundMessage, completion: @escaping @Sendable (SendResult) -> Void
    ) -> SendTicket {
        switch transfer(for: message) {
        case .success(let request):
            let transfer = engine.start(request) { completion(classify($0)) }
            return SendTicket { transfer.cancel() }
        case .failure(let refusal):
            completion(refusal.result)
            return SendTicket {}
        }
    }
}

struct Refusal: Error {
    var reason: String
    var result: SendResult { SendResult(.failed(reason: reason)) }
}

import AftercareCore
import CCurl
import Foundation
import ServiceLifecycle
import Synchronization

/// One transfer to hand to the engine: an HTTPS POST or an SMTP submission.
public struct CurlRequest: Sendable {
    public enum Kind: Sendable {
        /// POST `body` with these header lines (`Name: value`).
        case httpPost(headers: [String], body: Data)
        /// Submit `message` (RFC 5322, CRLF line ends) from `from` to `recipients`.
        case smtp(from: String, recipients: [String], message: Data, username: String?, password: String?,
                  requireTLS: Bool)
    }

    public var url: String
    public var kind: Kind
    /// `CURLOPT_PROTOCOLS_STR`: which schemes this transfer may use at all.
    public var protocols: String
    public var transport: TransportSettings

    public init(url: String, kind: Kind, protocols: String, transport: TransportSettings) {
        self.url = url
        self.kind = kind
        self.protocols = protocols
        self.transport = transport
    }
}

/// What came back: libcurl's own result, and the receiver's.
public struct CurlResponse: Sendable {
    /// libcurl's result code (`CURLE_OK` is 0).
    public var code: Int32
    /// libcurl's error text for `code`, empty on success.
    public var error: String
    /// The HTTP status, or the last SMTP reply code; 0 if none arrived.
    public var responseCode: Int
    /// Response headers by lower-cased name (the last of each).
    public var headers: [String: String]
    /// The start of the response body (at most 64 KiB).
    public var body: Data
    /// The receiver's last reply line carrying `responseCode` (SMTP: `550 5.1.1 No such user`), empty if none.
    public var reply: String = ""

    public var succeeded: Bool { code == Int32(CURLE_OK.rawValue) }
}

/// Drives every transfer through one curl multi handle on one dedicated thread.
///
/// Callers `start(_:completion:)` a transfer (or `await perform(_:)` it) from any thread; the
/// request is queued, the engine thread is woken with `curl_multi_wakeup`, and the completion is
/// called on the engine thread when the transfer ends. Easy
/// handles live and die on the engine thread; the multi handle keeps connections open between
/// transfers (keep-alive).
///
/// The engine bounds transfers in all and per host itself: a transfer waits in the engine, outside
/// libcurl, until a slot is free, and only then is handed to the multi handle. libcurl's own
/// connection limits would park it inside the multi handle instead, where its time limits already
/// run, so a busy or hanging receiver would make the transfers queued behind it fail "after 0 ms".
/// A try's time limits start when it is actually sent.
///
/// As a `Service` the engine accepts work from `init` on and stops only when the group's graceful
/// shutdown reaches it: list it before the services that send through it, so that they drain
/// their in-flight sends first (a group shuts its services down in reverse order).
public final class CurlEngine: Service, Sendable {
    private struct Shared {
        var queue: [Transfer] = []
        var cancelled: [Transfer] = []
        var stopping = false
        /// The engine thread has left its loop: nothing will read `queue` or `cancelled` again.
        var exited = false
        /// Callers of `shutdown()` waiting for the thread to exit.
        var shutdownWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let shared = Mutex(Shared())
    // The multi handle is touched only by the engine thread, except for curl_multi_wakeup, which
    // libcurl documents as safe from any thread.
    private nonisolated(unsafe) let multi: UnsafeMutableRawPointer
    private let maxConnections: Int
    private let maxPerHost: Int

    static let globalInit: Bool = {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    }()

    /// - Parameters:
    ///   - maxConnections: transfers under way at once, in all (each holds one connection).
    ///   - maxPerHost: transfers under way at once to one scheme, host and port.
    public init(maxConnections: Int = 64, maxPerHost: Int = 16) {
        _ = Self.globalInit
        self.maxConnections = max(1, maxConnections)
        self.maxPerHost = max(1, maxPerHost)
        multi = curl_multi_init()!
        // Idle connections kept for reuse.
        aftercare_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, self.maxConnections)
        let thread = Thread { [self] in run() }
        thread.name = "aftercare-curl"
        thread.start()
    }

    /// Starts one transfer and returns at once. `completion` is called exactly once with the
    /// response: on the engine thread when the transfer ends, or before `start` returns if the
    /// engine no longer accepts work. Cancelling the returned handle abandons the transfer (it
    /// comes back as `CURLE_ABORTED_BY_CALLBACK`); cancelling after it ended does nothing.
    @discardableResult
    public func start(
        _ request: CurlRequest, completion: @escaping @Sendable (CurlResponse) -> Void
    ) -> CurlTransferHandle {
        let transfer = Transfer(request: request, completion: completion)
        let accepted = shared.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.queue.append(transfer)
            // A non-empty queue has a wake-up on its way already. Woken under the lock, so never
            // after the engine thread has exited and freed the multi handle.
            if state.queue.count == 1 { curl_multi_wakeup(multi) }
            return true
        }
        if !accepted { transfer.abandon("the delivery engine is shutting down") }
        return CurlTransferHandle(engine: self, transfer: transfer)
    }

    /// Performs one transfer. Never throws: every failure is in the response. If the calling task
    /// is cancelled the transfer is abandoned and comes back as `CURLE_ABORTED_BY_CALLBACK`.
    public func perform(_ request: CurlRequest) async -> CurlResponse {
        let holder = Mutex<CurlTransferHandle?>(nil)
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let handle = start(request) { continuation.resume(returning: $0) }
                holder.withLock { $0 = handle }
                // A cancellation that came before the handle was stored found nothing to cancel.
                if Task.isCancelled { handle.cancel() }
            }
        } onCancel: {
            holder.withLock { $0 }?.cancel()
        }
    }

    /// Asks the engine thread to abandon `transfer` (and free its slot) if it has not ended.
    fileprivate func cancel(_ transfer: Transfer) {
        guard !transfer.isFinished else { return }
        let running = shared.withLock { state -> Bool in
            guard !state.exited else { return false }
            state.cancelled.append(transfer)
            curl_multi_wakeup(multi)
            return true
        }
        // Not expected (every transfer ends before the thread exits), but never leave a caller waiting.
        if !running { transfer.abandon("cancelled") }
    }

    /// Waits for the group's graceful shutdown (or cancellation), then stops as ``shutdown()`` does.
    public func run() async throws {
        // Cancelled rather than shut down gracefully: still let what is under way finish (every
        // transfer has its time limits), so that no caller is left waiting.
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Lets queued and running transfers finish, then stops the thread; from here on every new
    /// transfer is refused at once (`CURLE_ABORTED_BY_CALLBACK`). Calling it again waits likewise.
    public func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let exited = shared.withLock { state -> Bool in
                guard !state.exited else { return true }
                state.stopping = true
                state.shutdownWaiters.append(continuation)
                curl_multi_wakeup(multi)
                return false
            }
            if exited { continuation.resume() }
        }
    }

    private func run() {
        var active: [UnsafeMutableRawPointer: Transfer] = [:]
        var idleHandles: [UnsafeMutableRawPointer] = []
        var slots = TransferSlots<Transfer>(total: maxConnections, perHost: maxPerHost)
        // Host keys by URL: senders post to a handful of URLs, and parsing one per transfer costs.
        var hostKeys: [String: String] = [:]
        /// Hands a transfer to libcurl: from here on its time limits run.
        func start(_ transfer: Transfer) {
            let handle = idleHandles.popLast() ?? curl_easy_init()!
            transfer.configure(handle)
            active[handle] = transfer
            curl_multi_add_handle(multi, handle)
        }
        while true {
            let (incoming, cancelled, stopping) = shared.withLock { state -> ([Transfer], [Transfer], Bool) in
                defer {
                    state.queue.removeAll(keepingCapacity: true)
                    state.cancelled.removeAll()
                }
                return (state.queue, state.cancelled, state.stopping)
            }
            for transfer in cancelled {
                if let handle = active.first(where: { $0.value === transfer })?.key {
                    curl_multi_remove_handle(multi, handle)
                    active[handle] = nil
                    curl_easy_reset(handle)
                    idleHandles.append(handle)
                    slots.release(transfer.hostKey)
                }
                // A transfer still waiting for a slot is skipped when its turn comes.
                transfer.abandon("cancelled")
            }
            for transfer in incoming where !transfer.isFinished {
                let url = transfer.request.url
                if let key = hostKeys[url] {
                    transfer.hostKey = key
                } else {
                    if hostKeys.count >= 256 { hostKeys.removeAll() }
                    let key = Transfer.hostKey(url)
                    hostKeys[url] = key
                    transfer.hostKey = key
                }
                slots.enqueue(transfer)
            }
            while let transfer = slots.next() { start(transfer) }
            if stopping && active.isEmpty && slots.waiting == 0 { break }
            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            var pending: Int32 = 0
            while let message = curl_multi_info_read(multi, &pending) {
                guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle else { continue }
                let key = handle
                let code = message.pointee.data.result
                curl_multi_remove_handle(multi, handle)
                if let transfer = active.removeValue(forKey: key) {
                    slots.release(transfer.hostKey)
                    transfer.complete(handle: key, code: code)
                }
                curl_easy_reset(handle)
                if idleHandles.count < 256 { idleHandles.append(key) } else { curl_easy_cleanup(handle) }
            }
            // Slots freed by finished transfers go to waiting ones at once.
            var started = false
            while let transfer = slots.next() {
                start(transfer)
                started = true
            }
            if started { continue }
            if running > 0 || !active.isEmpty {
                curl_multi_poll(multi, nil, 0, 1000, nil)
            } else if !stopping {
                // Nothing in flight: sleep until a request or shutdown wakes us.
                curl_multi_poll(multi, nil, 0, 60_000, nil)
            }
            // Stopping with nothing left: the check at the top ends the loop (the last transfer
            // may have ended after the wake-up that said stop, which no poll would hear again).
        }
        for handle in idleHandles { curl_easy_cleanup(handle) }
        // Marked exited, under the lock, before the multi handle goes: no wake-up reaches it after.
        let (late, waiters) = shared.withLock { state in
            state.exited = true
            defer { state.cancelled = []; state.shutdownWaiters = [] }
            return (state.cancelled, state.shutdownWaiters)
        }
        curl_multi_cleanup(multi)
        for transfer in late { transfer.abandon("cancelled") }
        for waiter in waiters { waiter.resume() }
    }
}

/// Abandons one started transfer: see ``CurlEngine/start(_:completion:)``.
public struct CurlTransferHandle: Sendable {
    private let engine: CurlEngine
    // Weak: a finished transfer (and its buffers) need not live as long as the handle.
    private weak let transfer: Transfer?

    fileprivate init(engine: CurlEngine, transfer: Transfer) {
        self.engine = engine
        self.transfer = transfer
    }

    /// Abandons the transfer if it has not ended; its completion then gets `CURLE_ABORTED_BY_CALLBACK`.
    public func cancel() {
        if let transfer { engine.cancel(transfer) }
    }
}

/// The engine's transfer slots: how many transfers are under way in all and per host, and the
/// transfers waiting for a slot, first come first served within each host. Engine thread only.
struct TransferSlots<Item: SlotHolder> {
    let total: Int
    let perHost: Int
    private var running = 0
    private var runningByHost: [String: Int] = [:]
    /// Waiting transfers by host, each queue read from `head` on.
    private var queues: [String: (items: [Item], head: Int)] = [:]
    /// Hosts with waiting transfers, in the order they first had to wait.
    private var hosts: [String] = []
    private(set) var waiting = 0

    init(total: Int, perHost: Int) {
        self.total = total
        self.perHost = perHost
    }

    mutating func enqueue(_ transfer: Item) {
        let host = transfer.hostKey
        if queues[host] == nil {
            queues[host] = ([], 0)
            hosts.append(host)
        }
        queues[host]!.items.append(transfer)
        waiting += 1
    }

    /// The next waiting transfer that may start now, its slot taken; `nil` if none may.
    mutating func next() -> Item? {
        guard running < total, waiting > 0 else { return nil }
        for (index, host) in hosts.enumerated() where runningByHost[host, default: 0] < perHost {
            var queue = queues[host]!
            while queue.head < queue.items.count {
                let transfer = queue.items[queue.head]
                queue.head += 1
                waiting -= 1
                if transfer.isFinished { continue }  // abandoned while it waited
                if queue.head == queue.items.count {
                    queues[host] = nil
                    hosts.remove(at: index)
                } else {
                    queues[host] = queue
                }
                running += 1
                runningByHost[host, default: 0] += 1
                return transfer
            }
            queues[host] = nil
            hosts.remove(at: index)
            return next()
        }
        return nil
    }

    mutating func release(_ host: String) {
        running -= 1
        let left = runningByHost[host, default: 1] - 1
        runningByHost[host] = left > 0 ? left : nil
    }
}

/// What waits for a slot: a transfer, keyed by its host.
protocol SlotHolder: AnyObject {
    /// Scheme, host and port: the unit of the per-host limit.
    var hostKey: String { get }
    /// Abandoned already: skipped when its turn comes.
    var isFinished: Bool { get }
}

/// One transfer's state on the engine thread: its options' storage, the response as it arrives.
final class Transfer: SlotHolder, @unchecked Sendable {
    let request: CurlRequest
    /// Scheme, host and port: the unit of the per-host limit. Set by the engine thread before the
    /// transfer waits for a slot.
    var hostKey = ""
    /// Called once with the response, then dropped (with whatever it captured).
    private let completion: Mutex<(@Sendable (CurlResponse) -> Void)?>
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var recipientList: UnsafeMutablePointer<curl_slist>?
    private var strings: [UnsafeMutablePointer<CChar>] = []
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
    private var upload: Data = Data()
    private var uploadOffset = 0
    var body = Data()
    var headers: [String: String] = [:]
    /// The last few SMTP reply lines (`250-…`, `550 …`), newest last.
    var replies: [String] = []
    /// Set once the transfer has ended (completed or abandoned).
    var isFinished: Bool { completion.withLock { $0 == nil } }

    /// Calls the completion exactly once; later calls do nothing.
    private func finish(_ response: CurlResponse) {
        let callback = completion.withLock { callback in
            defer { callback = nil }
            return callback
        }
        callback?(response)
    }

    /// Completes the transfer without a result from the wire.
    func abandon(_ reason: String) {
        finish(CurlResponse(
            code: Int32(CURLE_ABORTED_BY_CALLBACK.rawValue), error: reason, responseCode: 0, headers: [:], body: Data()))
    }

    init(request: CurlRequest, completion: @escaping @Sendable (CurlResponse) -> Void) {
        self.request = request
        self.completion = Mutex(completion)
        errorBuffer.initialize(to: 0)
    }

    /// `scheme://host:port` of a URL, lower-cased; the whole URL if it does not parse.
    static func hostKey(_ url: String) -> String {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
            let host = components.host?.lowercased()
        else { return url }
        return "\(scheme)://\(host):\(components.port.map(String.init) ?? "-")"
    }

    deinit {
        if let headerList { curl_slist_free_all(headerList) }
        if let recipientList { curl_slist_free_all(recipientList) }
        for string in strings { free(string) }
        errorBuffer.deallocate()
    }

    /// A C string that lives as long as the transfer (libcurl copies most, not all, strings).
    private func keep(_ text: String) -> UnsafeMutablePointer<CChar> {
        let pointer = strdup(text)!
        strings.append(pointer)
        return pointer
    }

    func configure(_ handle: UnsafeMutableRawPointer) {
        let me = Unmanaged.passUnretained(self).toOpaque()
        let transport = request.transport
        aftercare_easy_setopt_string(handle, CURLOPT_URL, request.url)
        aftercare_easy_setopt_string(handle, CURLOPT_PROTOCOLS_STR, request.protocols)
        aftercare_easy_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        aftercare_easy_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0)
        aftercare_easy_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
        aftercare_easy_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
        if let caFile = transport.caFile { aftercare_easy_setopt_string(handle, CURLOPT_CAINFO, caFile) }
        aftercare_easy_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, Int(transport.connectTimeout * 1000))
        aftercare_easy_setopt_long(handle, CURLOPT_TIMEOUT_MS, Int(transport.totalTimeout * 1000))
        aftercare_easy_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, transport.lowSpeedBytes)
        aftercare_easy_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, transport.lowSpeedSeconds)
        // Replies are a status line, a few headers and a short body: a 4 KiB receive buffer (not
        // 16) per connection keeps hundreds of them small.
        aftercare_easy_setopt_long(handle, CURLOPT_BUFFERSIZE, 4096)
        aftercare_easy_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer)
        aftercare_easy_setopt_pointer(handle, CURLOPT_PRIVATE, me)
        aftercare_easy_setopt_callback(handle, CURLOPT_WRITEFUNCTION, transferWrite)
        aftercare_easy_setopt_pointer(handle, CURLOPT_WRITEDATA, me)
        aftercare_easy_setopt_callback(handle, CURLOPT_HEADERFUNCTION, transferHeader)
        aftercare_easy_setopt_pointer(handle, CURLOPT_HEADERDATA, me)
        switch request.kind {
        case .httpPost(let headerLines, let payload):
            for line in headerLines + ["Expect:"] { headerList = curl_slist_append(headerList, line) }
            aftercare_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, headerList)
            aftercare_easy_setopt_long(handle, CURLOPT_POST, 1)
            aftercare_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(payload.count))
            // Copied into libcurl, which sends it with the request head: no read callback, and no
            // 64 KiB upload buffer per connection (a read callback makes libcurl allocate one).
            if payload.isEmpty {
                aftercare_easy_setopt_string(handle, CURLOPT_POSTFIELDS, keep(""))
            } else {
                payload.withUnsafeBytes { bytes in
                    aftercare_easy_setopt_pointer(
                        handle, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
                }
            }
        case .smtp(let from, let recipients, let message, let username, let password, let requireTLS):
            upload = message
            aftercare_easy_setopt_string(handle, CURLOPT_MAIL_FROM, keep("<\(from)>"))
            for recipient in recipients { recipientList = curl_slist_append(recipientList, "<\(recipient)>") }
            aftercare_easy_setopt_slist(handle, CURLOPT_MAIL_RCPT, recipientList)
            aftercare_easy_setopt_long(handle, CURLOPT_UPLOAD, 1)
            aftercare_easy_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(message.count))
            aftercare_easy_setopt_callback(handle, CURLOPT_READFUNCTION, transferRead)
            aftercare_easy_setopt_pointer(handle, CURLOPT_READDATA, me)
            aftercare_easy_setopt_long(handle, CURLOPT_USE_SSL, Int(requireTLS ? CURLUSESSL_ALL.rawValue : CURLUSESSL_NONE.rawValue))
            if let username { aftercare_easy_setopt_string(handle, CURLOPT_USERNAME, keep(username)) }
            if let password { aftercare_easy_setopt_string(handle, CURLOPT_PASSWORD, keep(password)) }
        }
    }

    func read(into buffer: UnsafeMutablePointer<CChar>, capacity: Int) -> Int {
        let count = min(capacity, upload.count - uploadOffset)
        guard count > 0 else { return 0 }
        upload.withUnsafeBytes { bytes in
            UnsafeMutableRawPointer(buffer).copyMemory(from: bytes.baseAddress! + uploadOffset, byteCount: count)
        }
        uploadOffset += count
        return count
    }

    func complete(handle raw: UnsafeMutableRawPointer, code: CURLcode) {
        var status = 0
        aftercare_easy_getinfo_long(raw, CURLINFO_RESPONSE_CODE, &status)
        let text = errorBuffer.pointee != 0 ? String(cString: errorBuffer) : String(cString: curl_easy_strerror(code))
        finish(CurlResponse(
            code: Int32(code.rawValue), error: code == CURLE_OK ? "" : text, responseCode: status, headers: headers,
            body: body, reply: replies.last { $0.hasPrefix(String(status)) } ?? ""))
    }
}

private let transferWrite: aftercare_curl_data_callback = { buffer, size, count, user in
    let transfer = Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue()
    let length = size * count
    if transfer.body.count < 64 * 1024, let buffer {
        transfer.body.append(UnsafeRawPointer(buffer).assumingMemoryBound(to: UInt8.self), count: min(length, 64 * 1024))
    }
    return length
}

private let transferHeader: aftercare_curl_data_callback = { buffer, size, count, user in
    let transfer = Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue()
    let length = size * count
    guard let buffer else { return length }
    transfer.header(UnsafeRawBufferPointer(start: buffer, count: length))
    return length
}

extension Transfer {
    /// One header line (or SMTP reply line) as libcurl hands it over, CRLF included. Read as bytes:
    /// Strings are made only for what is kept.
    func header(_ line: UnsafeRawBufferPointer) {
        func isDigit(_ byte: UInt8) -> Bool { (0x30...0x39).contains(byte) }
        // ASCII White_Space; a value that starts or ends with another byte is trimmed as Characters.
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || (0x09...0x0D).contains(byte) }
        let count = line.count
        if count >= 4, isDigit(line[0]), isDigit(line[1]), isDigit(line[2]), line[3] == 0x20 || line[3] == 0x2D {
            // libcurl passes SMTP replies to the header callback: keep the latest, to quote the relay's own words.
            replies.append(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
            if replies.count > 8 { replies.removeFirst() }
        } else if line.starts(with: "HTTP/".utf8) {
            headers = [:]  // a new response (after 100 Continue, say): keep only the last one's headers
        } else if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: line[..<colon]), as: UTF8.self).lowercased()
            // Header values end in CRLF and may be padded with spaces or tabs (RFC 9110, 5.5).
            var start = colon + 1
            var end = count
            while start < end, isSpace(line[start]) { start += 1 }
            while end > start, isSpace(line[end - 1]) { end -= 1 }
            if start < end, line[start] >= 0x80 || line[end - 1] >= 0x80 {
                var value = String(decoding: UnsafeRawBufferPointer(rebasing: line[start..<end]), as: UTF8.self)[...]
                while value.first?.isWhitespace == true { value.removeFirst() }
                while value.last?.isWhitespace == true { value.removeLast() }
                headers[name] = String(value)
            } else {
                headers[name] = String(decoding: UnsafeRawBufferPointer(rebasing: line[start..<end]), as: UTF8.self)
            }
        }
    }
}

private let transferRead: aftercare_curl_data_callback = { buffer, size, count, user in
    let transfer = Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue()
    return transfer.read(into: buffer!, capacity: size * count)
}

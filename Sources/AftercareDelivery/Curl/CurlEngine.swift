import AftercareCore
import CCurl
import Foundation
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
/// Callers `await perform(_:)` from any task; the request is queued, the engine thread is woken
/// with `curl_multi_wakeup`, and the continuation is resumed when the transfer completes. Easy
/// handles live and die on the engine thread; the multi handle keeps connections open between
/// transfers (keep-alive).
///
/// The engine bounds transfers in all and per host itself: a transfer waits in the engine, outside
/// libcurl, until a slot is free, and only then is handed to the multi handle. libcurl's own
/// connection limits would park it inside the multi handle instead, where its time limits already
/// run, so a busy or hanging receiver would make the transfers queued behind it fail "after 0 ms".
/// A try's time limits start when it is actually sent.
public final class CurlEngine: Sendable {
    private struct Shared {
        var queue: [Transfer] = []
        var cancelled: [Transfer] = []
        var stopping = false
    }

    private let shared = Mutex(Shared())
    // The multi handle is touched only by the engine thread, except for curl_multi_wakeup, which
    // libcurl documents as safe from any thread.
    private nonisolated(unsafe) let multi: UnsafeMutableRawPointer
    private let maxConnections: Int
    private let maxPerHost: Int
    private let finished = Mutex<CheckedContinuation<Void, Never>?>(nil)
    private let done = Mutex(false)

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

    /// Performs one transfer. Never throws: every failure is in the response. If the calling task
    /// is cancelled the transfer is abandoned and comes back as `CURLE_ABORTED_BY_CALLBACK`.
    public func perform(_ request: CurlRequest) async -> CurlResponse {
        let holder = Mutex<Transfer?>(nil)
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let transfer = Transfer(request: request, continuation: continuation)
                holder.withLock { $0 = transfer }
                // (accepted, the queue was empty): a non-empty queue has a wake-up on its way already.
                let (accepted, wake) = shared.withLock { state -> (Bool, Bool) in
                    guard !state.stopping else { return (false, false) }
                    state.queue.append(transfer)
                    return (true, state.queue.count == 1)
                }
                if !accepted {
                    transfer.abandon("the delivery engine is shutting down")
                } else if wake {
                    curl_multi_wakeup(multi)
                }
            }
        } onCancel: {
            if let transfer = holder.withLock({ $0 }) {
                shared.withLock { $0.cancelled.append(transfer) }
                curl_multi_wakeup(multi)
            }
        }
    }

    /// Lets queued and running transfers finish, then stops the thread. No `perform` after this.
    public func shutdown() async {
        shared.withLock { $0.stopping = true }
        curl_multi_wakeup(multi)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let alreadyDone = done.withLock { isDone -> Bool in
                if !isDone { finished.withLock { $0 = continuation } }
                return isDone
            }
            if alreadyDone { continuation.resume() }
        }
    }

    private func run() {
        var active: [UnsafeMutableRawPointer: Transfer] = [:]
        var idleHandles: [UnsafeMutableRawPointer] = []
        var slots = TransferSlots<Transfer>(total: maxConnections, perHost: maxPerHost)
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
                transfer.abandon("cancelled: shutting down")
            }
            for transfer in incoming where !transfer.isFinished { slots.enqueue(transfer) }
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
            } else {
                // Nothing in flight: sleep until a request or shutdown wakes us.
                curl_multi_poll(multi, nil, 0, 60_000, nil)
            }
        }
        for handle in idleHandles { curl_easy_cleanup(handle) }
        curl_multi_cleanup(multi)
        let waiter = done.withLock { isDone -> CheckedContinuation<Void, Never>? in
            isDone = true
            return finished.withLock { $0 }
        }
        waiter?.resume()
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
    /// Scheme, host and port: the unit of the per-host limit.
    let hostKey: String
    private let continuation: CheckedContinuation<CurlResponse, Never>
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
    /// Set once the continuation has been resumed; guarded by the engine thread (or by being the
    /// only owner before the transfer is queued).
    private let finished = Mutex(false)
    var isFinished: Bool { finished.withLock { $0 } }

    /// Resumes the caller exactly once; later calls do nothing.
    private func finish(_ response: CurlResponse) {
        let first = finished.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { continuation.resume(returning: response) }
    }

    /// Completes the transfer without a result from the wire.
    func abandon(_ reason: String) {
        finish(CurlResponse(
            code: Int32(CURLE_ABORTED_BY_CALLBACK.rawValue), error: reason, responseCode: 0, headers: [:], body: Data()))
    }

    init(request: CurlRequest, continuation: CheckedContinuation<CurlResponse, Never>) {
        self.request = request
        hostKey = Self.hostKey(request.url)
        self.continuation = continuation
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
        aftercare_easy_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer)
        aftercare_easy_setopt_pointer(handle, CURLOPT_PRIVATE, me)
        aftercare_easy_setopt_callback(handle, CURLOPT_WRITEFUNCTION, transferWrite)
        aftercare_easy_setopt_pointer(handle, CURLOPT_WRITEDATA, me)
        aftercare_easy_setopt_callback(handle, CURLOPT_HEADERFUNCTION, transferHeader)
        aftercare_easy_setopt_pointer(handle, CURLOPT_HEADERDATA, me)
        switch request.kind {
        case .httpPost(let headerLines, let payload):
            upload = payload
            for line in headerLines + ["Expect:"] { headerList = curl_slist_append(headerList, line) }
            aftercare_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, headerList)
            aftercare_easy_setopt_long(handle, CURLOPT_POST, 1)
            aftercare_easy_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(payload.count))
            aftercare_easy_setopt_callback(handle, CURLOPT_READFUNCTION, transferRead)
            aftercare_easy_setopt_pointer(handle, CURLOPT_READDATA, me)
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
    let line = String(decoding: UnsafeRawBufferPointer(start: buffer, count: length), as: UTF8.self)
    let code = line.utf8.prefix(4)
    let isReply = code.count == 4 && code.prefix(3).allSatisfy { (0x30...0x39).contains($0) }
        && (code.last == 0x20 || code.last == 0x2D)
    if isReply {
        // libcurl passes SMTP replies to the header callback: keep the latest, to quote the relay's own words.
        transfer.replies.append(line.trimmingCharacters(in: .whitespacesAndNewlines))
        if transfer.replies.count > 8 { transfer.replies.removeFirst() }
    } else if line.hasPrefix("HTTP/") {
        transfer.headers = [:]  // a new response (after 100 Continue, say): keep only the last one's headers
    } else if let colon = line.firstIndex(of: ":") {
        let name = line[..<colon].lowercased()
        // Header values end in CRLF and may be padded with spaces or tabs (RFC 9110, 5.5).
        var value = line[line.index(after: colon)...]
        while value.first?.isWhitespace == true { value.removeFirst() }
        while value.last?.isWhitespace == true { value.removeLast() }
        transfer.headers[name] = String(value)
    }
    return length
}

private let transferRead: aftercare_curl_data_callback = { buffer, size, count, user in
    let transfer = Unmanaged<Transfer>.fromOpaque(user!).takeUnretainedValue()
    return transfer.read(into: buffer!, capacity: size * count)
}

import AftercareCore
import Crypto
import Foundation
import GRDB

/// What a delivery-log row records. Attempts and state changes share one shape.
public enum LogEvent: String, Sendable, CaseIterable {
    /// A procedure came in and was planned.
    case ingested
    /// A delivery attempt (its `outcome` says how it went).
    case attempt
    /// A reminder's window closed before it could go out.
    case expired
    /// A reminder was held back because the patient's quiet hours had begun.
    case deferred
    /// A reminder went dead after its last try or a permanent failure.
    case dead
    /// A reminder was cancelled with its procedure.
    case cancelled
    /// A reminder was re-planned after its procedure's time or zone was corrected.
    case replanned
    /// A dead reminder was re-queued by staff.
    case replayed
    /// A route was passed over because the patient opted out of it.
    case optedOut = "opted_out"
    /// No usable route remained for a reminder.
    case skipped
    /// A crashed or stalled dispatcher's claim lapsed and the reminder went back to the queue.
    case recovered
    /// An intake file was refused.
    case rejected
    /// The daemon re-read its configuration.
    case configReloaded = "config_reloaded"
    /// Older rows were pruned; this row carries the chain on.
    case checkpoint
    /// An appointment was booked: a procedure planned ahead, with no reminders yet.
    case booked
    /// A booked appointment was moved to another time.
    case moved
    /// A booked appointment took place; its reminders were planned from the actual time.
    case performed
    /// A booked appointment was never confirmed and was closed; it sends no aftercare.
    case notPerformed = "not_performed"
    /// A patient's contact details (routes, first name, opt-outs) were corrected.
    case updated
}

/// One delivery-log row to append.
public struct LogEntry: Sendable, Hashable {
    public var at: Date
    public var event: LogEvent
    public var procedureID: String?
    public var patientID: String?
    public var stepID: String?
    public var channel: String?
    public var sender: String?
    /// The full destination; masked when shown unless staff ask otherwise.
    public var destination: String?
    public var attempt: Int?
    public var startedAt: Date?
    public var endedAt: Date?
    /// `delivered`, `retry`, `failed` for attempts.
    public var outcome: String?
    /// HTTP status or SMTP reply code.
    public var responseCode: Int?
    public var error: String?
    public var latencyMilliseconds: Double?
    /// Who asked for the change (a Unix user for staff requests), when not the daemon itself.
    public var actor: String?
    public var detail: String?
    /// For attempts: the content address of the protocol version the message was rendered from.
    public var protocolVersion: String?
    /// For attempts: the SHA-256 of the exact subject and body sent (``SentMessage/hash``).
    public var messageHash: String?

    public init(
        at: Date, event: LogEvent, procedureID: String? = nil, patientID: String? = nil, stepID: String? = nil,
        channel: String? = nil, sender: String? = nil, destination: String? = nil, attempt: Int? = nil,
        startedAt: Date? = nil, endedAt: Date? = nil, outcome: String? = nil, responseCode: Int? = nil,
        error: String? = nil, latencyMilliseconds: Double? = nil, actor: String? = nil, detail: String? = nil,
        protocolVersion: String? = nil, messageHash: String? = nil
    ) {
        self.at = at
        self.event = event
        self.procedureID = procedureID
        self.patientID = patientID
        self.stepID = stepID
        self.channel = channel
        self.sender = sender
        self.destination = destination
        self.attempt = attempt
        self.startedAt = startedAt
        self.endedAt = endedAt
        self.outcome = outcome
        self.responseCode = responseCode
        self.error = error
        self.latencyMilliseconds = latencyMilliseconds
        self.actor = actor
        self.detail = detail
        self.protocolVersion = protocolVersion
        self.messageHash = messageHash
    }
}

/// The hash chain over the delivery log: each row's hash is
/// `SHA-256(previous row's hash ‖ canonical encoding of the row)`, hex-encoded; the first row's
/// previous hash is 32 zero bytes.
public enum LogChain {
    /// The previous hash for the very first row.
    public static let genesis = String(repeating: "0", count: 64)

    /// The canonical encoding of a row: every field in a fixed order, each as its decimal UTF-8 byte
    /// length, `:`, and its bytes, or `-` when null; times as integer microseconds since 1970. The
    /// protocol version and message hash (added in schema 2) follow only when one of them is set, so
    /// rows written before they existed encode, and verify, exactly as they always did.
    public static func canonical(seq: Int64, _ entry: LogEntry) -> Data {
        var out = Data()
        out.reserveCapacity(256)
        func put(_ text: String?) {
            guard let text else {
                out.append(UInt8(ascii: "-"))
                return
            }
            let bytes = Array(text.utf8)
            out.append(contentsOf: Array(String(bytes.count).utf8))
            out.append(UInt8(ascii: ":"))
            out.append(contentsOf: bytes)
        }
        func micros(_ date: Date?) -> String? { date.map { String(Int64(($0.timeIntervalSince1970 * 1e6).rounded())) } }
        put(String(seq))
        put(micros(entry.at))
        put(entry.event.rawValue)
        put(entry.procedureID)
        put(entry.patientID)
        put(entry.stepID)
        put(entry.channel)
        put(entry.sender)
        put(entry.destination)
        put(entry.attempt.map(String.init))
        put(micros(entry.startedAt))
        put(micros(entry.endedAt))
        put(entry.outcome)
        put(entry.responseCode.map(String.init))
        put(entry.error)
        put(entry.latencyMilliseconds.map { String(Int64(($0 * 1000).rounded())) })
        put(entry.actor)
        put(entry.detail)
        if entry.protocolVersion != nil || entry.messageHash != nil {
            put(entry.protocolVersion)
            put(entry.messageHash)
        }
        return out
    }

    /// The hash of a row given the previous row's hash.
    public static func hash(previous: String, seq: Int64, _ entry: LogEntry) -> String {
        var encoder = LogRowEncoder()
        let previous = [UInt8](Data(hexString: previous) ?? Data(count: 32))
        return Hex.encode(encoder.hash(previous: previous, seq: seq, entry))
    }
}

/// Decimal digits and length prefixes written straight into a byte buffer.
enum CanonicalBytes {
    /// `value` in decimal, as `String(value)` spells it.
    static func appendDecimal(_ value: UInt64, to out: inout [UInt8]) {
        appendDecimal(magnitude: value, negative: false, to: &out, prefixed: false)
    }

    /// `<decimal length>:<decimal digits>` for `value`, as `put(String(value))` writes it.
    static func appendPrefixedDecimal(_ value: Int64, to out: inout [UInt8]) {
        appendDecimal(magnitude: value.magnitude, negative: value < 0, to: &out, prefixed: true)
    }

    private static func appendDecimal(magnitude: UInt64, negative: Bool, to out: inout [UInt8], prefixed: Bool) {
        var count = 1
        var rest = magnitude / 10
        while rest > 0 {
            count += 1
            rest /= 10
        }
        let width = count + (negative ? 1 : 0)
        if prefixed {
            appendLength(width, to: &out)
        }
        if negative { out.append(UInt8(ascii: "-")) }
        let start = out.count
        out.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: count))
        var value = magnitude
        var index = start + count - 1
        while value > 0 {
            out[index] = UInt8(ascii: "0") + UInt8(value % 10)
            value /= 10
            index -= 1
        }
    }

    /// `<decimal length>:`.
    static func appendLength(_ length: Int, to out: inout [UInt8]) {
        if length < 10 {
            out.append(UInt8(ascii: "0") + UInt8(length))
        } else {
            appendDecimal(UInt64(length), to: &out)
        }
        out.append(UInt8(ascii: ":"))
    }
}

/// ``LogChain/canonical(seq:_:)`` and ``LogChain/hash(previous:seq:_:)`` built in one reused byte
/// buffer: the same bytes, without a `String` or `Data` per field. The appender hashes every row
/// through it; the store's tests compare it with `canonical` on many random rows.
struct LogRowEncoder {
    private(set) var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(512) }

    /// Encodes the row into `bytes`, replacing what was there.
    mutating func encode(seq: Int64, _ entry: LogEntry) {
        bytes.removeAll(keepingCapacity: true)
        CanonicalBytes.appendPrefixedDecimal(seq, to: &bytes)
        putTime(entry.at)
        put(entry.event.rawValue)
        put(entry.procedureID)
        put(entry.patientID)
        put(entry.stepID)
        put(entry.channel)
        put(entry.sender)
        put(entry.destination)
        put(entry.attempt.map(Int64.init))
        putTime(entry.startedAt)
        putTime(entry.endedAt)
        put(entry.outcome)
        put(entry.responseCode.map(Int64.init))
        put(entry.error)
        put(entry.latencyMilliseconds.map { Int64(($0 * 1000).rounded()) })
        put(entry.actor)
        put(entry.detail)
        if entry.protocolVersion != nil || entry.messageHash != nil {
            put(entry.protocolVersion)
            put(entry.messageHash)
        }
    }

    /// SHA-256 of `previous` (the previous row's hash as bytes) and the row's encoding.
    mutating func hash(previous: [UInt8], seq: Int64, _ entry: LogEntry) -> SHA256.Digest {
        encode(seq: seq, entry)
        var hasher = SHA256()
        previous.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        bytes.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        return hasher.finalize()
    }

    private mutating func put(_ text: String?) {
        guard var text else {
            bytes.append(UInt8(ascii: "-"))
            return
        }
        text.withUTF8 { utf8 in
            CanonicalBytes.appendLength(utf8.count, to: &bytes)
            bytes.append(contentsOf: utf8)
        }
    }

    private mutating func put(_ number: Int64?) {
        guard let number else {
            bytes.append(UInt8(ascii: "-"))
            return
        }
        CanonicalBytes.appendPrefixedDecimal(number, to: &bytes)
    }

    private mutating func putTime(_ date: Date?) {
        put(date.map { Int64(($0.timeIntervalSince1970 * 1e6).rounded()) })
    }
}

/// Appends rows to the chain inside the caller's transaction. Rows given together go in with
/// multi-row `INSERT`s (fewer statement runs per row); each row's hash chains to the one before.
struct LogAppender {
    /// The previous row's hash as the chain hashes it (its hex decoded; 32 zero bytes if not hex).
    private var head: [UInt8]
    private var nextSeq: Int64
    private var encoder = LogRowEncoder()
    private var hexHash = [UInt8](repeating: 0, count: 64)
    /// Statements inserting 64, 16, 4 and 1 rows, largest first.
    private let inserts: [(rows: Int, statement: Statement)]
    private let database: Database

    private static let columnCount = 21
    private static let chunkSizes = [64, 16, 4, 1]
    private static let sql: [String] = chunkSizes.map { rows in
        let row = "(" + Array(repeating: "?", count: columnCount).joined(separator: ", ") + ")"
        return """
            INSERT INTO delivery_log (seq, at, event, procedure_id, patient_id, step_id, channel, sender,
                destination, attempt, started_at, ended_at, outcome, response_code, error, latency_ms, actor,
                detail, protocol_version, message_hash, hash)
            VALUES
            """ + Array(repeating: row, count: rows).joined(separator: ", ")
    }

    /// Reads the chain's head in `db` (which must be inside a write transaction).
    init(_ db: Database) throws {
        database = db
        if let row = try Row.fetchOne(
            db.cachedStatement(sql: "SELECT seq, hash FROM delivery_log ORDER BY seq DESC LIMIT 1"))
        {
            head = [UInt8](Data(hexString: row["hash"]) ?? Data(count: 32))
            nextSeq = row["seq"] as Int64 + 1
        } else {
            head = [UInt8](repeating: 0, count: 32)
            nextSeq = 1
        }
        inserts = try zip(Self.chunkSizes, Self.sql).map { rows, sql in (rows, try db.cachedStatement(sql: sql)) }
    }

    mutating func append(_ entry: LogEntry) throws {
        try append(contentsOf: CollectionOfOne(entry))
    }

    /// Appends `entries` in order.
    mutating func append<Entries: Collection<LogEntry>>(contentsOf entries: Entries) throws {
        var next = entries.startIndex
        var remaining = entries.count
        while remaining > 0 {
            let (rows, statement) = inserts.first { $0.rows <= remaining }!
            var insert = FastInsert(statement, in: database)
            for _ in 0..<rows {
                bind(entries[next], to: &insert)
                entries.formIndex(after: &next)
            }
            try insert.run()
            remaining -= rows
        }
    }

    private mutating func bind(_ entry: LogEntry, to row: inout FastInsert) {
        let entry = Self.asStored(entry)
        let digest = encoder.hash(previous: head, seq: nextSeq, entry)
        head.removeAll(keepingCapacity: true)
        head.append(contentsOf: digest)
        Self.hex(head, into: &hexHash)
        row.bind(nextSeq)
        row.bind(entry.at.timeIntervalSince1970)
        row.bind(entry.event.rawValue)
        row.bind(entry.procedureID)
        row.bind(entry.patientID)
        row.bind(entry.stepID)
        row.bind(entry.channel)
        row.bind(entry.sender)
        row.bind(entry.destination)
        row.bind(entry.attempt)
        row.bind(entry.startedAt?.timeIntervalSince1970)
        row.bind(entry.endedAt?.timeIntervalSince1970)
        row.bind(entry.outcome)
        row.bind(entry.responseCode)
        row.bind(entry.error)
        row.bind(entry.latencyMilliseconds)
        row.bind(entry.actor)
        row.bind(entry.detail)
        row.bind(entry.protocolVersion)
        row.bind(entry.messageHash)
        row.bindText(hexHash)
        nextSeq += 1
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)

    private static func hex(_ bytes: [UInt8], into out: inout [UInt8]) {
        out.removeAll(keepingCapacity: true)
        for byte in bytes {
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 0x0F)])
        }
    }

    /// The entry as both engines store it: times and latency at the microsecond, exactly as the
    /// chain hashes them.
    static func asStored(_ entry: LogEntry) -> LogEntry {
        var entry = entry
        entry.at = roundMicros(entry.at)!
        entry.startedAt = roundMicros(entry.startedAt)
        entry.endedAt = roundMicros(entry.endedAt)
        entry.latencyMilliseconds = entry.latencyMilliseconds.map { ($0 * 1000).rounded() / 1000 }
        return entry
    }

    static func roundMicros(_ date: Date?) -> Date? {
        date.map { Date(timeIntervalSince1970: ($0.timeIntervalSince1970 * 1e6).rounded() / 1e6) }
    }
}

extension Data {
    /// Bytes from lower- or upper-case hex; `nil` if the text is not hex.
    init?(hexString: String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hexString.utf8.count / 2)
        var high: UInt8?
        for char in hexString.utf8 {
            let value: UInt8
            switch char {
            case 48...57: value = char - 48
            case 97...102: value = char - 87
            case 65...70: value = char - 55
            default: return nil
            }
            if let h = high {
                bytes.append(h << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        guard high == nil else { return nil }
        self.init(bytes)
    }
}

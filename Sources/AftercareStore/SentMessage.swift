import AftercareCore
import Crypto
import Foundation
import GRDB

/// One version of a protocol as the daemon loaded it, addressed by the SHA-256 of its canonical
/// content: the same protocol always has the same version, and any edit to a step, a time or a
/// word of a template makes a new one.
public struct ProtocolVersion: Sendable, Hashable {
    /// The protocol's id (`trigger-point-injection`).
    public var protocolID: String
    /// The canonical content: one JSON object with every field in a fixed order, templates as written.
    public var content: String
    /// Hex SHA-256 of `content`'s UTF-8 bytes.
    public var hash: String

    public init(_ careProtocol: CareProtocol) {
        var json = JSONText()
        json.field("id", careProtocol.id)
        json.field("title", careProtocol.title)
        let steps = careProtocol.steps.map { step in
            var object = JSONText()
            object.field("id", step.id)
            object.field("offset", step.offset.description)
            object.field("valid_for_seconds", step.validForSeconds)
            object.field("urgent", step.urgent)
            if let night = step.nightHold { object.field("send_at_procedure_night_hours", night.description) }
            object.raw("channels", "[" + step.channels.map(JSONText.string).joined(separator: ",") + "]")
            object.field("subject", step.subject.source)
            object.field("body", step.body.source)
            return object.finished()
        }
        json.raw("steps", "[" + steps.joined(separator: ",") + "]")
        self.init(protocolID: careProtocol.id, content: json.finished())
    }

    /// A version from stored content; `hash` is computed, never taken on trust.
    public init(protocolID: String, content: String) {
        self.protocolID = protocolID
        self.content = content
        hash = Hex.encode(SHA256.hash(data: Data(content.utf8)))
    }
}

/// The exact words of one attempt and where they came from, carried from rendering to the log.
public struct SentMessage: Sendable, Hashable {
    public var subject: String
    public var body: String
    /// The protocol version the step was rendered from.
    public var protocolVersion: ProtocolVersion

    public init(subject: String, body: String, protocolVersion: ProtocolVersion) {
        self.subject = subject
        self.body = body
        self.protocolVersion = protocolVersion
    }

    /// SHA-256 over the subject and body, each as its decimal UTF-8 byte length, `:`, and its bytes.
    public var hash: String { Self.hash(subject: subject, body: body) }

    public static func hash(subject: String, body: String) -> String {
        var hasher = SHA256()
        var prefix: [UInt8] = []
        prefix.reserveCapacity(24)
        for var part in [subject, body] {
            part.withUTF8 { utf8 in
                prefix.removeAll(keepingCapacity: true)
                CanonicalBytes.appendLength(utf8.count, to: &prefix)
                prefix.withUnsafeBytes { hasher.update(bufferPointer: $0) }
                hasher.update(bufferPointer: UnsafeRawBufferPointer(utf8))
            }
        }
        return Hex.encode(hasher.finalize())
    }
}

/// The words of one past attempt as the store holds them, and whether they still match the hashes
/// the log chained when the message went out.
public struct AttemptMessage: Sendable, Hashable {
    public var record: LogRecord
    /// The stored subject and body, `nil` if the message row is missing.
    public var subject: String?
    public var body: String?
    /// The stored protocol version, `nil` if its row is missing.
    public var protocolVersion: ProtocolVersion?

    /// The stored text hashes to the log row's `message_hash`.
    public var textMatches: Bool {
        guard let subject, let body else { return false }
        return SentMessage.hash(subject: subject, body: body) == record.entry.messageHash
    }

    /// The stored protocol content hashes to the log row's `protocol_version`.
    public var protocolMatches: Bool { protocolVersion?.hash == record.entry.protocolVersion }
}

extension ReminderStore {
    /// The message an attempt row sent, with its protocol version. Throws if `seq` is not an
    /// attempt that recorded its words (attempts from before schema 2 did not).
    public func attemptMessage(seq: Int64) async throws -> AttemptMessage {
        try await read { db in
            guard let row = try Row.fetchOne(
                db, sql: "SELECT \(Self.logColumns) FROM delivery_log WHERE seq = ?", arguments: [seq])
            else { throw StoreError("no log row \(seq) (pruned, or not written yet)") }
            let record = LogRecord(seq: seq, entry: Self.logEntry(row), hash: row["hash"])
            guard record.entry.event == .attempt else {
                throw StoreError("log row \(seq) is a '\(record.entry.event.rawValue)' row, not an attempt")
            }
            guard let messageHash = record.entry.messageHash else {
                throw StoreError(
                    "log row \(seq) is an attempt from before messages were kept; its words were not recorded")
            }
            let message = try Row.fetchOne(
                db,
                sql: "SELECT CAST(subject AS BLOB) AS subject, CAST(body AS BLOB) AS body FROM message WHERE hash = ?",
                arguments: [messageHash])
            var version: ProtocolVersion?
            if let hash = record.entry.protocolVersion,
                let stored = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT CAST(protocol_id AS BLOB) AS protocol_id, CAST(content AS BLOB) AS content
                        FROM protocol_version WHERE hash = ?
                        """,
                    arguments: [hash])
            {
                version = ProtocolVersion(
                    protocolID: stored.text("protocol_id") ?? "", content: stored.text("content") ?? "")
            }
            return AttemptMessage(
                record: record, subject: message?.text("subject"), body: message?.text("body"),
                protocolVersion: version)
        }
    }

    /// Keeps protocol versions (the daemon calls this with every configuration it loads). Known
    /// versions are left as they are.
    public func rememberProtocols(_ versions: [ProtocolVersion], now: Date) async throws {
        try await transaction { db in
            var keeper = try ProtocolKeeper(db)
            for version in versions { try keeper.keep(version, now: now) }
        }
    }
}

/// Inserts protocol versions and sent texts, each once, inside the caller's transaction.
struct ProtocolKeeper {
    private let protocolStatement: Statement
    private let messageStatement: Statement
    private let database: Database
    /// Versions already written in this transaction: a batch of attempts mostly shares a few.
    private var seen: Set<String> = []
    /// Texts already written in this transaction: many patients get the same words.
    private var seenMessages: Set<String> = []

    init(_ db: Database) throws {
        database = db
        protocolStatement = try db.cachedStatement(
            sql: """
                INSERT OR IGNORE INTO protocol_version (hash, protocol_id, content, first_seen_at) VALUES (?, ?, ?, ?)
                """)
        messageStatement = try db.cachedStatement(
            sql: "INSERT OR IGNORE INTO message (hash, subject, body) VALUES (?, ?, ?)")
    }

    mutating func keep(_ version: ProtocolVersion, now: Date) throws {
        guard seen.insert(version.hash).inserted else { return }
        var row = FastInsert(protocolStatement, in: database)
        row.bind(version.hash)
        row.bind(version.protocolID)
        row.bind(version.content)
        row.bind(now.timeIntervalSince1970)
        try row.run()
    }

    /// Stores the text under its `hash` (``SentMessage/hash``), with its protocol version.
    mutating func keep(_ message: SentMessage, hash: String, now: Date) throws {
        try keep(message.protocolVersion, now: now)
        guard seenMessages.insert(hash).inserted else { return }
        var row = FastInsert(messageStatement, in: database)
        row.bind(hash)
        row.bind(message.subject)
        row.bind(message.body)
        try row.run()
    }
}

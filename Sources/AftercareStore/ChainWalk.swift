import Crypto
import Foundation
import GRDB
import GRDBSQLite

/// Recomputes delivery-log row hashes straight from SQLite's column bytes: the canonical encoding of
/// ``LogChain/canonical(seq:_:)`` built in one reused buffer, without a `Row`, a `LogEntry` or a
/// `String` per field. `audit verify` walks a million rows this way in about a second.
///
/// It agrees byte for byte with ``LogChain/canonical(seq:_:)`` on every row the appender wrote (the
/// store's tests verify every chain they write through it). It is stricter than decoding a row into a
/// `LogEntry` first: an event name that is not one of ``LogEvent``, or a number stored as text, is
/// hashed as stored (or flagged in `foreignType`), so such an edit cannot hide behind a lenient decode.
struct ChainRowHasher {
    /// The columns, in the order the encoder reads them.
    static let columns = """
        seq, at, event, procedure_id, patient_id, step_id, channel, sender, destination, attempt, started_at,
        ended_at, outcome, response_code, error, latency_ms, actor, detail, protocol_version, message_hash, hash
        """
    static let hashColumn: Int32 = 20

    private var buffer: [UInt8] = []
    private(set) var foreignType = false

    init() { buffer.reserveCapacity(1024) }

    /// The hash of the row the statement is on, chained to `previous` (32 bytes).
    mutating func hash(_ statement: SQLiteStatement, previous: [UInt8]) -> SHA256.Digest {
        buffer.removeAll(keepingCapacity: true)
        foreignType = false
        putInteger(statement, 0)  // seq
        putTime(statement, 1)  // at
        putText(statement, 2)  // event
        for column: Int32 in 3...8 { putText(statement, column) }  // procedure … destination
        putInteger(statement, 9)  // attempt
        putTime(statement, 10)  // started_at
        putTime(statement, 11)  // ended_at
        putText(statement, 12)  // outcome
        putInteger(statement, 13)  // response_code
        putText(statement, 14)  // error
        putLatency(statement, 15)
        putText(statement, 16)  // actor
        putText(statement, 17)  // detail
        // Added with schema 2, hashed only when set so that older rows hash as they always did.
        if sqlite3_column_type(statement, 18) != SQLITE_NULL || sqlite3_column_type(statement, 19) != SQLITE_NULL {
            putText(statement, 18)
            putText(statement, 19)
        }
        var hasher = SHA256()
        previous.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        buffer.withUnsafeBytes { hasher.update(bufferPointer: $0) }
        return hasher.finalize()
    }

    /// The stored hash column as 32 bytes, or `nil` if it is not 64 hex digits.
    static func storedHash(_ statement: SQLiteStatement, column: Int32 = hashColumn) -> [UInt8]? {
        guard sqlite3_column_type(statement, column) == SQLITE_TEXT,
            let text = sqlite3_column_text(statement, column)
        else { return nil }
        guard sqlite3_column_bytes(statement, column) == 64 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 32)
        for index in 0..<32 {
            guard let high = nibble(text[2 * index]), let low = nibble(text[2 * index + 1]) else { return nil }
            bytes[index] = high << 4 | low
        }
        return bytes
    }

    private static func nibble(_ char: UInt8) -> UInt8? {
        switch char {
        case 48...57: return char - 48
        case 97...102: return char - 87
        case 65...70: return char - 55
        default: return nil
        }
    }

    private mutating func putNull() { buffer.append(UInt8(ascii: "-")) }

    /// `<decimal length>:<decimal digits>`.
    private mutating func putDecimal(_ value: Int64) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { raw in
            var magnitude = value.magnitude
            repeat {
                raw[19 - count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            } while magnitude > 0
            if value < 0 {
                raw[19 - count] = UInt8(ascii: "-")
                count += 1
            }
        }
        putLength(count)
        withUnsafeBytes(of: &digits) { raw in buffer.append(contentsOf: raw[(20 - count)...]) }
    }

    private mutating func putLength(_ length: Int) {
        if length < 10 {
            buffer.append(UInt8(ascii: "0") + UInt8(length))
        } else {
            buffer.append(contentsOf: String(length).utf8)
        }
        buffer.append(UInt8(ascii: ":"))
    }

    private mutating func putText(_ statement: SQLiteStatement, _ column: Int32) {
        switch sqlite3_column_type(statement, column) {
        case SQLITE_NULL:
            putNull()
        case SQLITE_TEXT, SQLITE_BLOB:
            // The bytes as stored, NULs included (never converted: the database is UTF-8).
            let pointer = sqlite3_column_blob(statement, column)
            let count = Int(sqlite3_column_bytes(statement, column))
            putLength(count)
            if let pointer, count > 0 {
                buffer.append(contentsOf: UnsafeRawBufferPointer(start: pointer, count: count))
            }
        default:
            foreignType = true
            putNull()
        }
    }

    private mutating func putInteger(_ statement: SQLiteStatement, _ column: Int32) {
        switch sqlite3_column_type(statement, column) {
        case SQLITE_NULL: putNull()
        case SQLITE_INTEGER: putDecimal(sqlite3_column_int64(statement, column))
        default:
            foreignType = true
            putNull()
        }
    }

    /// Integer microseconds since 1970, computed exactly as the appender did through `Date`.
    private mutating func putTime(_ statement: SQLiteStatement, _ column: Int32) {
        switch sqlite3_column_type(statement, column) {
        case SQLITE_NULL:
            putNull()
        case SQLITE_FLOAT, SQLITE_INTEGER:
            let seconds = Date(timeIntervalSince1970: sqlite3_column_double(statement, column)).timeIntervalSince1970
            putDecimal(Int64((seconds * 1e6).rounded()))
        default:
            foreignType = true
            putNull()
        }
    }

    /// Integer microseconds of latency.
    private mutating func putLatency(_ statement: SQLiteStatement, _ column: Int32) {
        switch sqlite3_column_type(statement, column) {
        case SQLITE_NULL:
            putNull()
        case SQLITE_FLOAT, SQLITE_INTEGER:
            putDecimal(Int64((sqlite3_column_double(statement, column) * 1000).rounded()))
        default:
            foreignType = true
            putNull()
        }
    }
}

import Foundation
import GRDB
import GRDBSQLite

/// Binds and runs one of GRDB's cached prepared statements through the SQLite C API directly, for
/// the few statements on hot paths (a reminder, a batch of delivery-log rows, a claim), where boxing
/// arguments and rows costs more than SQLite's own work. The statement belongs to the connection
/// GRDB hands us inside a transaction; it is reset after every run.
struct FastInsert {
    private let statement: SQLiteStatement
    /// Keeps GRDB's statement (and so the prepared one) alive, cached or not.
    private let owner: Statement
    private let db: Database
    private var index: Int32 = 0
    /// The first binding SQLite refused (too big, out of memory), reported by `run()`.
    private var bindFailure: Int32 = SQLITE_OK

    /// `SQLITE_TRANSIENT`: SQLite copies the bytes before the call returns.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    init(_ statement: Statement, in db: Database) {
        self.statement = statement.sqliteStatement
        owner = statement
        self.db = db
    }

    mutating func bind(_ value: String?) {
        index += 1
        guard let value else {
            note(sqlite3_bind_null(statement, index))
            return
        }
        var copy = value
        let code = copy.withUTF8 { bytes in
            sqlite3_bind_text(
                statement, index, UnsafeRawPointer(bytes.baseAddress ?? UnsafePointer(bitPattern: 1)!)
                    .assumingMemoryBound(to: CChar.self), Int32(clamping: bytes.count), Self.transient)
        }
        note(code)
    }

    private mutating func note(_ code: Int32) {
        if code != SQLITE_OK && bindFailure == SQLITE_OK { bindFailure = code }
    }

    mutating func bind(_ value: Double?) {
        index += 1
        note(value.map { sqlite3_bind_double(statement, index, $0) } ?? sqlite3_bind_null(statement, index))
    }

    mutating func bind(_ value: Int64?) {
        index += 1
        note(value.map { sqlite3_bind_int64(statement, index, $0) } ?? sqlite3_bind_null(statement, index))
    }

    mutating func bind(_ value: Int?) { bind(value.map(Int64.init)) }

    /// UTF-8 bytes bound as text.
    mutating func bindText(_ bytes: [UInt8]) {
        index += 1
        let code = bytes.withUnsafeBufferPointer { buffer in
            sqlite3_bind_text(
                statement, index, UnsafeRawPointer(buffer.baseAddress ?? UnsafePointer(bitPattern: 1)!)
                    .assumingMemoryBound(to: CChar.self), Int32(clamping: buffer.count), Self.transient)
        }
        note(code)
    }

    /// Bytes bound as a blob.
    mutating func bind(_ value: Data?) {
        index += 1
        guard let value else {
            note(sqlite3_bind_null(statement, index))
            return
        }
        let code = value.withUnsafeBytes { buffer in
            sqlite3_bind_blob(
                statement, index, buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, Int32(clamping: buffer.count),
                Self.transient)
        }
        note(code)
    }

    /// Runs a query, handing each result row to `body` (valid only during the call), and makes the
    /// statement ready for the next run.
    mutating func rows(_ body: (ResultRow) throws -> Void) throws {
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
            index = 0
            bindFailure = SQLITE_OK
        }
        guard bindFailure == SQLITE_OK else { throw failure(bindFailure) }
        while true {
            let code = sqlite3_step(statement)
            if code == SQLITE_DONE { return }
            guard code == SQLITE_ROW else { throw failure(code) }
            try body(ResultRow(statement: statement))
        }
    }

    private func failure(_ code: Int32) -> DatabaseError {
        DatabaseError(
            resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
    }

    /// Runs the statement and makes it ready for the next row.
    mutating func run() throws {
        defer { bindFailure = SQLITE_OK }
        let code = bindFailure == SQLITE_OK ? sqlite3_step(statement) : bindFailure
        sqlite3_reset(statement)
        sqlite3_clear_bindings(statement)
        index = 0
        guard code == SQLITE_DONE else { throw failure(code) }
    }
}

/// The row a query is on, read column by column through the C API.
struct ResultRow {
    let statement: SQLiteStatement

    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(statement, column) == SQLITE_NULL }

    func double(_ column: Int32) -> Double { sqlite3_column_double(statement, column) }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(statement, column) }

    /// The column's bytes exactly as stored, NULs included; empty for NULL.
    func bytes(_ column: Int32) -> UnsafeRawBufferPointer {
        let pointer = sqlite3_column_blob(statement, column)
        let count = Int(sqlite3_column_bytes(statement, column))
        guard let pointer, count > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: pointer, count: count)
    }

    /// The column's bytes as text (`nil` for NULL), byte for byte.
    func text(_ column: Int32) -> String? {
        isNull(column) ? nil : String(decoding: bytes(column), as: UTF8.self)
    }
}

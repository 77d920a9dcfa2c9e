import Foundation
import GRDB
import GRDBSQLite

/// Binds and runs one of GRDB's cached prepared statements through the SQLite C API directly, for
/// the few inserts on hot paths (a reminder, a delivery-log row), where boxing arguments costs more
/// than SQLite's own work. The statement belongs to the connection GRDB hands us inside a
/// transaction; it is reset after every row.
struct FastInsert {
    private let statement: SQLiteStatement
    private let db: Database
    private var index: Int32 = 0
    /// The first binding SQLite refused (too big, out of memory), reported by `run()`.
    private var bindFailure: Int32 = SQLITE_OK

    /// `SQLITE_TRANSIENT`: SQLite copies the bytes before the call returns.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    init(_ statement: Statement, in db: Database) {
        self.statement = statement.sqliteStatement
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

    /// Runs the statement and makes it ready for the next row.
    mutating func run() throws {
        defer { bindFailure = SQLITE_OK }
        let code = bindFailure == SQLITE_OK ? sqlite3_step(statement) : bindFailure
        sqlite3_reset(statement)
        sqlite3_clear_bindings(statement)
        index = 0
        guard code == SQLITE_DONE else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: String(cString: sqlite3_errmsg(db.sqliteConnection)))
        }
    }
}

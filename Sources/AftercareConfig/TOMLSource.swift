import AftercareCore
import Foundation
import TOMLKit

/// A parsed TOML file that can say on which line any key stands.
///
/// TOMLKit reports positions for syntax errors only, so the lines of keys are found by scanning the
/// text: table headers (`[a.b]`, `[[steps]]`, counting repeated array tables) and `key =` lines,
/// skipping multi-line strings.
final class TOMLSource {
    let path: String
    let root: TOMLTable
    private var lines: [String: Int] = [:]

    init(path: String) throws(ConfigError) {
        self.path = path
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigError(file: path, line: nil, message: "cannot read: \(Self.reason(error))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            let bad = lines.firstIndex { String(data: Data($0), encoding: .utf8) == nil } ?? 0
            throw ConfigError(file: path, line: bad + 1, message: "not UTF-8 text")
        }
        if let line = Self.malformedHeaderLine(text) {
            throw ConfigError(file: path, line: line, message: "TOML syntax: a table header needs a name: [name]")
        }
        do {
            root = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(file: path, line: error.source.begin.line, message: "TOML syntax: \(error.description)")
        } catch {
            throw ConfigError(file: path, line: nil, message: "TOML syntax: \(error)")
        }
        locate(text)
    }

    static func reason(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        if nsError.domain == NSCocoaErrorDomain, nsError.code == NSFileReadNoSuchFileError { return "no such file" }
        return nsError.localizedDescription
    }

    /// The line of `path` (`clinic.name`, `steps[2].at`, or a table such as `senders.outbox`).
    func line(of path: String) -> Int? { lines[path] }

    private func locate(_ text: String) {
        var table = ""
        var arrayCounts: [String: Int] = [:]
        var inMultiline: String?
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = offset + 1
            var line = Substring(rawLine)
            if let delimiter = inMultiline {
                if line.contains(delimiter) { inMultiline = nil }
                continue
            }
            line = line.drop(while: { $0 == " " || $0 == "\t" })
            if line.hasPrefix("#") || line.isEmpty { continue }
            if line.hasPrefix("[[") {
                let name = Self.normalize(line.dropFirst(2).prefix { $0 != "]" })
                let index = arrayCounts[name, default: 0]
                arrayCounts[name] = index + 1
                table = "\(name)[\(index)]"
                lines[table] = lines[table] ?? number
                continue
            }
            if line.hasPrefix("[") {
                table = Self.normalize(line.dropFirst().prefix { $0 != "]" })
                lines[table] = lines[table] ?? number
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { continue }
            let key = Self.normalize(line[..<equals])
            let path = table.isEmpty ? key : "\(table).\(key)"
            lines[path] = lines[path] ?? number
            let value = line[line.index(after: equals)...].drop(while: { $0 == " " })
            for delimiter in ["\"\"\"", "'''"] where value.hasPrefix(delimiter) {
                if !value.dropFirst(3).contains(delimiter) { inMultiline = delimiter }
            }
        }
    }

    /// The line of a table header whose `[` or `[[` is followed by neither a key nor `]`, such as a
    /// lone `[`. toml++ asserts on these (a crash in debug builds, undefined behaviour in release),
    /// so they are refused before it sees them. Strings, comments and multi-line array values are
    /// skipped, as only a `[` that starts a statement opens a header.
    static func malformedHeaderLine(_ text: String) -> Int? {
        let bytes = Array(text.utf8)
        var index = 0
        var line = 1
        var depth = 0
        var statementStart = true
        func at(_ offset: Int) -> UInt8? { index + offset < bytes.count ? bytes[index + offset] : nil }
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\n"):
                line += 1
                if depth == 0 { statementStart = true }
                index += 1
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"):
                index += 1
            case UInt8(ascii: "#"):
                while index < bytes.count, bytes[index] != UInt8(ascii: "\n") { index += 1 }
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                let triple = at(1) == byte && at(2) == byte
                let close: [UInt8] = triple ? [byte, byte, byte] : [byte]
                index += close.count
                while index < bytes.count {
                    if bytes[index] == UInt8(ascii: "\n") {
                        if !triple { break }
                        line += 1
                    }
                    if byte == UInt8(ascii: "\""), bytes[index] == UInt8(ascii: "\\") {
                        if at(1) == UInt8(ascii: "\n") { line += 1 }
                        index += 2
                        continue
                    }
                    if Array(bytes[index..<min(bytes.count, index + close.count)]) == close {
                        index += close.count
                        break
                    }
                    index += 1
                }
                statementStart = false
            case UInt8(ascii: "[") where statementStart && depth == 0:
                index += 1
                while at(0) == UInt8(ascii: " ") || at(0) == UInt8(ascii: "\t") { index += 1 }
                if at(0) == UInt8(ascii: "[") { index += 1 }
                while at(0) == UInt8(ascii: " ") || at(0) == UInt8(ascii: "\t") { index += 1 }
                guard let next = at(0) else { return nil }
                let isKeyStart = InputRules.isAlnum(next) || next == UInt8(ascii: "_") || next == UInt8(ascii: "-")
                    || next == UInt8(ascii: "\"") || next == UInt8(ascii: "'") || next == UInt8(ascii: "]")
                if !isKeyStart { return line }
                statementStart = false
                // The rest of a header is one line.
                while index < bytes.count, bytes[index] != UInt8(ascii: "\n") {
                    if bytes[index] == UInt8(ascii: "\"") || bytes[index] == UInt8(ascii: "'") { break }
                    index += 1
                }
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                statementStart = false
                index += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth = max(0, depth - 1)
                index += 1
            default:
                statementStart = false
                index += 1
            }
        }
        return nil
    }

    private static func normalize(_ key: Substring) -> String {
        key.split(separator: ".").map {
            $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
        }.joined(separator: ".")
    }
}

/// One table of a TOML file being read: typed getters that name the file and line on error, and
/// that remember which keys were read so unknown ones can be refused.
final class Section {
    let source: TOMLSource
    let table: TOMLTable
    /// The dotted path of this table (`""` for the root).
    let path: String
    private var read: Set<String> = []

    init(_ source: TOMLSource, _ table: TOMLTable, path: String) {
        self.source = source
        self.table = table
        self.path = path
    }

    var display: String { path.isEmpty ? "the top level" : "[\(path)]" }

    func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ key: String?, _ message: String) -> ConfigError {
        // What is missing from the top level has no line of its own: the file's first line stands in.
        let line = key.flatMap { source.line(of: keyPath($0)) } ?? source.line(of: path) ?? (path.isEmpty ? 1 : nil)
        return ConfigError(file: source.path, line: line, message: message)
    }

    func has(_ key: String) -> Bool { table[key] != nil }

    func line(of key: String) -> Int? { source.line(of: keyPath(key)) }

    /// A file or folder path: not empty, no control characters; resolved against the config's folder.
    func path(_ key: String, resolve: (String) -> String) throws(ConfigError) -> String? {
        guard let text = try string(key) else { return nil }
        try checkPath(text, key: key)
        return resolve(text)
    }

    /// An array of paths, each checked as `path` does (not resolved).
    func paths(_ key: String, resolve: (String) -> String) throws(ConfigError) -> [String]? {
        guard let texts = try strings(key) else { return nil }
        for text in texts { try checkPath(text, key: key) }
        return texts.map(resolve)
    }

    private func checkPath(_ text: String, key: String) throws(ConfigError) {
        guard !text.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw error(key, "'\(keyPath(key))' is empty: give a path, or leave the key out for the default")
        }
        if text.unicodeScalars.contains(where: InputRules.isUnsafe) {
            throw error(key, "'\(keyPath(key))' = \"\(InputRules.printable(text))\" holds a control character")
        }
    }

    private func value(_ key: String) -> (any TOMLValueConvertible)? {
        read.insert(key)
        return table[key]
    }

    func string(_ key: String) throws(ConfigError) -> String? {
        guard let value = value(key) else { return nil }
        guard let string = value.string else { throw error(key, "'\(keyPath(key))' must be a string") }
        return string
    }

    func requiredString(_ key: String) throws(ConfigError) -> String {
        guard let value = try string(key) else { throw error(nil, "missing key '\(key)' in \(display)") }
        return value
    }

    func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let value = value(key) else { return nil }
        guard let bool = value.bool else { throw error(key, "'\(keyPath(key))' must be true or false") }
        return bool
    }

    func int(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let value = value(key) else { return nil }
        guard let int = value.int else { throw error(key, "'\(keyPath(key))' must be a whole number") }
        guard range.contains(int) else {
            throw error(key, "'\(keyPath(key))' must be between \(range.lowerBound) and \(range.upperBound), not \(int)")
        }
        return int
    }

    func number(_ key: String, in range: ClosedRange<Double>) throws(ConfigError) -> Double? {
        guard let value = value(key) else { return nil }
        guard let number = value.double ?? value.int.map(Double.init) else {
            throw error(key, "'\(keyPath(key))' must be a number")
        }
        guard range.contains(number) else {
            throw error(key, "'\(keyPath(key))' must be between \(range.lowerBound) and \(range.upperBound), not \(number)")
        }
        return number
    }

    /// A duration such as `30s`, `5m`, `1h30m`, `2d`.
    func duration(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard let text = try string(key) else { return nil }
        guard let seconds = DurationText.parse(text) else {
            throw error(key, "'\(keyPath(key))' = \"\(InputRules.printable(text))\" is not a duration such as 30s, 5m, 24h or 1h30m")
        }
        guard range.contains(seconds) else {
            throw error(
                key, "'\(keyPath(key))' must be between \(DurationText.format(seconds: range.lowerBound)) and "
                    + "\(DurationText.format(seconds: range.upperBound))")
        }
        return seconds
    }

    func strings(_ key: String) throws(ConfigError) -> [String]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw error(key, "'\(keyPath(key))' must be an array of strings") }
        var out: [String] = []
        for element in array {
            guard let string = element.string else { throw error(key, "'\(keyPath(key))' must be an array of strings") }
            out.append(string)
        }
        return out
    }

    func subtable(_ key: String) throws(ConfigError) -> Section? {
        guard let value = value(key) else { return nil }
        guard let table = value.table else { throw error(key, "'\(keyPath(key))' must be a table") }
        return Section(source, table, path: keyPath(key))
    }

    func tables(_ key: String) throws(ConfigError) -> [Section]? {
        guard let value = value(key) else { return nil }
        guard let array = value.array else { throw error(key, "'\(keyPath(key))' must be an array of tables ([[\(key)]])") }
        var out: [Section] = []
        for (index, element) in array.enumerated() {
            guard let table = element.table else { throw error(key, "'\(keyPath(key))' must be an array of tables") }
            out.append(Section(source, table, path: "\(keyPath(key))[\(index)]"))
        }
        return out
    }

    /// Refuses any key that was never read.
    func rejectUnknownKeys() throws(ConfigError) {
        for key in table.keys.sorted() where !read.contains(key) {
            throw error(key, "unknown key '\(InputRules.printable(key))' in \(display)")
        }
    }
}

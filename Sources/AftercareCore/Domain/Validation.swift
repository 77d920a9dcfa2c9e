import Foundation

/// Why a procedure, patient or contact route was refused at input. Rendered as one line.
public struct ValidationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The field that was wrong, as the user wrote it (`patient.routes[1].to`).
    public var field: String
    /// The value that was refused, when showing it helps (escaped and cut short when shown).
    public var value: String?
    /// What was wrong with it.
    public var problem: String

    public init(field: String, value: String? = nil, problem: String) {
        self.field = field
        self.value = value
        self.problem = problem
    }

    public var description: String {
        guard let value else { return "\(field): \(problem)" }
        return "\(field) '\(InputRules.printable(value, limit: 40))': \(problem)"
    }
}

/// The shapes aftercare accepts at its edges. Everything that reaches the store or a message has
/// passed these checks, so no control character can reach a header, a file name or a log line.
public enum InputRules {
    /// The longest procedure or patient id.
    public static let maxIdentifierLength = 64
    /// The longest step or channel name.
    public static let maxNameLength = 32

    /// Procedure and patient ids: a letter or digit, then letters, digits, `.`, `_`, `:` or `-`; at
    /// most 64 characters.
    public static func checkIdentifier(_ value: String, field: String) throws(ValidationError) {
        try checkWord(
            value, field: field, maxLength: maxIdentifierLength, allowed: Set("._:-".utf8),
            shape: "letters, digits and . _ : -")
    }

    /// Who asked for a request (`requested_by`, a log's actor): a user name of letters, digits and
    /// `.`, `_`, `-`, `@`, `$`, starting with a letter, digit or `_`; at most 64 characters.
    public static func checkActor(_ value: String, field: String) throws(ValidationError) {
        try checkWord(
            value, field: field, maxLength: maxIdentifierLength, allowed: Set("._-@$".utf8),
            shape: "letters, digits and . _ - @ $", leading: Set("_".utf8))
    }

    /// A reminder id, `<procedure id>.<step name>` (as `aftercare show` prints it). Step names hold
    /// no `.`, so the last one splits them.
    public static func checkReminderID(_ value: String, field: String) throws(ValidationError) {
        guard value.utf8.count <= maxIdentifierLength + 1 + maxNameLength else {
            throw ValidationError(
                field: field, value: value,
                problem: "longer than \(maxIdentifierLength + 1 + maxNameLength) characters")
        }
        guard let dot = value.lastIndex(of: ".") else {
            throw ValidationError(field: field, value: value, problem: "is not PROCEDURE.STEP")
        }
        do {
            try checkIdentifier(String(value[..<dot]), field: field)
            try checkName(String(value[value.index(after: dot)...]), field: field)
        } catch {
            throw ValidationError(field: field, value: value, problem: "is not PROCEDURE.STEP (\(error.problem))")
        }
    }

    private static func checkWord(
        _ value: String, field: String, maxLength: Int, allowed: Set<UInt8>, shape: String,
        leading: Set<UInt8> = []
    ) throws(ValidationError) {
        guard !value.isEmpty else { throw ValidationError(field: field, problem: "must not be empty") }
        guard value.utf8.count <= maxLength else {
            throw ValidationError(field: field, value: value, problem: "longer than \(maxLength) characters")
        }
        let bytes = Array(value.utf8)
        guard isAlnum(bytes[0]) || leading.contains(bytes[0]) else {
            throw ValidationError(field: field, value: value, problem: "must start with a letter or digit")
        }
        for byte in bytes where !(isAlnum(byte) || allowed.contains(byte)) {
            throw ValidationError(
                field: field, value: value, problem: "may hold only \(shape) (found \(describe(byte)))")
        }
    }

    /// Step and channel names: lower-case letters, digits and `-`, starting with a letter.
    public static func checkName(_ value: String, field: String) throws(ValidationError) {
        let bytes = Array(value.utf8)
        guard let first = bytes.first, first >= UInt8(ascii: "a"), first <= UInt8(ascii: "z"),
            bytes.count <= maxNameLength
        else {
            throw ValidationError(
                field: field, value: value,
                problem: "must be 1-\(maxNameLength) characters starting with a lower-case letter")
        }
        for byte in bytes
        where !((byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "-"))
        {
            throw ValidationError(
                field: field, value: value, problem: "may hold only a-z, 0-9 and - (found \(describe(byte)))")
        }
    }

    /// Free text that goes into messages or headers (a first name, a clinic name): no control
    /// characters at all (C0, DEL, C1, CR and LF included), no bidi overrides or isolates, and not
    /// blank. The length counts Unicode scalars, so combining marks cannot stretch it.
    public static func checkText(_ value: String, field: String, maxLength: Int = 200) throws(ValidationError) {
        guard value.unicodeScalars.count <= maxLength else {
            throw ValidationError(field: field, value: value, problem: "longer than \(maxLength) characters")
        }
        if let bad = value.unicodeScalars.first(where: { isUnsafe($0) }) {
            let what = isBidiControl(bad) ? "a bidi control" : "a control character"
            throw ValidationError(field: field, value: value, problem: "contains \(what) (U+\(hex(bad.value)))")
        }
        guard !value.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw ValidationError(field: field, problem: "must not be blank")
        }
    }

    /// Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): they reorder what a
    /// terminal or a log viewer shows.
    public static func isBidiControl(_ scalar: Unicode.Scalar) -> Bool {
        (0x202A...0x202E).contains(scalar.value) || (0x2066...0x2069).contains(scalar.value)
    }

    /// A scalar that must never reach a header, a log line or a terminal: C0 and C1 controls, DEL,
    /// line and paragraph separators, bidi controls.
    public static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.generalCategory == .control || scalar == "\u{2028}" || scalar == "\u{2029}"
            || isBidiControl(scalar)
    }

    /// An E.164 phone number: `+`, then 7 to 15 digits, the first not zero.
    public static func checkPhone(_ value: String, field: String) throws(ValidationError) {
        let bytes = Array(value.utf8)
        guard bytes.count >= 8, bytes.count <= 16, bytes[0] == UInt8(ascii: "+"),
            bytes[1] != UInt8(ascii: "0"),
            bytes.dropFirst().allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") })
        else {
            throw ValidationError(
                field: field,
                problem: "'\(printable(value))' is not an E.164 phone number such as +15551234567"
            )
        }
    }

    /// An email address of the everyday shape `local@domain.tld`: no spaces, quotes, angle brackets
    /// or control characters; a domain of dot-separated labels.
    public static func checkEmail(_ value: String, field: String) throws(ValidationError) {
        let failure = ValidationError(
            field: field,
            problem: "'\(printable(value))' is not an email address such as name@example.org"
        )
        guard value.utf8.count <= 254 else { throw failure }
        let parts = value.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.count <= 64 else { throw failure }
        let localAllowed = Set("!#$%&'*+-/=?^_`{|}~.".utf8)
        guard parts[0].utf8.allSatisfy({ isAlnum($0) || localAllowed.contains($0) }),
            !parts[0].hasPrefix("."), !parts[0].hasSuffix("."), !parts[0].contains("..")
        else { throw failure }
        let labels = parts[1].split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2 else { throw failure }
        for label in labels {
            guard !label.isEmpty, label.utf8.count <= 63, !label.hasPrefix("-"), !label.hasSuffix("-"),
                label.utf8.allSatisfy({ isAlnum($0) || $0 == UInt8(ascii: "-") })
            else { throw failure }
        }
    }

    /// A recipient id for a clinic-defined channel (a portal user id, a messaging handle).
    public static func checkRecipient(_ value: String, field: String) throws(ValidationError) {
        let allowed = Set("._:@+-".utf8)
        guard !value.isEmpty, value.utf8.count <= 128,
            value.utf8.allSatisfy({ isAlnum($0) || allowed.contains($0) })
        else {
            throw ValidationError(
                field: field,
                problem: "'\(printable(value))' is not a recipient id (1-128 of letters, digits and . _ : @ + -)"
            )
        }
    }

    /// A time zone aftercare can reckon in: an IANA region name (`America/New_York`) or one of its
    /// links (`Asia/Calcutta`, `US/Eastern`), or `UTC`. Abbreviations (`EST`, `PST`, `CET`) are refused:
    /// they name no DST rule, and `EST` is winter time all year. Offset names (`GMT+5`, `UTC-03:00`) are
    /// refused too: they never follow DST, and the tz database's `Etc/GMT+5` means UTC-5, the sign the
    /// other way round from what it seems to say.
    public static func checkTimeZone(_ value: String, field: String) throws(ValidationError) {
        let hint = "use a region name such as America/New_York or Asia/Kolkata"
        func refuse(_ problem: String) -> ValidationError {
            ValidationError(field: field, problem: "'\(printable(value))' \(problem)")
        }
        let bytes = Array(value.utf8)
        if value.hasPrefix("Etc/GMT"), bytes.count > 7, bytes[7] == UInt8(ascii: "+") || bytes[7] == UInt8(ascii: "-") {
            let sign = bytes[7] == UInt8(ascii: "+") ? "-" : "+"
            throw refuse(
                "is a fixed offset with the sign inverted (it means UTC\(sign)\(value.dropFirst(8))) that never "
                    + "follows daylight saving time; \(hint)")
        }
        for prefix in ["GMT", "UTC", "UT", "Etc/UTC", "Etc/UT", "+", "-"] where value.hasPrefix(prefix) {
            let rest = value.dropFirst(prefix.count)
            if let first = rest.first, first == "+" || first == "-" || first.isNumber || prefix.count == 1 {
                throw refuse("is a fixed offset, not a time zone: it never follows daylight saving time; \(hint)")
            }
        }
        // EST, PST, CET, GMT, EST5EDT, NZ, PRC: abbreviations and the old POSIX-style names.
        let isAbbreviation = !bytes.isEmpty
            && bytes.allSatisfy { ($0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z")) || ($0 >= 48 && $0 <= 57) }
        if isAbbreviation && value != "UTC" {
            throw refuse("is an abbreviation, not a time zone (it names no daylight-saving rule); \(hint)")
        }
        // Foundation also reads offsets and abbreviations it knows; a real zone keeps its own name.
        guard !value.isEmpty, let zone = TimeZone(identifier: value), zone.identifier == value || value == "UTC" else {
            throw refuse("is not a known IANA time zone such as America/New_York")
        }
    }

    /// An ASCII letter or digit.
    public static func isAlnum(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
    }

    static func describe(_ byte: UInt8) -> String {
        byte >= 0x21 && byte < 0x7F
            ? "'\(Character(UnicodeScalar(byte)))'" : "byte 0x\(String(hex(UInt32(byte)).suffix(2)))"
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// The value made safe to echo in a one-line error (see ``UntrustedText``), cut after `limit` scalars.
    public static func printable(_ value: String, limit: Int = 80) -> String {
        UntrustedText.escaped(value, limit: limit)
    }
}

extension ContactRoute {
    /// Checks the channel name and the address's shape for that channel.
    public func validate(field: String) throws(ValidationError) {
        try InputRules.checkName(channel, field: "\(field).channel")
        switch channel {
        case "sms": try InputRules.checkPhone(address, field: "\(field).to")
        case "email": try InputRules.checkEmail(address, field: "\(field).to")
        default: try InputRules.checkRecipient(address, field: "\(field).to")
        }
    }
}

extension Procedure {
    /// Checks every field a procedure carries. A procedure that passes can be stored, planned and
    /// rendered into any header or body safely.
    public func validate() throws(ValidationError) {
        try InputRules.checkIdentifier(id, field: "procedure_id")
        try InputRules.checkName(protocolID, field: "protocol")
        try InputRules.checkIdentifier(patient.id, field: "patient.id")
        if let firstName = patient.firstName {
            try InputRules.checkText(firstName, field: "patient.first_name", maxLength: 64)
        }
        try InputRules.checkTimeZone(patient.timeZone, field: "patient.time_zone")
        guard !patient.routes.isEmpty else {
            throw ValidationError(field: "patient.routes", problem: "at least one contact route is needed")
        }
        guard patient.routes.count <= 8 else {
            throw ValidationError(field: "patient.routes", problem: "at most 8 contact routes")
        }
        for (index, route) in patient.routes.enumerated() {
            try route.validate(field: "patient.routes[\(index)]")
        }
        let year = Calendar(identifier: .gregorian).component(.year, from: performedAt)
        guard (2000...2100).contains(year) else {
            throw ValidationError(field: "performed_at", problem: "year \(year) is outside 2000-2100")
        }
    }
}

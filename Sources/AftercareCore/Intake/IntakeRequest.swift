import Foundation

/// One request in an intake (spool) file. Staff tools and other systems only ever write these
/// files; the daemon alone writes the database.
///
/// On disk each request is a JSON object. A file holds one object, or many as JSON Lines. The
/// `kind` field picks the request; a file without it is a procedure, so other systems can drop plain
/// procedure records:
///
/// ```json
/// {"procedure_id":"P-1001","protocol":"trigger-point-injection","performed_at":"2026-11-25T14:30:00-05:00",
///  "patient":{"id":"MRN-77","first_name":"Ana","time_zone":"America/New_York",
///             "routes":[{"channel":"sms","to":"+15551234567"},{"channel":"email","to":"ana@example.org"}]}}
/// {"kind":"cancel","procedure_id":"P-1001","reason":"patient declined"}
/// {"kind":"reschedule","procedure_id":"P-1001","performed_at":"2026-11-25T15:10:00-05:00"}
/// {"kind":"replay","reminder_id":"P-1001.checkin-24h"}
/// {"kind":"book","procedure_id":"P-1002","protocol":"trigger-point-injection",
///  "planned_at":"2026-12-01T10:00:00-05:00",
///  "patient":{"id":"MRN-77","time_zone":"America/New_York","routes":[{"channel":"sms","to":"+15551234567"}]}}
/// {"kind":"move","procedure_id":"P-1002","planned_at":"2026-12-02T10:00:00-05:00"}
/// {"kind":"performed","procedure_id":"P-1002","performed_at":"2026-12-02T10:20:00-05:00"}
/// {"kind":"update","patient_id":"MRN-77","routes":[{"channel":"sms","to":"+15557654321"}],"opt_out":["email"]}
/// ```
public enum IntakeRequest: Sendable, Hashable {
    /// A procedure performed now or in the past, to plan (or the same one again: ingest is
    /// idempotent by procedure id). `force` records one so far back that nothing will be sent.
    case procedure(Procedure, force: Bool = false)
    /// An appointment: a procedure planned for `performedAt`, whose reminders wait until it is
    /// marked performed.
    case book(Procedure)
    /// Move a booked appointment to another planned time (and optionally the patient's zone).
    case move(procedureID: String, plannedAt: Date, timeZone: String?)
    /// A booked appointment took place, at `at` (when the daemon takes the request if `nil`); its
    /// reminders are planned from that moment.
    case performed(procedureID: String, at: Date?, force: Bool)
    /// Correct a patient's contact details on their open procedures.
    case update(PatientUpdate)
    /// Cancel every pending reminder of a procedure.
    case cancel(procedureID: String, reason: String?)
    /// Correct a procedure's time and/or the patient's zone, re-planning its pending reminders.
    case reschedule(procedureID: String, performedAt: Date?, timeZone: String?)
    /// Re-queue dead reminders: one, a procedure's, or all that died since a time.
    case replay(ReplayScope)

    /// The procedure the request is about, when it names one.
    public var procedureID: String? {
        switch self {
        case .procedure(let procedure, _), .book(let procedure): return procedure.id
        case .cancel(let id, _), .reschedule(let id, _, _), .move(let id, _, _), .performed(let id, _, _): return id
        case .update(let update): return update.procedureID
        case .replay(.reminder(let id)): return id.lastIndex(of: ".").map { String(id[..<$0]) }
        case .replay(.procedure(let id)): return id
        case .replay: return nil
        }
    }

    /// Checks every field the request carries, in every kind: what passes can be stored, logged
    /// and echoed safely. The one check both the staff commands and the daemon's intake run.
    public func validate() throws(ValidationError) {
        switch self {
        case .procedure(let procedure, _):
            try procedure.validate()
        case .book(let procedure):
            try procedure.validate()
        case .move(let id, let plannedAt, let timeZone):
            try InputRules.checkIdentifier(id, field: "procedure_id")
            try Self.checkYear(plannedAt, field: "planned_at")
            if let timeZone { try InputRules.checkTimeZone(timeZone, field: "time_zone") }
        case .performed(let id, let at, _):
            try InputRules.checkIdentifier(id, field: "procedure_id")
            if let at { try Self.checkYear(at, field: "performed_at") }
        case .update(let update):
            try update.validate()
        case .cancel(let id, let reason):
            try InputRules.checkIdentifier(id, field: "procedure_id")
            if let reason { try InputRules.checkText(reason, field: "reason") }
        case .reschedule(let id, let performedAt, let timeZone):
            try InputRules.checkIdentifier(id, field: "procedure_id")
            guard performedAt != nil || timeZone != nil else {
                throw ValidationError(field: "reschedule", problem: "needs performed_at or time_zone")
            }
            if let performedAt { try Self.checkYear(performedAt, field: "performed_at") }
            if let timeZone { try InputRules.checkTimeZone(timeZone, field: "time_zone") }
        case .replay(.reminder(let id)):
            try InputRules.checkReminderID(id, field: "reminder_id")
        case .replay(.procedure(let id)):
            try InputRules.checkIdentifier(id, field: "procedure_id")
        case .replay(.deadSince(let date)):
            try Self.checkYear(date, field: "dead_since")
        }
    }

    static func checkYear(_ date: Date, field: String) throws(ValidationError) {
        let year = Calendar(identifier: .gregorian).component(.year, from: date)
        guard (2000...2100).contains(year) else {
            throw ValidationError(field: field, problem: "year \(year) is outside 2000-2100")
        }
    }
}

/// Which dead reminders a replay re-queues.
public enum ReplayScope: Sendable, Hashable {
    case reminder(String)
    case procedure(String)
    /// Every reminder that went dead at or after this instant.
    case deadSince(Date)
}

/// Why an intake file could not be read. `line` is the JSON Lines line, when there is one.
public struct IntakeError: Error, Sendable, Hashable, CustomStringConvertible {
    public var line: Int?
    /// The procedure the refused request is about; only ever a valid id, as it reaches the log.
    public var procedureID: String?
    public var problem: String

    /// - Parameter procedureID: kept only when it is a valid id; an invalid one is named in
    ///   `problem`, escaped, instead.
    public init(line: Int? = nil, procedureID: String? = nil, problem: String) {
        self.line = line
        self.procedureID = procedureID.flatMap { id in
            (try? InputRules.checkIdentifier(id, field: "procedure_id")) == nil ? nil : id
        }
        self.problem = problem
    }

    /// One line, with every untrusted part escaped.
    public var description: String {
        var parts: [String] = []
        if let line { parts.append("line \(line)") }
        if let procedureID { parts.append("procedure \(procedureID)") }
        let problem = InputRules.printable(problem, limit: 400)
        return parts.isEmpty ? problem : parts.joined(separator: ", ") + ": " + problem
    }
}

/// Reads and writes intake files.
public enum IntakeCodec {
    /// Parses a whole intake file: one JSON object, or JSON Lines. Every request is validated; the
    /// first problem fails the whole file (so a file is ingested entirely or not at all).
    public static func decode(_ data: Data) throws(IntakeError) -> [IntakeRequest] {
        guard data.count <= 256 * 1024 * 1024 else { throw IntakeError(problem: "file larger than 256 MiB") }
        let result = data.withUnsafeBytes { bytes -> Result<[IntakeRequest], IntakeError> in
            do throws(IntakeError) {
                return .success(try decode(bytes))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// ``decode(_:)`` over the file's bytes: each line is read by ``QuickJSON`` when it can, and
    /// through `JSONSerialization` (with its wording for every refusal) when it cannot.
    private static func decode(_ bytes: UnsafeRawBufferPointer) throws(IntakeError) -> [IntakeRequest] {
        // Lines that are not blank, each with its number in the file.
        var nonBlank: [(number: Int, range: Range<Int>)] = []
        var start = 0
        var number = 1
        var blank = true
        for index in 0...bytes.count {
            if index == bytes.count || bytes[index] == UInt8(ascii: "\n") {
                if !blank { nonBlank.append((number, start..<index)) }
                start = index + 1
                number += 1
                blank = true
            } else if blank, !isSpace(bytes[index]) {
                blank = false
            }
        }
        guard !nonBlank.isEmpty else { throw IntakeError(problem: "the file is empty") }
        // A single pretty-printed object spans lines; JSON Lines has one object per line.
        if nonBlank.count > 1, bytes.count <= maxRequestBytes,
            (try? JSONSerialization.jsonObject(with: Data(bytes))) is [String: Any]
        {
            return [try decodeOne(Data(bytes), line: nil)]
        }
        var requests: [IntakeRequest] = []
        requests.reserveCapacity(nonBlank.count)
        for (lineNumber, range) in nonBlank {
            let number = nonBlank.count > 1 ? lineNumber : nil
            // Refused before parsing: a parser holds several copies of what it reads, so a huge line
            // would cost many times its size in memory.
            guard range.count <= maxRequestBytes else {
                throw IntakeError(
                    problem: (number.map { "line \($0): " } ?? "") + "a request of \(range.count) bytes; "
                        + "one request is at most \(maxRequestBytes / 1024) KiB")
            }
            let line = UnsafeRawBufferPointer(rebasing: bytes[range])
            if let request = decodeQuick(line) {
                requests.append(request)
            } else {
                requests.append(try decodeOne(Data(line), line: number))
            }
        }
        return requests
    }

    /// The general decoder, for tests that check the quick path reads exactly what it reads.
    static func decodeGeneral(_ data: Data, line: Int?) throws(IntakeError) -> IntakeRequest {
        try decodeOne(data, line: line)
    }

    /// A procedure record (the bulk of every import) read through ``QuickJSON``; nil for any other
    /// kind, any shape it does not take, and any request that fails a check, all of which the
    /// general path reads (and refuses) in its own words.
    static func decodeQuick(_ line: UnsafeRawBufferPointer) -> IntakeRequest? {
        guard let members = QuickJSON.parseObject(line) else { return nil }
        var id: String?
        var protocolID: String?
        var performedAtText: String?
        var patientMembers: [QuickJSON.Member]?
        var force = false
        var requestedBy: String?
        for member in members {
            switch (member.key, member.value) {
            case ("kind", .string("procedure")): continue
            case ("procedure_id", .string(let text)): id = text
            case ("protocol", .string(let text)): protocolID = text
            case ("performed_at", .string(let text)): performedAtText = text
            case ("patient", .object(let object)): patientMembers = object
            case ("force", .bool(let value)): force = value
            case ("requested_by", .string(let text)): requestedBy = text
            default: return nil
            }
        }
        guard let id, let protocolID, let performedAtText, let patientMembers,
            let performedAt = Timestamp.parse(performedAtText)
        else { return nil }
        var patientID: String?
        var firstName: String?
        var zone: String?
        var routes: [ContactRoute]?
        for member in patientMembers {
            switch (member.key, member.value) {
            case ("id", .string(let text)): patientID = text
            case ("first_name", .string(let text)): firstName = text
            case ("time_zone", .string(let text)): zone = text
            case ("routes", .array(let items)):
                var list: [ContactRoute] = []
                list.reserveCapacity(items.count)
                for item in items {
                    guard case .object(let routeMembers) = item, let route = quickRoute(routeMembers) else {
                        return nil
                    }
                    list.append(route)
                }
                routes = list
            default: return nil
            }
        }
        guard let patientID, let zone, let routes else { return nil }
        if let requestedBy, (try? InputRules.checkActor(requestedBy, field: "requested_by")) == nil { return nil }
        let request = IntakeRequest.procedure(
            Procedure(
                id: id, protocolID: protocolID, performedAt: performedAt,
                patient: Patient(id: patientID, firstName: firstName, timeZone: zone, routes: routes)),
            force: force)
        guard (try? request.validate()) != nil else { return nil }
        return request
    }

    private static func quickRoute(_ members: [QuickJSON.Member]) -> ContactRoute? {
        var channel: String?
        var address: String?
        var optedOut = false
        for member in members {
            switch (member.key, member.value) {
            case ("channel", .string(let text)): channel = text
            case ("to", .string(let text)): address = text
            case ("opted_out", .bool(let value)): optedOut = value
            default: return nil
            }
        }
        guard let channel, let address else { return nil }
        return ContactRoute(channel: channel, address: address, optedOut: optedOut)
    }

    /// The most one request (one line of JSON Lines, or one pretty-printed object) may hold. A real
    /// one is a few hundred bytes.
    public static let maxRequestBytes = 64 * 1024

    /// Who a file's requests say asked for them (`requested_by`, written by the staff commands),
    /// if any line says so. Self-declared: the daemon prefers the file's owner when it can see it.
    public static func requestedBy(_ data: Data) -> String? {
        for line in data.split(separator: UInt8(ascii: "\n")).prefix(1) where line.count <= maxRequestBytes {
            if let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                let name = object["requested_by"] as? String,
                (try? InputRules.checkActor(name, field: "requested_by")) != nil
            {
                return name
            }
        }
        return nil
    }

    /// Encodes one request as a single JSON line (no trailing newline), optionally saying who asked.
    public static func encode(_ request: IntakeRequest, requestedBy: String? = nil) -> Data {
        var object: [String: Any] = [:]
        switch request {
        case .procedure(let procedure, let force):
            object = encodeProcedure(procedure, timeKey: "performed_at")
            if force { object["force"] = true }
        case .book(let procedure):
            object = encodeProcedure(procedure, timeKey: "planned_at")
            object["kind"] = "book"
        case .move(let id, let plannedAt, let timeZone):
            object = ["kind": "move", "procedure_id": id]
            let zone = timeZone.flatMap(TimeZone.init(identifier:)) ?? .gmt
            object["planned_at"] = Timestamp.format(plannedAt, in: zone)
            if let timeZone { object["time_zone"] = timeZone }
        case .performed(let id, let at, let force):
            object = ["kind": "performed", "procedure_id": id]
            if let at { object["performed_at"] = Timestamp.format(at, in: .gmt) }
            if force { object["force"] = true }
        case .update(let update):
            object = ["kind": "update", "patient_id": update.patientID]
            if let id = update.procedureID { object["procedure_id"] = id }
            if let firstName = update.firstName { object["first_name"] = firstName }
            if let routes = update.routes { object["routes"] = routes.map(encodeRoute) }
            if !update.optOut.isEmpty { object["opt_out"] = update.optOut }
            if !update.optIn.isEmpty { object["opt_in"] = update.optIn }
        case .cancel(let id, let reason):
            object = ["kind": "cancel", "procedure_id": id]
            if let reason { object["reason"] = reason }
        case .reschedule(let id, let performedAt, let timeZone):
            object = ["kind": "reschedule", "procedure_id": id]
            let zone = timeZone.flatMap(TimeZone.init(identifier:)) ?? .gmt
            if let performedAt { object["performed_at"] = Timestamp.format(performedAt, in: zone) }
            if let timeZone { object["time_zone"] = timeZone }
        case .replay(let scope):
            object = ["kind": "replay"]
            switch scope {
            case .reminder(let id): object["reminder_id"] = id
            case .procedure(let id): object["procedure_id"] = id
            case .deadSince(let date): object["dead_since"] = Timestamp.format(date, in: .gmt)
            }
        }
        if let requestedBy { object["requested_by"] = requestedBy }
        // Sorted keys keep files stable and diffable.
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
    }

    private static func encodeRoute(_ route: ContactRoute) -> [String: Any] {
        var entry: [String: Any] = ["channel": route.channel, "to": route.address]
        if route.optedOut { entry["opted_out"] = true }
        return entry
    }

    private static func encodeProcedure(_ procedure: Procedure, timeKey: String) -> [String: Any] {
        var patient: [String: Any] = [
            "id": procedure.patient.id,
            "time_zone": procedure.patient.timeZone,
            "routes": procedure.patient.routes.map(encodeRoute),
        ]
        if let firstName = procedure.patient.firstName { patient["first_name"] = firstName }
        return [
            "procedure_id": procedure.id,
            "protocol": procedure.protocolID,
            timeKey: Timestamp.format(procedure.performedAt, in: procedure.patientTimeZone),
            "patient": patient,
        ]
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0D || byte == 0x0A
    }

    private static func decodeOne(_ data: Data, line: Int?) throws(IntakeError) -> IntakeRequest {
        let raw: Any
        do {
            raw = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw IntakeError(line: line, problem: "not valid JSON")
        }
        guard let object = raw as? [String: Any] else {
            throw IntakeError(line: line, problem: "expected a JSON object")
        }
        var fields = Fields(object: object, line: line)
        if let requestedBy = try fields.optionalString("requested_by") {
            try check(line, nil) { () throws(ValidationError) in
                try InputRules.checkActor(requestedBy, field: "requested_by")
            }
        }
        let kind = try fields.optionalString("kind") ?? "procedure"
        let request: IntakeRequest
        switch kind {
        case "procedure":
            let procedure = try decodeProcedure(&fields, timeKey: "performed_at")
            request = .procedure(procedure, force: try fields.optionalBool("force") ?? false)
        case "book":
            request = .book(try decodeProcedure(&fields, timeKey: "planned_at"))
        case "move":
            let id = try fields.string("procedure_id")
            guard let plannedAt = try fields.optionalTimestamp("planned_at") else {
                throw IntakeError(line: line, procedureID: id, problem: "missing field 'planned_at'")
            }
            request = .move(procedureID: id, plannedAt: plannedAt, timeZone: try fields.optionalString("time_zone"))
        case "performed":
            request = .performed(
                procedureID: try fields.string("procedure_id"), at: try fields.optionalTimestamp("performed_at"),
                force: try fields.optionalBool("force") ?? false)
        case "update":
            request = .update(try decodeUpdate(&fields))
        case "cancel":
            request = .cancel(
                procedureID: try fields.string("procedure_id"), reason: try fields.optionalString("reason"))
        case "reschedule":
            request = .reschedule(
                procedureID: try fields.string("procedure_id"),
                performedAt: try fields.optionalTimestamp("performed_at"),
                timeZone: try fields.optionalString("time_zone"))
        case "replay":
            if let reminder = try fields.optionalString("reminder_id") {
                request = .replay(.reminder(reminder))
            } else if let id = try fields.optionalString("procedure_id") {
                request = .replay(.procedure(id))
            } else if let since = try fields.optionalTimestamp("dead_since") {
                request = .replay(.deadSince(since))
            } else {
                throw IntakeError(line: line, problem: "replay needs reminder_id, procedure_id or dead_since")
            }
        default:
            throw IntakeError(
                line: line,
                problem: "unknown kind '\(InputRules.printable(kind, limit: 40))' "
                    + "(expected procedure, book, move, performed, update, cancel, reschedule or replay)"
            )
        }
        try check(line, request.procedureID) { () throws(ValidationError) in try request.validate() }
        try fields.rejectUnknown(procedureID: request.procedureID)
        return request
    }

    private static func decodeProcedure(_ fields: inout Fields, timeKey: String) throws(IntakeError) -> Procedure {
        let id = try fields.string("procedure_id")
        let protocolID = try fields.string("protocol")
        guard let performedAtText = try fields.optionalString(timeKey) else {
            throw IntakeError(line: fields.line, procedureID: id, problem: "missing field '\(timeKey)'")
        }
        guard let performedAt = Timestamp.parse(performedAtText) else {
            throw IntakeError(
                line: fields.line, procedureID: id,
                problem: "\(timeKey) '\(InputRules.printable(performedAtText))' is not a time with a zone offset "
                    + "such as 2026-11-25T14:30:00-05:00"
            )
        }
        guard let patientObject = fields.take("patient") as? [String: Any] else {
            throw IntakeError(line: fields.line, procedureID: id, problem: "missing or invalid object 'patient'")
        }
        var patientFields = Fields(object: patientObject, line: fields.line, prefix: "patient.")
        let patientID = try patientFields.string("id")
        let firstName = try patientFields.optionalString("first_name")
        let zone = try patientFields.string("time_zone")
        guard let rawRoutes = patientFields.take("routes") as? [Any] else {
            throw IntakeError(line: fields.line, procedureID: id, problem: "missing or invalid array 'patient.routes'")
        }
        try patientFields.rejectUnknown(procedureID: id)
        let routes = try decodeRoutes(rawRoutes, line: fields.line, prefix: "patient.routes", procedureID: id)
        let procedure = Procedure(
            id: id,
            protocolID: protocolID,
            performedAt: performedAt,
            patient: Patient(id: patientID, firstName: firstName, timeZone: zone, routes: routes)
        )
        return procedure
    }

    private static func decodeRoutes(_ rawRoutes: [Any], line: Int?, prefix: String, procedureID: String?)
        throws(IntakeError) -> [ContactRoute]
    {
        var routes: [ContactRoute] = []
        for (index, rawRoute) in rawRoutes.enumerated() {
            guard let routeObject = rawRoute as? [String: Any] else {
                throw IntakeError(line: line, procedureID: procedureID, problem: "\(prefix)[\(index)] is not an object")
            }
            var routeFields = Fields(object: routeObject, line: line, prefix: "\(prefix)[\(index)].")
            let channel = try routeFields.string("channel")
            let address = try routeFields.string("to")
            let optedOut = try routeFields.optionalBool("opted_out") ?? false
            try routeFields.rejectUnknown(procedureID: procedureID)
            routes.append(ContactRoute(channel: channel, address: address, optedOut: optedOut))
        }
        return routes
    }

    private static func decodeUpdate(_ fields: inout Fields) throws(IntakeError) -> PatientUpdate {
        let patientID = try fields.string("patient_id")
        let procedureID = try fields.optionalString("procedure_id")
        var routes: [ContactRoute]?
        if let raw = fields.take("routes"), !(raw is NSNull) {
            guard let list = raw as? [Any] else {
                throw IntakeError(line: fields.line, problem: "'routes' must be an array")
            }
            routes = try decodeRoutes(list, line: fields.line, prefix: "routes", procedureID: procedureID)
        }
        return PatientUpdate(
            patientID: patientID, procedureID: procedureID, firstName: try fields.optionalString("first_name"),
            routes: routes, optOut: try fields.optionalStrings("opt_out"), optIn: try fields.optionalStrings("opt_in"))
    }

    private static func check(
        _ line: Int?,
        _ procedureID: String?,
        _ body: () throws(ValidationError) -> Void
    ) throws(IntakeError) {
        do {
            try body()
        } catch {
            throw IntakeError(line: line, procedureID: procedureID, problem: error.description)
        }
    }

    /// Typed access to a JSON object's fields that remembers which were read, so unknown ones can be
    /// refused rather than silently ignored.
    private struct Fields {
        var object: [String: Any]
        let line: Int?
        var prefix = ""

        mutating func take(_ key: String) -> Any? { object.removeValue(forKey: key) }

        mutating func optionalString(_ key: String) throws(IntakeError) -> String? {
            guard let value = take(key), !(value is NSNull) else { return nil }
            guard let string = value as? String else {
                throw IntakeError(line: line, problem: "'\(prefix)\(key)' must be a string")
            }
            return string
        }

        mutating func string(_ key: String) throws(IntakeError) -> String {
            guard let value = try optionalString(key) else {
                throw IntakeError(line: line, problem: "missing field '\(prefix)\(key)'")
            }
            return value
        }

        mutating func optionalBool(_ key: String) throws(IntakeError) -> Bool? {
            guard let value = take(key), !(value is NSNull) else { return nil }
            guard let bool = value as? Bool else {
                throw IntakeError(line: line, problem: "'\(prefix)\(key)' must be true or false")
            }
            return bool
        }

        mutating func optionalStrings(_ key: String) throws(IntakeError) -> [String] {
            guard let value = take(key), !(value is NSNull) else { return [] }
            guard let list = value as? [Any], list.allSatisfy({ $0 is String }) else {
                throw IntakeError(line: line, problem: "'\(prefix)\(key)' must be an array of strings")
            }
            return list.compactMap { $0 as? String }
        }

        mutating func optionalTimestamp(_ key: String) throws(IntakeError) -> Date? {
            guard let text = try optionalString(key) else { return nil }
            guard let date = Timestamp.parse(text) else {
                throw IntakeError(
                    line: line,
                    problem: "'\(prefix)\(key)' '\(InputRules.printable(text))' is not a time with a zone offset "
                        + "such as 2026-11-25T14:30:00-05:00"
                )
            }
            return date
        }

        func rejectUnknown(procedureID: String?) throws(IntakeError) {
            if let key = object.keys.sorted().first {
                throw IntakeError(
                    line: line, procedureID: procedureID,
                    problem: "unknown field '\(prefix)\(InputRules.printable(key))'"
                )
            }
        }
    }
}

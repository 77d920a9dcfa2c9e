/// How many SMS segments a text takes, by the GSM 03.38 rules carriers bill by.
///
/// A text made only of the GSM 7-bit default alphabet (basic table, and the extension table whose
/// characters `^ { } \ [ ] ~ | €` and form feed each cost two septets) travels as GSM-7: 160 septets
/// in one message, 153 per segment once it is split. Any other character (a curly quote, an en dash,
/// an emoji) turns the whole text into UCS-2: 70 UTF-16 units in one message, 67 per segment. A
/// segment never splits an extension character or a surrogate pair.
public struct SMSLength: Sendable, Hashable, CustomStringConvertible {
    /// The encoding the text needs.
    public enum Encoding: String, Sendable, Hashable {
        case gsm7 = "GSM-7"
        case ucs2 = "UCS-2"
    }

    public let encoding: Encoding
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    public let units: Int
    /// Segments it is sent in.
    public let segments: Int
    /// The first character that forced UCS-2, if any.
    public let firstNonGSM: Character?

    public init(_ text: String) {
        var costs: [Int] = []
        var nonGSM: Character?
        for scalar in text.unicodeScalars {
            if Self.basic.contains(scalar) {
                costs.append(1)
            } else if Self.extended.contains(scalar) {
                costs.append(2)
            } else {
                nonGSM = Character(scalar)
                break
            }
        }
        if nonGSM == nil {
            encoding = .gsm7
            firstNonGSM = nil
            units = costs.reduce(0, +)
            segments = Self.count(costs, single: 160, perSegment: 153)
        } else {
            encoding = .ucs2
            firstNonGSM = nonGSM
            let unitCosts = text.unicodeScalars.map { $0.value > 0xFFFF ? 2 : 1 }
            units = unitCosts.reduce(0, +)
            segments = Self.count(unitCosts, single: 70, perSegment: 67)
        }
    }

    /// `2 SMS segments (GSM-7, 301 septets)`.
    public var description: String {
        let what = encoding == .gsm7 ? "septets" : "UTF-16 units"
        let why = firstNonGSM.map { ", because of '\($0)'" } ?? ""
        return "\(segments) SMS segment\(segments == 1 ? "" : "s") (\(encoding.rawValue), \(units) \(what)\(why))"
    }

    /// Segments for characters of these costs: one message if all fit, else packed greedily.
    static func count(_ costs: [Int], single: Int, perSegment: Int) -> Int {
        let total = costs.reduce(0, +)
        if total <= single { return 1 }
        var segments = 1
        var used = 0
        for cost in costs {
            if used + cost > perSegment {
                segments += 1
                used = 0
            }
            used += cost
        }
        return segments
    }

    /// The GSM 03.38 default alphabet (basic table), as Unicode.
    static let basic: Set<Unicode.Scalar> = Set(
        ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
            + "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà").unicodeScalars)

    /// The GSM 03.38 extension table: each costs an escape and the character.
    static let extended: Set<Unicode.Scalar> = Set("\u{0C}^{}\\[~]|€".unicodeScalars)
}

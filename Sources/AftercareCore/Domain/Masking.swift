/// Masks contact addresses for display: enough to recognise, not enough to use.
public enum ContactMask {
    /// `jane@example.org` → `j***@example.org`; `+15551234567` → `+1******4567`; other ids keep
    /// their first and last two characters.
    public static func mask(_ address: String) -> String {
        let characters = Array(address)
        if let at = characters.firstIndex(of: "@"), at > 0 {
            return String(characters[0]) + "***" + String(characters[at...])
        }
        if characters.first == "+", characters.count > 6 {
            return String(characters[0..<2]) + String(repeating: "*", count: characters.count - 6)
                + String(characters[(characters.count - 4)...])
        }
        guard characters.count > 4 else { return String(repeating: "*", count: characters.count) }
        return String(characters[0..<2]) + "***" + String(characters[(characters.count - 2)...])
    }
}

import Foundation

/// The clinic the daemon test harnesses run: New York, the shipped protocol, every channel to a
/// file outbox under `state/`.
public enum TestClinic {
    /// The checkout this file is in.
    public static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// The configuration text, with `sections` (more TOML tables) after the common ones.
    public static func config(_ sections: String) -> String {
        let protocolFile = repositoryRoot.appendingPathComponent("Config/protocols/trigger-point-injection.toml").path
        return """
            [clinic]
            name = "Riverside Pain Clinic"
            phone = "+1 555-010-2030"
            time_zone = "America/New_York"

            [paths]
            state_directory = "state"

            [protocols]
            files = ["\(protocolFile)"]

            [channels]
            sms = "outbox"
            email = "outbox"

            [senders.outbox]
            kind = "file"
            outbox = "state/outbox"

            \(sections)
            """
    }
}

import AftercareCore
import AftercareStore
import Foundation

/// A temporary folder removed when the value is dropped.
final class TemporaryFolder: Sendable {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "aftercare-store-tests-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

enum Fixture {
    static let base = Date(timeIntervalSince1970: 1_795_000_000)  // 2026-11-18T...Z

    static func procedure(_ id: String, patient: String = "MRN-1", at: Date = base) -> Procedure {
        Procedure(
            id: id, protocolID: "trigger-point-injection", performedAt: at,
            patient: Patient(
                id: patient, firstName: "Ana", timeZone: "America/New_York",
                routes: [ContactRoute(channel: "sms", address: "+15551234567")]
            )
        )
    }

    /// A three-step plan laid out by hand (the real planner is tested in Core): 0 h, +24 h, +48 h,
    /// each valid for 6 h; steps whose window has passed at `now` come back expired.
    static let plan: PlanFunction = { procedure, now in
        let steps: [(String, Double)] = [("ice", 0), ("checkin-24h", 86400), ("checkin-48h", 172_800)]
        return .success(
            steps.map { id, offset in
                let nominal = procedure.performedAt.addingTimeInterval(offset)
                let expires = nominal.addingTimeInterval(6 * 3600)
                let expired = now > expires
                return PlannedReminder(
                    stepID: id, nominalAt: nominal, dueAt: max(nominal, now), expiresAt: expires,
                    state: expired ? .expired : .scheduled, note: expired ? "window closed" : nil
                )
            }
        )
    }

    static func file(_ name: String, _ requests: [IntakeRequest]) -> IntakeBatchFile {
        IntakeBatchFile(name: name, requests: requests, actor: "tester")
    }
}

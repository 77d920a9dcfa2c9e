import AftercareConfig
import Foundation
import Testing

@Suite("[appointments] in the configuration")
struct AppointmentConfigTests {
    let base = ConfigTests()

    @Test("close_unconfirmed_after defaults to 12 h, is read from the file, and a bad value names its line")
    func closeUnconfirmedAfter() throws {
        #expect(try AftercareConfiguration.load(path: ConfigTests.example).appointments.closeUnconfirmedAfter == 12 * 3600)
        let six = try base.variant { $0.replacingOccurrences(of: #"close_unconfirmed_after = "12h""#, with: #"close_unconfirmed_after = "6h""#) }
        #expect(try AftercareConfiguration.load(path: six).appointments.closeUnconfirmedAfter == 6 * 3600)
        let removed = try base.variant { $0.replacingOccurrences(of: #"close_unconfirmed_after = "12h""#, with: "") }
        #expect(try AftercareConfiguration.load(path: removed).appointments.closeUnconfirmedAfter == 12 * 3600)
        let error = try #require(try base.loadError {
            $0.replacingOccurrences(of: #"close_unconfirmed_after = "12h""#, with: #"close_unconfirmed_after = "1m""#)
        })
        #expect(error.description.contains("close_unconfirmed_after"), "\(error)")
        #expect(error.line != nil)
        let unknown = try #require(try base.loadError {
            $0.replacingOccurrences(of: "[appointments]", with: "[appointments]\nclose_after = \"1h\"")
        })
        #expect(unknown.description.contains("close_after"), "\(unknown)")
    }
}

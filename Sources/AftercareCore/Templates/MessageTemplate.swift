import Foundation

/// A message template: plain text with named fields in braces. The fields and their rendering are
/// specified in the protocol file documentation (`Config/protocols/README.md`).
///
/// PLACEHOLDER: parsing and rendering are implemented in the planner/templates work.
public struct MessageTemplate: Sendable, Hashable {
    /// The template as written in the protocol file.
    public let source: String

    public init(parsing source: String) throws(TemplateError) {
        self.source = source
    }

    /// Renders the template for one reminder.
    public func render(_ context: TemplateContext) -> String { source }
}

/// Why a template was refused when its protocol was loaded.
public struct TemplateError: Error, Sendable, Hashable, CustomStringConvertible {
    public var problem: String
    public init(problem: String) { self.problem = problem }
    public var description: String { problem }
}

/// Everything a template may draw on for one reminder.
public struct TemplateContext: Sendable {
    public var procedure: Procedure
    public var policy: ClinicPolicy
    /// When the message is being sent: relative words ("today", "tomorrow") are reckoned from it.
    public var sendAt: Date

    public init(procedure: Procedure, policy: ClinicPolicy, sendAt: Date) {
        self.procedure = procedure
        self.policy = policy
        self.sendAt = sendAt
    }
}

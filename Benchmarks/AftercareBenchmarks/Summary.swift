/// One row of the closing table: what was measured, its target, and whether it was met.
struct Figure {
    var name: String
    var target: String
    var measured: String
    /// `nil` for a reference figure with no target of its own.
    var met: Bool?
}

/// The figures as one markdown table, ready to paste into the README.
func markdownTable(_ figures: [Figure]) -> String {
    var lines = ["| figure | target | measured | met? |", "| --- | --- | --- | --- |"]
    for figure in figures {
        let met = figure.met.map { $0 ? "yes" : "**no**" } ?? "—"
        lines.append("| \(figure.name) | \(figure.target) | \(figure.measured) | \(met) |")
    }
    return lines.joined(separator: "\n")
}

extension Int {
    /// `1000000` as `1,000,000`.
    var grouped: String {
        let digits = Array(String(Swift.abs(self)))
        var out = ""
        for (index, digit) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0 { out.append(",") }
            out.append(digit)
        }
        return (self < 0 ? "-" : "") + out
    }
}

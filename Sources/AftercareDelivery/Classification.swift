import AftercareCore
import CCurl
import Foundation

/// How a finished transfer maps to a delivery outcome.
enum Classification {
    /// libcurl results that no retry will fix: a certificate that does not verify, a scheme that is
    /// not allowed, a malformed URL, credentials refused, a relay without the required STARTTLS.
    static let permanentCurlCodes: Set<UInt32> = [
        CURLE_UNSUPPORTED_PROTOCOL.rawValue, CURLE_URL_MALFORMAT.rawValue, CURLE_PEER_FAILED_VERIFICATION.rawValue,
        CURLE_SSL_CACERT_BADFILE.rawValue, CURLE_SSL_CERTPROBLEM.rawValue, CURLE_SSL_ISSUER_ERROR.rawValue,
        CURLE_LOGIN_DENIED.rawValue, CURLE_USE_SSL_FAILED.rawValue, CURLE_SSL_PINNEDPUBKEYNOTMATCH.rawValue,
    ]

    /// HTTP: 2xx delivered; 408, 429, 5xx and network errors retry (honouring `Retry-After`);
    /// 3xx (never followed) and other 4xx fail.
    static func http(_ response: CurlResponse, now: Date = Date()) -> SendResult {
        guard response.succeeded else {
            let reason = "network: \(response.error) (curl \(response.code))"
            if permanentCurlCodes.contains(UInt32(response.code)) {
                return SendResult(.failed(reason: reason), responseCode: nil)
            }
            return SendResult(.retry(after: nil, reason: reason), responseCode: nil)
        }
        let status = response.responseCode
        switch status {
        case 200..<300:
            return SendResult(.delivered(detail: "HTTP \(status)"), responseCode: status)
        case 408, 429, 500..<600:
            return SendResult(
                .retry(after: retryAfter(response.headers["retry-after"], now: now), reason: "HTTP \(status)"),
                responseCode: status)
        case 300..<400:
            let location = response.headers["location"].map { " to \(InputRules.printable($0))" } ?? ""
            return SendResult(.failed(reason: "HTTP \(status): redirect\(location) not followed"), responseCode: status)
        default:
            return SendResult(.failed(reason: "HTTP \(status)" + excerpt(response.body)), responseCode: status)
        }
    }

    /// SMTP: 2xx delivered; 4xx replies and connection failures retry; 5xx replies fail. A failure
    /// quotes the relay's reply (`SMTP 550 5.1.1 No such user`); a relay that cannot secure the
    /// connection (no STARTTLS, a TLS handshake that fails) is said as such, never with the
    /// harmless-looking reply code that came before it.
    static func smtp(_ response: CurlResponse) -> SendResult {
        let reply = response.responseCode
        if response.succeeded {
            return SendResult(.delivered(detail: "SMTP \(reply)"), responseCode: reply)
        }
        let curl = "(curl \(response.code))"
        let reason: String
        if tlsFailureCodes.contains(UInt32(response.code)) {
            reason = "cannot secure the connection to the relay: \(response.error) \(curl)"
        } else if reply >= 400 {
            let words = response.reply.isEmpty ? "\(reply) \(response.error)" : response.reply
            reason = "SMTP " + InputRules.printable(String(words.prefix(300))) + " \(curl)"
        } else {
            // A 2xx or 3xx reply did not fail the send: the connection or libcurl did.
            reason = "SMTP: \(response.error) \(curl)"
        }
        if reply >= 500 || permanentCurlCodes.contains(UInt32(response.code)) {
            return SendResult(.failed(reason: reason), responseCode: reply >= 400 ? reply : nil)
        }
        return SendResult(.retry(after: nil, reason: reason), responseCode: reply >= 400 ? reply : nil)
    }

    /// libcurl results that mean the connection could not be made secure.
    static let tlsFailureCodes: Set<UInt32> = [
        CURLE_USE_SSL_FAILED.rawValue, CURLE_SSL_CONNECT_ERROR.rawValue, CURLE_PEER_FAILED_VERIFICATION.rawValue,
        CURLE_SSL_CACERT_BADFILE.rawValue, CURLE_SSL_CERTPROBLEM.rawValue, CURLE_SSL_ISSUER_ERROR.rawValue,
        CURLE_SSL_PINNEDPUBKEYNOTMATCH.rawValue,
    ]

    /// `Retry-After` as seconds from now: delta-seconds or an HTTP-date.
    static func retryAfter(_ value: String?, now: Date) -> TimeInterval? {
        guard let value = value?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
        if let seconds = Int(value), seconds >= 0 { return TimeInterval(seconds) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: value) else { return nil }
        return max(0, date.timeIntervalSince(now))
    }

    private static func excerpt(_ body: Data) -> String {
        guard !body.isEmpty else { return "" }
        let text = InputRules.printable(String(decoding: body.prefix(160), as: UTF8.self))
        return ": " + text
    }
}


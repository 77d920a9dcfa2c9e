import AftercareCore
import Testing

@Suite("SMS segments by GSM 03.38")
struct SMSLengthTests {
    @Test("GSM-7: 160 septets in one message, 153 per segment; extension characters cost two and are not split")
    func gsm7() {
        let a = { (count: Int) in String(repeating: "a", count: count) }
        #expect(SMSLength(a(160)).segments == 1)
        #expect(SMSLength(a(161)).segments == 2)
        #expect(SMSLength(a(306)).segments == 2)
        #expect(SMSLength(a(307)).segments == 3)
        #expect(SMSLength(a(159) + "€").units == 161)
        #expect(SMSLength(a(159) + "€").segments == 2)
        #expect(SMSLength(a(158) + "{").segments == 1)
        // 152 + € (2) + 152 = 306 septets, but the € cannot straddle segments 1 and 2.
        #expect(SMSLength(a(152) + "€" + a(152)).segments == 3)
        #expect(SMSLength("Hi Ana, é à ñ Ü ß @ £ ¥ § ¿ ¡ Δ\n").encoding == .gsm7)
        #expect(SMSLength("Hi Ana").description == "1 SMS segment (GSM-7, 6 septets)")
    }

    @Test("UCS-2 once any character is outside GSM-7: 70 units, 67 per segment; emoji cost two")
    func ucs2() {
        let l = { (count: Int) in String(repeating: "ł", count: count) }
        #expect(SMSLength(l(70)).segments == 1)
        #expect(SMSLength(l(71)).segments == 2)
        #expect(SMSLength(l(134)).segments == 2)
        #expect(SMSLength(l(135)).segments == 3)
        let curly = SMSLength("Don’t worry")
        #expect(curly.encoding == .ucs2)
        #expect(curly.description == "1 SMS segment (UCS-2, 11 UTF-16 units, because of '’')")
        #expect(SMSLength(String(repeating: "a", count: 68) + "🙂").units == 70)
        #expect(SMSLength(String(repeating: "a", count: 69) + "🙂").segments == 2)
        #expect(SMSLength("en – dash").encoding == .ucs2)
    }
}

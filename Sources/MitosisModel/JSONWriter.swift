import Foundation

/// An `Encoder` that writes exactly the bytes Foundation's `JSONEncoder` writes with
/// `JSONOutput`'s settings (snake_case keys, `[.sortedKeys, .withoutEscapingSlashes]`, pretty or
/// not), several times faster: keys are converted once per distinct key and cached, values are
/// kept as a light tree of scalars (no number-to-String conversion until written) and written
/// into one byte buffer.
///
/// Byte identity with Foundation is the contract (golden tests compare both on real models):
/// keys sorted by their UTF-8 bytes, a key encoded twice keeps its last value, `" : "` between
/// key and value and two spaces per level when pretty, empty containers as `{\n\n}` / `[\n\n]`,
/// control characters as `\b \f \n \r \t` or `\u00xx`, doubles as their `description` without a
/// trailing `.0`, `Data` as base64, `Date` as seconds since 2001, `URL` as its absolute string,
/// and the keys of `String`-keyed dictionaries left unconverted.
package struct JSONWriter {
    package let pretty: Bool
    /// Compact encodings of the previous documents' parts, reused for equal parts (compact only).
    package let memo: JSONMemo?

    package init(pretty: Bool = true, memo: JSONMemo? = nil) {
        precondition(memo == nil || !pretty, "a memo holds compact JSON")
        self.pretty = pretty
        self.memo = memo
    }

    package func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        guard let memo else { return try encode(value, keys: KeyCache()) }
        return try memo.encoding { try encode(value, keys: KeyCache(memo: memo)) }
    }

    private func encode<T: Encodable>(_ value: T, keys: KeyCache) throws -> [UInt8] {
        let node = try JSONTreeEncoder.wrap(value, keys: keys, codingPath: [])
        var output = JSONBytes(pretty: pretty, keys: keys)
        output.bytes.reserveCapacity(1 << 16)
        output.write(node, depth: 0)
        return output.bytes
    }
}

/// The compact JSON of a document's parts, kept from one encoding to the next so that a
/// document that mostly repeats the one before — an epoch's manifest: of redis's 118 mappings,
/// 6 threads and 14 descriptors, one or two change from one epoch to the next — encodes only
/// what changed. Every value down to `depth` levels below the root (`mappings`, one mapping,
/// one of its fields) that is `Equatable` and equal to the value an earlier encoding had at
/// the same place is written as the bytes it was written as then. In compact JSON a value's
/// bytes depend only on the value, so the place is only where to look.
///
/// Equal means `==` over values whose strings are all ASCII, on both sides: Swift compares
/// strings by canonical equivalence, under which `"K"` equals the KELVIN SIGN and `"é"`
/// composed equals `"e\u{301}"`, so a value with a non-ASCII string is always encoded again
/// (its bytes may differ from an equal value's). The memo is emptied every `lifetime`, which
/// bounds its size.
package final class JSONMemo: @unchecked Sendable {
    package let depth: Int
    private let lifetime: Duration
    private let lock = NSLock()
    /// Only parts whose bytes are ASCII are kept: a non-ASCII string is never reused.
    private var parts: [String: (value: Any, bytes: [UInt8])] = [:]
    private var emptied = ContinuousClock.now
    /// Parts reused and parts encoded, over the memo's life.
    package private(set) var reused = 0, encoded = 0

    package init(depth: Int = 3, lifetime: Duration = .seconds(1)) {
        self.depth = depth
        self.lifetime = lifetime
    }

    /// Runs one encoding.
    fileprivate func encoding(_ body: () throws -> [UInt8]) rethrows -> [UInt8] {
        try lock.withLock {
            if ContinuousClock.now - emptied >= lifetime {
                parts = [:]
                emptied = ContinuousClock.now
            }
            return try body()
        }
    }

    fileprivate func place(_ codingPath: [any CodingKey]) -> String {
        codingPath.map(\.stringValue).joined(separator: "\u{1}")
    }

    /// The bytes `value` was last written as at `place`, if it was equal then and the strings
    /// it encodes are ASCII (equal is then byte for byte).
    fileprivate func bytes<T: Encodable>(at place: String, for value: any Equatable, encoding encodable: T) -> [UInt8]? {
        guard let part = parts[place], Self.equal(value, part.value), ASCIICheck.encodesOnlyASCII(encodable) else { return nil }
        reused += 1
        return part.bytes
    }

    fileprivate func keep(_ value: Any, bytes: [UInt8], at place: String) {
        encoded += 1
        // Compact JSON escapes no non-ASCII character: a value with one has a byte ≥ 0x80.
        guard bytes.allSatisfy({ $0 < 0x80 }) else {
            parts[place] = nil
            return
        }
        parts[place] = (value, bytes)
    }

    private static func equal<E: Equatable>(_ value: E, _ other: Any) -> Bool {
        guard let other = other as? E else { return false }
        return value == other
    }
}

/// Whether every string a value encodes — values and keys, at any depth — is ASCII, found by
/// encoding it into nothing but this check (`JSONMemo`: an equal value may differ byte for
/// byte only through a non-ASCII string). Values of a plain type (no references, so no
/// `String`) and arrays of them are not encoded at all. A walk with `Mirror` took a fifth of
/// protect's CPU for redis's manifests.
private final class ASCIICheck: Encoder {
    /// Thrown to stop at the first non-ASCII string.
    struct NonASCII: Error {}

    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    /// A non-ASCII key seen where no error can be thrown (a nested container's).
    private var nonASCIIKey = false

    static func encodesOnlyASCII<T: Encodable>(_ value: T) -> Bool {
        let check = ASCIICheck()
        do {
            try check.visit(value)
            return !check.nonASCIIKey
        } catch {
            return false
        }
    }

    /// Notes a key met by a nested container or a super encoder.
    func note(_ key: any CodingKey) {
        if (try? Self.check(key.stringValue)) == nil { nonASCIIKey = true }
    }

    static func check(_ text: String) throws {
        var text = text
        let ascii = text.withUTF8 { bytes in bytes.allSatisfy { $0 < 0x80 } }
        if !ascii { throw NonASCII() }
    }

    func visit<T: Encodable>(_ value: T) throws {
        if _isPOD(T.self) { return }
        if T.self == String.self { return try Self.check(unsafeBitCast(value, to: String.self)) }
        if let array = value as? any PlainElements, type(of: array).hasPlainElements { return }
        try value.encode(to: self)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        KeyedEncodingContainer(Keyed<Key>(check: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer { Unkeyed(check: self) }
    func singleValueContainer() -> any SingleValueEncodingContainer { Unkeyed(check: self) }

    private struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let check: ASCIICheck
        var codingPath: [any CodingKey] { [] }

        mutating func encodeNil(forKey key: Key) throws { try ASCIICheck.check(key.stringValue) }
        mutating func encode(_ value: String, forKey key: Key) throws {
            try ASCIICheck.check(key.stringValue)
            try ASCIICheck.check(value)
        }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            try ASCIICheck.check(key.stringValue)
            try check.visit(value)
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            check.note(key)
            return KeyedEncodingContainer(Keyed<NestedKey>(check: check))
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            check.note(key)
            return Unkeyed(check: check)
        }
        mutating func superEncoder() -> any Encoder { check }
        mutating func superEncoder(forKey key: Key) -> any Encoder {
            check.note(key)
            return check
        }
    }

    /// Unkeyed and single-value containers alike: each value visited.
    private struct Unkeyed: UnkeyedEncodingContainer, SingleValueEncodingContainer {
        let check: ASCIICheck
        var codingPath: [any CodingKey] { [] }
        var count = 0

        mutating func encodeNil() throws {}
        mutating func encode(_ value: String) throws {
            count += 1
            try ASCIICheck.check(value)
        }
        mutating func encode<T: Encodable>(_ value: T) throws {
            count += 1
            try check.visit(value)
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            KeyedEncodingContainer(Keyed<NestedKey>(check: check))
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer { Unkeyed(check: check) }
        mutating func superEncoder() -> any Encoder { check }
    }
}

/// An array whose elements may be of a plain type (`ASCIICheck`).
private protocol PlainElements {
    static var hasPlainElements: Bool { get }
}

extension Array: PlainElements {
    static var hasPlainElements: Bool { _isPOD(Element.self) }
}

/// Bytes of compact JSON written as they are (a memo's).
private struct JSONRawBytes: JSONStreamable {
    let bytes: [UInt8]
    func writeJSON(to output: inout JSONBytes, depth: Int) { output.bytes.append(contentsOf: bytes) }
}

// MARK: - The tree

/// One encoded value. Scalars are stored unformatted; containers are references so that a
/// container handed out by `Encoder` can be filled after it was attached to its parent.
package enum JSONNode {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    /// A number already in its JSON spelling (doubles, `Decimal`, 128-bit integers).
    case number(String)
    case string(String)
    case array(JSONArrayBox)
    case object(JSONObjectBox)
    /// A value that writes itself (`JSONStreamable`), with no tree in between.
    case custom(any JSONStreamable)
}

package final class JSONArrayBox {
    package init() {}
    package var elements: [JSONNode] = []
}

package final class JSONObjectBox {
    package init() {}
    /// In the order encoded; sorted (last value of a key wins) when written.
    package var entries: [(key: String, value: JSONNode)] = []
}

/// snake_case of each distinct key, converted once per encoding, and which types Foundation
/// encodes in a way of its own, decided once per type.
package final class KeyCache {
    private var converted: [String: String] = [:]
    private var special: [ObjectIdentifier: Bool] = [:]
    /// The memo of the encoding, if any (`JSONWriter(memo:)`).
    let memo: JSONMemo?

    package init(memo: JSONMemo? = nil) {
        self.memo = memo
    }

    /// `Data`, `Date`, `URL`, `Decimal`, `String`-keyed dictionaries and `JSONNodeConvertible` values.
    func isSpecial<T>(_ type: T.Type) -> Bool {
        if let known = special[ObjectIdentifier(type)] { return known }
        let result = type == Data.self || type == Date.self || type == URL.self || type == Decimal.self
            || type is StringKeyedDictionary.Type || type is JSONNodeConvertible.Type
        special[ObjectIdentifier(type)] = result
        return result
    }

    package func snakeCase(_ key: String) -> String {
        // Already snake_case (ASCII, no capital): what the conversion returns, without a lookup.
        if key.utf8.allSatisfy({ $0 < 0x80 && !Self.isUpper($0) }) { return key }
        if let known = converted[key] { return known }
        let result = Self.convertToSnakeCase(key)
        converted[key] = result
        return result
    }

    /// Foundation's `KeyEncodingStrategy.convertToSnakeCase`: words split at a lower-to-upper
    /// transition and before the last capital of a run of capitals followed by a lowercase
    /// letter, joined with `_`, lowercased.
    static func convertToSnakeCase(_ key: String) -> String {
        // The common case, ASCII letters and digits, without Unicode machinery.
        if key.utf8.allSatisfy({ $0 < 0x80 }) {
            let bytes = Array(key.utf8)
            guard bytes.contains(where: isUpper) else { return key }
            var words: [Range<Int>] = []
            var wordStart = 0
            var searchStart = 1
            let end = bytes.count
            while let upper = bytes[searchStart..<end].firstIndex(where: isUpper) {
                words.append(wordStart..<upper)
                guard let lower = bytes[upper..<end].firstIndex(where: isLower) else {
                    wordStart = upper
                    searchStart = end
                    break
                }
                if lower == upper + 1 {
                    wordStart = upper
                } else {
                    words.append(upper..<(lower - 1))
                    wordStart = lower - 1
                }
                searchStart = lower + 1
                if searchStart > end { searchStart = end }
            }
            words.append(wordStart..<end)
            var result: [UInt8] = []
            result.reserveCapacity(bytes.count + words.count)
            for (index, word) in words.enumerated() {
                if index > 0 { result.append(UInt8(ascii: "_")) }
                for byte in bytes[word] { result.append(isUpper(byte) ? byte + 32 : byte) }
            }
            return String(decoding: result, as: UTF8.self)
        }
        return unicodeSnakeCase(key)
    }

    static func isUpper(_ byte: UInt8) -> Bool { byte >= 0x41 && byte <= 0x5A }
    private static func isLower(_ byte: UInt8) -> Bool { byte >= 0x61 && byte <= 0x7A }

    /// The same algorithm over Unicode scalars (uppercase: categories Lu and Lt).
    private static func unicodeSnakeCase(_ key: String) -> String {
        let scalars = Array(key.unicodeScalars)
        func upper(_ s: Unicode.Scalar) -> Bool {
            s.properties.generalCategory == .uppercaseLetter || s.properties.generalCategory == .titlecaseLetter
        }
        func lower(_ s: Unicode.Scalar) -> Bool { s.properties.generalCategory == .lowercaseLetter }
        guard !scalars.isEmpty else { return key }
        var words: [Range<Int>] = []
        var wordStart = 0, searchStart = 1
        let end = scalars.count
        while searchStart < end, let upperIndex = scalars[searchStart..<end].firstIndex(where: upper) {
            words.append(wordStart..<upperIndex)
            guard let lowerIndex = scalars[upperIndex..<end].firstIndex(where: lower) else {
                wordStart = upperIndex
                searchStart = end
                break
            }
            if lowerIndex == upperIndex + 1 { wordStart = upperIndex } else {
                words.append(upperIndex..<(lowerIndex - 1))
                wordStart = lowerIndex - 1
            }
            searchStart = lowerIndex + 1
        }
        words.append(wordStart..<end)
        return words.map { range in
            var word = String.UnicodeScalarView()
            word.append(contentsOf: scalars[range])
            return String(word).lowercased()
        }.joined(separator: "_")
    }
}

/// A value that builds its own node, faster than through `Encoder` (the graph's tens of
/// thousands of nodes and edges, the descriptors of `inspect`). Its node must be what its
/// `encode(to:)` gives: the golden tests compare both.
package protocol JSONNodeConvertible {
    func jsonNode(keys: KeyCache) throws -> JSONNode
}

/// A value that writes its own JSON straight into the output, without building nodes first: the
/// graph's nodes and edges (tens of thousands of small objects). What it writes must be what
/// its `encode(to:)` gives through `JSONWriter`, byte for byte (the golden tests compare both
/// with Foundation).
package protocol JSONStreamable {
    func writeJSON(to output: inout JSONBytes, depth: Int)
}

/// An array of streamable values, written as `JSONBytes` writes an array node.
package struct JSONStreamedArray<Element: JSONStreamable>: JSONStreamable {
    package let elements: [Element]
    /// How many objects of ~150 bytes (the graph's, pretty) the output should have room for
    /// when this array starts: its own, and those written after it.
    package let reserving: Int
    package init(_ elements: [Element], reserving: Int? = nil) {
        self.elements = elements
        self.reserving = reserving ?? elements.count
    }

    package func writeJSON(to output: inout JSONBytes, depth: Int) {
        // The buffer grows once, not by doubling (each doubling copies and faults in fresh pages).
        output.bytes.reserveCapacity(output.bytes.count + 160 * reserving)
        output.openContainer(UInt8(ascii: "["))
        var first = true
        for element in elements {
            output.startElement(&first, depth: depth)
            element.writeJSON(to: &output, depth: depth + 1)
        }
        output.closeContainer(UInt8(ascii: "]"), depth: depth)
    }
}

extension JSONObjectBox {
    /// Adds `value` under `key` converted to snake_case, as a keyed container does.
    package func add(_ key: String, _ value: JSONNode, keys: KeyCache) {
        entries.append((keys.snakeCase(key), value))
    }
}

/// `[String: Value]` dictionaries: Foundation leaves their keys as they are.
private protocol StringKeyedDictionary {
    var encodableEntries: [(String, any Encodable)] { get }
}

extension Dictionary: StringKeyedDictionary where Key == String, Value: Encodable {
    fileprivate var encodableEntries: [(String, any Encodable)] { map { ($0.key, $0.value as any Encodable) } }
}

// MARK: - The Encoder

private struct PlainKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) {
        stringValue = String(intValue)
        self.intValue = intValue
    }
}

final class JSONTreeEncoder: Encoder {
    let keys: KeyCache
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    private var value: JSONNode?

    init(keys: KeyCache, codingPath: [any CodingKey]) {
        self.keys = keys
        self.codingPath = codingPath
    }

    /// The node for `value`; an encoder that encoded nothing stands for an empty object, as in Foundation.
    static func wrap<T: Encodable>(_ value: T, keys: KeyCache, codingPath: [any CodingKey]) throws -> JSONNode {
        // Metatype comparisons, not `as?` casts: this runs for every value, mostly unspecialized.
        if T.self == String.self { return .string(unsafeBitCast(value, to: String.self)) }
        if T.self == Int.self { return .int(Int64(unsafeBitCast(value, to: Int.self))) }
        if T.self == Int32.self { return .int(Int64(unsafeBitCast(value, to: Int32.self))) }
        if T.self == Int64.self { return .int(unsafeBitCast(value, to: Int64.self)) }
        if T.self == UInt64.self { return .uint(unsafeBitCast(value, to: UInt64.self)) }
        if T.self == UInt32.self { return .uint(UInt64(unsafeBitCast(value, to: UInt32.self))) }
        if T.self == Bool.self { return .bool(unsafeBitCast(value, to: Bool.self)) }
        if let memo = keys.memo, !codingPath.isEmpty, codingPath.count <= memo.depth, let equatable = value as? any Equatable {
            let place = memo.place(codingPath)
            if let bytes = memo.bytes(at: place, for: equatable, encoding: value) { return .custom(JSONRawBytes(bytes: bytes)) }
            var output = JSONBytes(pretty: false, keys: keys)
            output.write(try wrapValue(value, keys: keys, codingPath: codingPath), depth: 0)
            memo.keep(value, bytes: output.bytes, at: place)
            return .custom(JSONRawBytes(bytes: output.bytes))
        }
        return try wrapValue(value, keys: keys, codingPath: codingPath)
    }

    /// `wrap` without the memo.
    private static func wrapValue<T: Encodable>(_ value: T, keys: KeyCache, codingPath: [any CodingKey]) throws -> JSONNode {
        if keys.isSpecial(T.self) {
            switch value {
            case let data as Data: return .string(data.base64EncodedString())
            case let date as Date: return try double(date.timeIntervalSinceReferenceDate, codingPath)
            case let url as URL: return .string(url.absoluteString)
            case let decimal as Decimal: return .number(decimal.description)
            case let convertible as JSONNodeConvertible: return try convertible.jsonNode(keys: keys)
            case let dictionary as StringKeyedDictionary:
                let object = JSONObjectBox()
                for (key, element) in dictionary.encodableEntries {
                    object.entries.append((key, try wrapExistential(element, keys: keys, codingPath: codingPath + [PlainKey(stringValue: key)])))
                }
                return .object(object)
            default: break
            }
        }
        let encoder = JSONTreeEncoder(keys: keys, codingPath: codingPath)
        try value.encode(to: encoder)
        return encoder.value ?? .object(JSONObjectBox())
    }

    private static func wrapExistential(_ value: any Encodable, keys: KeyCache, codingPath: [any CodingKey]) throws -> JSONNode {
        try wrap(value, keys: keys, codingPath: codingPath)
    }

    static func double(_ value: Double, _ codingPath: [any CodingKey]) throws -> JSONNode {
        guard value.isFinite else {
            throw EncodingError.invalidValue(value, .init(codingPath: codingPath, debugDescription: "Unable to encode Double.\(value) directly in JSON."))
        }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        return .number(text)
    }

    static func float(_ value: Float, _ codingPath: [any CodingKey]) throws -> JSONNode {
        guard value.isFinite else {
            throw EncodingError.invalidValue(value, .init(codingPath: codingPath, debugDescription: "Unable to encode Float.\(value) directly in JSON."))
        }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        return .number(text)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        let object: JSONObjectBox
        if case .object(let existing) = value { object = existing } else {
            object = JSONObjectBox()
            value = .object(object)
        }
        return KeyedEncodingContainer(KeyedContainer<Key>(encoder: self, object: object, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        let array: JSONArrayBox
        if case .array(let existing) = value { array = existing } else {
            array = JSONArrayBox()
            value = .array(array)
        }
        return UnkeyedContainer(encoder: self, array: array, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { SingleContainer(encoder: self) }

    fileprivate func set(_ node: JSONNode) { value = node }

    fileprivate struct SingleContainer: SingleValueEncodingContainer {
        let encoder: JSONTreeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }
        mutating func encodeNil() throws { encoder.set(.null) }
        mutating func encode(_ value: Bool) throws { encoder.set(.bool(value)) }
        mutating func encode(_ value: String) throws { encoder.set(.string(value)) }
        mutating func encode(_ value: Double) throws { encoder.set(try JSONTreeEncoder.double(value, codingPath)) }
        mutating func encode(_ value: Float) throws { encoder.set(try JSONTreeEncoder.float(value, codingPath)) }
        mutating func encode(_ value: Int) throws { encoder.set(.int(Int64(value))) }
        mutating func encode(_ value: Int8) throws { encoder.set(.int(Int64(value))) }
        mutating func encode(_ value: Int16) throws { encoder.set(.int(Int64(value))) }
        mutating func encode(_ value: Int32) throws { encoder.set(.int(Int64(value))) }
        mutating func encode(_ value: Int64) throws { encoder.set(.int(value)) }
        mutating func encode(_ value: UInt) throws { encoder.set(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt8) throws { encoder.set(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt16) throws { encoder.set(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt32) throws { encoder.set(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt64) throws { encoder.set(.uint(value)) }
        mutating func encode<T: Encodable>(_ value: T) throws {
            encoder.set(try JSONTreeEncoder.wrap(value, keys: encoder.keys, codingPath: codingPath))
        }
    }

    fileprivate struct KeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let encoder: JSONTreeEncoder
        let object: JSONObjectBox
        let codingPath: [any CodingKey]

        private func put(_ node: JSONNode, _ key: Key) { object.entries.append((encoder.keys.snakeCase(key.stringValue), node)) }

        mutating func encodeNil(forKey key: Key) throws { put(.null, key) }
        mutating func encode(_ value: Bool, forKey key: Key) throws { put(.bool(value), key) }
        mutating func encode(_ value: String, forKey key: Key) throws { put(.string(value), key) }
        mutating func encode(_ value: Double, forKey key: Key) throws { put(try JSONTreeEncoder.double(value, codingPath + [key]), key) }
        mutating func encode(_ value: Float, forKey key: Key) throws { put(try JSONTreeEncoder.float(value, codingPath + [key]), key) }
        mutating func encode(_ value: Int, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int8, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int16, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int32, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int64, forKey key: Key) throws { put(.int(value), key) }
        mutating func encode(_ value: UInt, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt8, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt16, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt32, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt64, forKey key: Key) throws { put(.uint(value), key) }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            put(try JSONTreeEncoder.wrap(value, keys: encoder.keys, codingPath: codingPath + [key]), key)
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            let nested = JSONObjectBox()
            put(.object(nested), key)
            return KeyedEncodingContainer(KeyedContainer<NestedKey>(encoder: encoder, object: nested, codingPath: codingPath + [key]))
        }

        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            let nested = JSONArrayBox()
            put(.array(nested), key)
            return UnkeyedContainer(encoder: encoder, array: nested, codingPath: codingPath + [key])
        }

        mutating func superEncoder() -> any Encoder { superEncoder(named: "super") }
        mutating func superEncoder(forKey key: Key) -> any Encoder { superEncoder(named: key.stringValue) }

        /// A sub-encoder whose value lands under `name` when it is encoded (an object until then).
        private func superEncoder(named name: String) -> any Encoder {
            let sub = JSONTreeEncoder(keys: encoder.keys, codingPath: codingPath + [PlainKey(stringValue: name)])
            let object = JSONObjectBox()
            sub.value = .object(object)
            self.object.entries.append((encoder.keys.snakeCase(name), .object(object)))
            return sub
        }
    }

    fileprivate struct UnkeyedContainer: UnkeyedEncodingContainer {
        let encoder: JSONTreeEncoder
        let array: JSONArrayBox
        let codingPath: [any CodingKey]
        var count: Int { array.elements.count }

        private func put(_ node: JSONNode) { array.elements.append(node) }

        mutating func encodeNil() throws { put(.null) }
        mutating func encode(_ value: Bool) throws { put(.bool(value)) }
        mutating func encode(_ value: String) throws { put(.string(value)) }
        mutating func encode(_ value: Double) throws { put(try JSONTreeEncoder.double(value, codingPath)) }
        mutating func encode(_ value: Float) throws { put(try JSONTreeEncoder.float(value, codingPath)) }
        mutating func encode(_ value: Int) throws { put(.int(Int64(value))) }
        mutating func encode(_ value: Int8) throws { put(.int(Int64(value))) }
        mutating func encode(_ value: Int16) throws { put(.int(Int64(value))) }
        mutating func encode(_ value: Int32) throws { put(.int(Int64(value))) }
        mutating func encode(_ value: Int64) throws { put(.int(value)) }
        mutating func encode(_ value: UInt) throws { put(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt8) throws { put(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt16) throws { put(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt32) throws { put(.uint(UInt64(value))) }
        mutating func encode(_ value: UInt64) throws { put(.uint(value)) }
        mutating func encode<T: Encodable>(_ value: T) throws {
            put(try JSONTreeEncoder.wrap(value, keys: encoder.keys, codingPath: codingPath + [PlainKey(intValue: count)]))
        }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            let nested = JSONObjectBox()
            let path = codingPath + [PlainKey(intValue: count)]
            put(.object(nested))
            return KeyedEncodingContainer(KeyedContainer<NestedKey>(encoder: encoder, object: nested, codingPath: path))
        }

        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
            let nested = JSONArrayBox()
            let path = codingPath + [PlainKey(intValue: count)]
            put(.array(nested))
            return UnkeyedContainer(encoder: encoder, array: nested, codingPath: path)
        }

        mutating func superEncoder() -> any Encoder {
            let sub = JSONTreeEncoder(keys: encoder.keys, codingPath: codingPath + [PlainKey(intValue: count)])
            let object = JSONObjectBox()
            sub.value = .object(object)
            put(.object(object))
            return sub
        }
    }
}

// MARK: - Writing

/// The output buffer and Foundation's layout rules.
package struct JSONBytes {
    let pretty: Bool
    /// snake_case of keys, for values that write themselves.
    let keys: KeyCache
    var bytes: [UInt8] = []
    /// The entries of the graph node or edge being written, its storage reused from one to the next.
    var graphEntries: [(key: String, value: GraphValue)] = []

    init(pretty: Bool, keys: KeyCache) {
        self.pretty = pretty
        self.keys = keys
    }

    /// `[` or `{`, and a newline when pretty.
    package mutating func openContainer(_ bracket: UInt8) {
        bytes.append(bracket)
        if pretty { bytes.append(UInt8(ascii: "\n")) }
    }

    /// Before each element of a container: the comma after the one before, the indentation.
    mutating func startElement(_ first: inout Bool, depth: Int) {
        if first { first = false } else {
            bytes.append(UInt8(ascii: ","))
            if pretty { bytes.append(UInt8(ascii: "\n")) }
        }
        if pretty { indent(depth + 1) }
    }

    /// Before each entry of an object: as `startElement`, then the key and its separator.
    package mutating func startEntry(_ first: inout Bool, key: String, depth: Int) {
        startElement(&first, depth: depth)
        writeString(key)
        if pretty { append(" : ") } else { bytes.append(UInt8(ascii: ":")) }
    }

    /// `]` or `}` on a line of its own when pretty.
    package mutating func closeContainer(_ bracket: UInt8, depth: Int) {
        if pretty {
            bytes.append(UInt8(ascii: "\n"))
            indent(depth)
        }
        bytes.append(bracket)
    }

    mutating func writeInt(_ value: Int64) {
        if value < 0 {
            bytes.append(UInt8(ascii: "-"))
            writeDigits(value.magnitude)
        } else {
            writeDigits(UInt64(value))
        }
    }

    mutating func writeBool(_ value: Bool) { value ? append("true") : append("false") }

    mutating func write(_ node: JSONNode, depth: Int) {
        switch node {
        case .null: append("null")
        case .bool(let value): writeBool(value)
        case .int(let value): writeInt(value)
        case .uint(let value): writeDigits(value)
        case .number(let text): append(text)
        case .string(let text): writeString(text)
        case .array(let array):
            openContainer(UInt8(ascii: "["))
            var first = true
            for element in array.elements {
                startElement(&first, depth: depth)
                write(element, depth: depth + 1)
            }
            closeContainer(UInt8(ascii: "]"), depth: depth)
        case .object(let object):
            openContainer(UInt8(ascii: "{"))
            var first = true
            // Sorted in place: the tree is written once.
            Self.sortEntries(&object.entries)
            for (key, value) in object.entries {
                startEntry(&first, key: key, depth: depth)
                write(value, depth: depth + 1)
            }
            closeContainer(UInt8(ascii: "}"), depth: depth)
        case .custom(let value): value.writeJSON(to: &self, depth: depth)
        }
    }

    /// Sorted by the keys' UTF-8 bytes; of a key encoded twice, the last value (a dictionary's `set`).
    static func sortEntries<Value>(_ entries: inout [(key: String, value: Value)]) {
        if entries.count < 2 { return }
        if entries.count > 32 {
            entries = entries.enumerated().sorted { a, b in
                a.element.key == b.element.key ? a.offset < b.offset : precedes(a.element.key, b.element.key)
            }.map(\.element)
        } else {
            insertionSort(&entries)
        }
        var kept = 0
        for index in entries.indices {
            if kept > 0, entries[kept - 1].key == entries[index].key {
                entries[kept - 1] = entries[index]
            } else {
                if kept != index { entries[kept] = entries[index] }
                kept += 1
            }
        }
        entries.removeLast(entries.count - kept)
    }

    /// Stable, so equal keys keep their order; objects have a few keys, mostly added in order
    /// already (then it only compares neighbours).
    private static func insertionSort<Value>(_ entries: inout [(key: String, value: Value)]) {
        for index in 1..<entries.count {
            var position = index
            while position > 0, precedes(entries[position].key, entries[position - 1].key) {
                entries.swapAt(position, position - 1)
                position -= 1
            }
        }
    }

    static func precedes(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { x in b.withUTF8 { y in precedes(x, y) } }
    }

    static func precedes(_ x: UnsafeBufferPointer<UInt8>, _ y: UnsafeBufferPointer<UInt8>) -> Bool {
        let common = min(x.count, y.count)
        if common > 0 {
            let order = memcmp(x.baseAddress!, y.baseAddress!, common)
            if order != 0 { return order < 0 }
        }
        return x.count < y.count
    }

    /// Two spaces per level, copied from one line of spaces (levels of a graph: 3 per entry).
    mutating func indent(_ level: Int) {
        var rest = 2 * level
        while rest > 0 {
            let count = min(rest, JSONBytes.spaces.count)
            bytes.append(contentsOf: JSONBytes.spaces[..<count])
            rest -= count
        }
    }

    private static let spaces = [UInt8](repeating: UInt8(ascii: " "), count: 64)

    mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func append(_ text: String) {
        var text = text
        text.withUTF8 { bytes.append(contentsOf: $0) }
    }

    package mutating func writeDigits(_ value: UInt64) {
        if value < 10 {
            bytes.append(UInt8(ascii: "0") + UInt8(value))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            var rest = value
            var index = buffer.count
            while rest > 0 {
                index -= 1
                buffer[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            bytes.append(contentsOf: buffer[index...])
        }
    }

    /// Quoted, with Foundation's escapes (slashes left alone).
    package mutating func writeString(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        var text = text
        text.withUTF8 { utf8 in
            var mark = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[mark..<index]))
                mark = index + 1
                bytes.append(UInt8(ascii: "\\"))
                switch byte {
                case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\""))
                case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\"))
                case 0x08: bytes.append(UInt8(ascii: "b"))
                case 0x0C: bytes.append(UInt8(ascii: "f"))
                case 0x0A: bytes.append(UInt8(ascii: "n"))
                case 0x0D: bytes.append(UInt8(ascii: "r"))
                case 0x09: bytes.append(UInt8(ascii: "t"))
                default:
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    bytes.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[mark..<utf8.count]))
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

/// Strings laid side by side as bytes: compared with `memcmp`, with no reference counting.
/// nil when one is not ASCII (where `String`'s order may differ from its bytes').
package struct ASCIIStrings {
    private var bytes: [UInt8] = []
    private var ranges: [Range<Int>] = []

    package init?(_ strings: some Sequence<String>) {
        for var string in strings {
            let start = bytes.count
            let ascii = string.withUTF8 { utf8 in
                bytes.append(contentsOf: utf8)
                return utf8.allSatisfy { $0 < 0x80 }
            }
            guard ascii else { return nil }
            ranges.append(start..<bytes.count)
        }
    }

    /// Whether string `a` sorts before string `b` (indices in the sequence given).
    package func precedes(_ a: Int, _ b: Int) -> Bool {
        let (x, y) = (ranges[a], ranges[b])
        return bytes.withUnsafeBufferPointer { all in
            let common = min(x.count, y.count)
            if common > 0 {
                let order = memcmp(all.baseAddress! + x.lowerBound, all.baseAddress! + y.lowerBound, common)
                if order != 0 { return order < 0 }
            }
            return x.count < y.count
        }
    }
}

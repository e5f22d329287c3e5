import Foundation

/// The one JSON style of every Mitosis document (`inspect`, `graph`, `check`, images…):
/// snake_case keys, sorted, so that output is stable and diffable.
public enum JSONOutput {
    public static func encoder(pretty: Bool = true) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }

    /// Encodes `value` as a UTF-8 string: the bytes `encoder(pretty:)` would write, from the
    /// faster `JSONWriter`.
    public static func string<T: Encodable>(_ value: T, pretty: Bool = true) throws -> String {
        String(decoding: try JSONWriter(pretty: pretty).encode(value), as: UTF8.self)
    }

    /// Encodes `value` as UTF-8 bytes, as `string(_:pretty:)`.
    public static func bytes<T: Encodable>(_ value: T, pretty: Bool = true) throws -> [UInt8] {
        try JSONWriter(pretty: pretty).encode(value)
    }
}

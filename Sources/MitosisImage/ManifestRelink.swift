import Foundation
import MitosisModel

/// A manifest received as JSON, written to disk as received but for its chain link.
///
/// A standby commits an epoch every 50 ms: decoding the primary's manifest (to check it) and
/// encoding it again for `manifest.json` was a large part of its commit. The bytes received are
/// already a manifest in the image format's JSON (snake_case keys; compact); only the chain
/// link — `parent` and `sequence`, which the standby sets for its own directory — differs from
/// what it stores. `relink` replaces those two top-level values in the bytes and leaves every
/// other byte as received, so that the bytes written decode to exactly the manifest the standby
/// checked with those two fields changed (the same decoder reads the same bytes elsewhere).
package enum ManifestRelink {
    /// `bytes` (a JSON object the caller has decoded as a `CheckpointManifest`) with its
    /// top-level `parent` set to `parent` (`null` when nil) and `sequence` to `sequence`.
    /// Refused (nil) unless every top-level key is a plain string without escapes that occurs
    /// once: then no other spelling can be what a decoder reads as `parent` or `sequence`.
    package static func relink(_ bytes: [UInt8], parent: ParentLink?, sequence: Int) -> [UInt8]? {
        guard let members = topLevelMembers(bytes), let sequenceValue = members["sequence"] else { return nil }
        let parentJSON: [UInt8]
        if let parent {
            guard let encoded = try? JSONOutput.bytes(parent, pretty: false) else { return nil }
            parentJSON = encoded
        } else {
            parentJSON = Array("null".utf8)
        }
        var edits: [(range: Range<Int>, with: [UInt8])] = [(sequenceValue, Array(String(sequence).utf8))]
        if let parentValue = members["parent"] {
            edits.append((parentValue, parentJSON))
        } else if parent != nil {
            // Inserted as the first member, right after the opening brace.
            let brace = bytes.firstIndex(of: UInt8(ascii: "{"))!
            edits.append((brace + 1..<brace + 1, Array("\"parent\":".utf8) + parentJSON + [UInt8(ascii: ",")]))
        }
        var result: [UInt8] = []
        result.reserveCapacity(bytes.count + 128)
        var at = 0
        for edit in edits.sorted(by: { $0.range.lowerBound < $1.range.lowerBound }) {
            result.append(contentsOf: bytes[at..<edit.range.lowerBound])
            result.append(contentsOf: edit.with)
            at = edit.range.upperBound
        }
        result.append(contentsOf: bytes[at...])
        return result
    }

    /// The byte range of each top-level member's value; nil when `bytes` is not one JSON object
    /// whose keys are escape-free and distinct. Never reads outside `bytes`.
    static func topLevelMembers(_ bytes: [UInt8]) -> [String: Range<Int>]? {
        var scanner = Scanner(bytes: bytes)
        scanner.skipSpace()
        guard scanner.take(UInt8(ascii: "{")) else { return nil }
        var members: [String: Range<Int>] = [:]
        scanner.skipSpace()
        if scanner.take(UInt8(ascii: "}")) { return scanner.atEndAfterSpace() ? members : nil }
        while true {
            scanner.skipSpace()
            guard let key = scanner.plainKey() else { return nil }
            scanner.skipSpace()
            guard scanner.take(UInt8(ascii: ":")) else { return nil }
            scanner.skipSpace()
            let start = scanner.at
            guard scanner.skipValue(), members.updateValue(start..<scanner.at, forKey: key) == nil else { return nil }
            scanner.skipSpace()
            if scanner.take(UInt8(ascii: ",")) { continue }
            guard scanner.take(UInt8(ascii: "}")) else { return nil }
            return scanner.atEndAfterSpace() ? members : nil
        }
    }

    private struct Scanner {
        let bytes: [UInt8]
        var at = 0

        mutating func skipSpace() {
            while at < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[at]) { at += 1 }
        }

        mutating func take(_ byte: UInt8) -> Bool {
            guard at < bytes.count, bytes[at] == byte else { return false }
            at += 1
            return true
        }

        mutating func atEndAfterSpace() -> Bool {
            skipSpace()
            return at == bytes.count
        }

        /// A key: a string without escapes.
        mutating func plainKey() -> String? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = at
            while at < bytes.count, bytes[at] != UInt8(ascii: "\"") {
                if bytes[at] == UInt8(ascii: "\\") { return nil }
                at += 1
            }
            guard at < bytes.count else { return nil }
            defer { at += 1 }
            return String(decoding: bytes[start..<at], as: UTF8.self)
        }

        /// Skips a string, from its opening quote.
        mutating func skipString() -> Bool {
            guard take(UInt8(ascii: "\"")) else { return false }
            while at < bytes.count {
                switch bytes[at] {
                case UInt8(ascii: "\""): at += 1; return true
                case UInt8(ascii: "\\"): at += 2
                default: at += 1
                }
            }
            return false
        }

        /// Skips one value: a string, an object or array (brackets counted, strings skipped), or
        /// a scalar (up to the next delimiter).
        mutating func skipValue() -> Bool {
            guard at < bytes.count else { return false }
            switch bytes[at] {
            case UInt8(ascii: "\""):
                return skipString()
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                while at < bytes.count {
                    switch bytes[at] {
                    case UInt8(ascii: "\""):
                        guard skipString() else { return false }
                        continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 { at += 1; return true }
                    default: break
                    }
                    at += 1
                }
                return false
            default:
                let start = at
                while at < bytes.count, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D].contains(bytes[at]) { at += 1 }
                return at > start
            }
        }
    }
}

extension ManifestRelink {
    /// The manifest in `bytes` without what only a restore reads (process, threads, mappings,
    /// descriptors, restore record: left empty): its identity, chain link, statistics, page index
    /// summary and digests, decoded from a whole JSON document (the decoder parses all of it, so
    /// its syntax is checked throughout). Decoding the rest into Swift values was a third of a
    /// standby's CPU at 20 epochs a second; it needs them once a second (readiness), for its
    /// warm clone, and to compact, and decodes them then.
    package static func summary(_ bytes: [UInt8]) throws -> CheckpointManifest {
        let decoded = try JSONOutput.decoder().decode(Summary.self, from: Data(bytes))
        var header = CheckpointHeader(id: decoded.id, kind: decoded.kind, parent: decoded.parent, sequence: decoded.sequence,
                                      pid: decoded.pid, pageSize: decoded.pageSize)
        header.created = decoded.created
        var manifest = CheckpointManifest(header: header, tracking: decoded.tracking, mappings: [], stats: decoded.stats)
        manifest.formatVersion = decoded.formatVersion
        manifest.pageIndex = decoded.pageIndex
        manifest.files = decoded.files
        return manifest
    }

    private struct Summary: Decodable {
        var formatVersion: Int
        var id: String
        var kind: CheckpointKind
        var parent: ParentLink?
        var sequence: Int
        var pid: Int32
        var created: String
        var pageSize: Int
        var tracking: String
        var stats: CheckpointStats
        var pageIndex: PageIndexSummary
        var files: [String: FileDigest]
    }
}

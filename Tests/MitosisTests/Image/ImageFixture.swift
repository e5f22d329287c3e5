import Foundation
import Glibc
import SystemPackage
@testable import MitosisImage
@testable import MitosisModel

/// A private temporary directory, removed with everything in it when released.
final class TempDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/mitosis-image-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        path = String(cString: made)
    }

    func sub(_ name: String) -> String { path + "/" + name }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// Synthetic checkpoints: page contents and manifests built without a live process.
enum Synthetic {
    static let page = 4096

    /// `pages` pages of a recognizable pattern: byte i is `(i * 31 + seed) & 0xff`, with the
    /// page number mixed in so that no two pages of one pattern are equal.
    static func pattern(_ seed: UInt8, pages: Int = 1) -> [UInt8] {
        (0..<(pages * page)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 / page &* 7) }
    }

    /// Page ranges from one state per page, adjacent equal states joined.
    static func ranges(from start: UInt64, _ states: [PageState?]) -> [PageRange] {
        var result: [PageRange] = []
        for (number, state) in states.enumerated() {
            guard let state else { continue }
            let at = start + UInt64(number * page)
            if let last = result.last, last.state == state, last.end == at {
                result[result.count - 1].end = at + UInt64(page)
            } else {
                result.append(PageRange(start: at, end: at + UInt64(page), state: state))
            }
        }
        return result
    }

    static func anonymous(_ start: UInt64, _ states: [PageState?]) -> CheckpointMapping {
        CheckpointMapping(start: start, end: start + UInt64(states.count * page), perms: "rw-p", offset: 0,
                          path: nil, kind: "anonymous", pages: ranges(from: start, states))
    }

    /// Writes one image with `sink` (a `DirectorySink` on `directory` by default) and returns its manifest.
    @discardableResult
    static func write(_ directory: String, kind: CheckpointKind = .full, parent: (path: String, manifest: CheckpointManifest)? = nil,
                      mappings: [CheckpointMapping], pages: [(UInt64, [UInt8])],
                      sink: (any CheckpointSink)? = nil) throws -> CheckpointManifest {
        let sink = sink ?? DirectorySink(directory: directory)
        let header = CheckpointHeader(kind: kind, parent: parent.map { ParentLink(path: $0.path, id: $0.manifest.id) },
                                      sequence: parent.map { $0.manifest.sequence + 1 } ?? 0, pid: 4242, pageSize: page)
        try sink.begin(header)
        for (address, bytes) in pages { try sink.writePages(at: address, bytes) }
        let stats = CheckpointStats(pagesScanned: mappings.reduce(0) { $0 + Int($1.end - $1.start) / page },
                                    pagesWritten: pages.reduce(0) { $0 + $1.1.count / page },
                                    bytesWritten: UInt64(pages.reduce(0) { $0 + $1.1.count }))
        return try sink.finish(CheckpointManifest(header: header, tracking: "synthetic", mappings: mappings, stats: stats))
    }

    /// A three-deep chain in `root`: `0` (full), `1` and `2` (incremental), and the bytes that
    /// reading 0x10000..<0x19000 through `2` must give.
    static func chain(in root: TempDirectory) throws -> (paths: [String], manifests: [CheckpointManifest], expected: [UInt8]) {
        let base: UInt64 = 0x10000
        let untouched = [PageState?](repeating: .neverTouched, count: 12)
        let full = try write(root.sub("0"), mappings: [anonymous(base, [.stored, .stored, .stored, .stored] + untouched)],
                             pages: [(base, pattern(1, pages: 4))])
        var states1: [PageState?] = [.inherited, .stored, .inherited, .inherited] + untouched
        states1[8] = .stored
        let first = try write(root.sub("1"), kind: .incremental, parent: ("../0", full), mappings: [anonymous(base, states1)],
                              pages: [(base + 0x8000, pattern(3)), (base + 0x1000, pattern(2))])
        var states2 = states1.map { $0 == .stored ? PageState.inherited : $0 }
        states2[2] = .stored
        let second = try write(root.sub("2"), kind: .incremental, parent: ("../1", first), mappings: [anonymous(base, states2)],
                               pages: [(base + 0x2000, pattern(4))])
        let original = pattern(1, pages: 4)
        var expected = Array(original[0..<page]) + pattern(2) + pattern(4) + Array(original[(3 * page)...])
        expected += [UInt8](repeating: 0, count: 4 * page) + pattern(3)
        return ([root.sub("0"), root.sub("1"), root.sub("2")], [full, first, second], expected)
    }

    /// Recomputes the digests in the manifest and the commit record from the files as they are
    /// now, so that a test can hand a reader structurally hostile content behind valid checksums.
    static func resign(_ directory: String) throws {
        func digest(_ name: String) throws -> FileDigest {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: directory + "/" + name)))
            return FileDigest(size: UInt64(bytes.count), xxh64: Checksum.xxh64(bytes))
        }
        let manifestURL = URL(fileURLWithPath: directory + "/manifest.json")
        let id: String
        if var manifest = try? JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(contentsOf: manifestURL)) {
            manifest.files = ["pages.index": try digest("pages.index"), "pages.data": try digest("pages.data")]
            try JSONOutput.encoder().encode(manifest).write(to: manifestURL)
            id = manifest.id
        } else {
            // An undecodable manifest keeps its bytes; the commit record keeps its id.
            let commit = String(decoding: try bytes(directory + "/COMMIT"), as: UTF8.self)
            id = String(commit.split(separator: "\n")[1].dropFirst(3))
        }
        let commit = ImageFormat.encodeCommit(id: id, files: try ["manifest.json", "pages.index", "pages.data"].map { ($0, try digest($0)) })
        try Data(commit).write(to: URL(fileURLWithPath: directory + "/COMMIT"))
    }

    static func bytes(_ path: String) throws -> [UInt8] { try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) }

    /// Sets the byte of `pages.index`'s header that names the compression (reserved, 0, before
    /// version 3) to `value`, reseals the index and signs the image again: only that byte is wrong.
    static func setIndexCompression(_ directory: String, _ value: UInt8, index original: [UInt8]? = nil) throws {
        var index = try original ?? bytes(directory + "/pages.index")
        index[24] = value
        index.removeLast(8)
        index.appendLittleEndian(Checksum.xxh64(index))
        try overwrite(directory + "/pages.index", index)
        try resign(directory)
    }

    static func overwrite(_ path: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

    /// Flips one byte of a file in place.
    static func flip(_ path: String, at offset: Int) throws {
        var bytes = try self.bytes(path)
        bytes[offset] ^= 0x5A
        try overwrite(path, bytes)
    }
}

import Foundation
import Glibc
import SystemPackage
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel

/// A real chain to damage: checkpoints `1` (full), `2`, `3`… of an `idle` scenario child (libc
/// and the loader mapped from real files, so `clean_file` pages with a recorded identity),
/// taken with the library into a fresh temporary directory.
struct RealChain {
    let root: TempDirectory
    let paths: [String]
    var newest: String { paths[paths.count - 1] }

    static func take(count: Int = 3) async throws -> RealChain {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let root = try TempDirectory()
        let session = try await CheckpointSession(pid: child.pid)
        var paths: [String] = []
        do {
            for number in 1...count {
                let path = root.sub("\(number)")
                _ = try await session.checkpoint(to: DirectorySink(directory: path), parent: number == 1 ? nil : .previous(path: "../\(number - 1)"))
                paths.append(path)
            }
        } catch {
            await session.stop()
            throw error
        }
        await session.stop()
        return RealChain(root: root, paths: paths)
    }

    static func manifest(_ image: String) throws -> CheckpointManifest {
        try JSONOutput.decoder().decode(CheckpointManifest.self, from: Data(contentsOf: URL(fileURLWithPath: image + "/manifest.json")))
    }

    /// Rewrites the manifest of `image` and reseals the image (digests and commit record), so
    /// that only the reader's own checks stand between the edit and a reader.
    static func rewrite(_ image: String, _ edit: (inout CheckpointManifest) throws -> Void) throws {
        var manifest = try self.manifest(image)
        try edit(&manifest)
        try JSONOutput.encoder().encode(manifest).write(to: URL(fileURLWithPath: image + "/manifest.json"))
        try Synthetic.resign(image)
    }

    /// The index of the first mapping of `manifest` at file offset 0 whose pages are all
    /// `clean_file`, with a recorded file.
    static func fileMapping(_ manifest: CheckpointManifest) throws -> Int {
        try #require(manifest.mappings.firstIndex { $0.file != nil && $0.offset == 0 && $0.pages.allSatisfy { $0.state == .cleanFile } })
    }
}

/// Runs the CLI under `timeout`, so that a reader that hangs fails the test instead of the suite.
func boundedRun(_ arguments: [String], seconds: Int = 10) async throws -> (run: ToolRun, seconds: Double) {
    let start = Date()
    let run = try await ToolRun("/usr/bin/timeout", [String(seconds), ToolRun.mitosis] + arguments)
    return (run, Date().timeIntervalSince(start))
}

/// One test per finding of Docs/reliability.md, "Image reader": each builds the hostile image
/// from a real checkpoint of a real child.
@Suite("Hostile images", .serialized)
struct HostileImageTests {
    // MARK: No crash (F2)

    @Test("a COMMIT whose end line holds invalid UTF-8 is malformed, not a trap")
    func commitInvalidUTF8() async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        try Synthetic.overwrite(dir + "/COMMIT", Array("mitosis-checkpoint 1\nend ".utf8) + [UInt8](repeating: 0xFF, count: 20) + [0x0A])
        #expect(throws: ImageError.malformed(dir, file: "COMMIT", detail: "not printable ASCII text")) { try CheckpointImage.open(dir) }
        let verify = try await boundedRun(["images", "verify", dir]).run
        #expect(verify.status == 1)
        #expect(verify.standardError == "mitosis: \(dir): malformed COMMIT: not printable ASCII text\n")
    }

    @Test("page_index.pages of -1, 2^62 or Int.max is a summary mismatch, not a trap", arguments: [-1, 1 << 62, Int.max])
    func pageCount(_ pages: Int) async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        try RealChain.rewrite(dir) { $0.pageIndex.pages = pages }
        #expect(throws: ImageError.malformed(dir, file: "manifest.json", detail: "its page index summary differs from pages.index")) {
            try CheckpointImage.open(dir)
        }
        #expect(try await boundedRun(["images", "show", dir]).run.status == 1)
    }

    @Test("a parent sequence of Int.max breaks the chain with an error, not an overflow")
    func parentSequence() async throws {
        let chain = try await RealChain.take()
        // An incremental parent whose sequence the child's cannot follow.
        try RealChain.rewrite(chain.paths[1]) { $0.sequence = Int.max }
        #expect(CheckpointImage.verifyChain(chain.paths[2])
                == [.malformed(chain.paths[2], file: "manifest.json", detail: "sequence 2 does not follow its parent's 9223372036854775807")])
        // A full parent with that sequence is refused when opened.
        try RealChain.rewrite(chain.paths[1]) { $0.sequence = 1 }
        try RealChain.rewrite(chain.paths[0]) { $0.sequence = Int.max }
        #expect(CheckpointImage.verifyChain(chain.paths[2])
                == [.malformed(chain.paths[0], file: "manifest.json", detail: "a full checkpoint with sequence 9223372036854775807")])
        #expect(try await boundedRun(["images", "verify", chain.paths[2]]).run.status == 1)
        let show = try await boundedRun(["images", "show", chain.paths[2]]).run
        #expect(show.status == 0)
        #expect(show.standardOutput.contains("  chain       broken: \(chain.paths[0]): malformed manifest.json: a full checkpoint with sequence 9223372036854775807\n"))
    }

    @Test("a clean_file offset of 2^63 or 2^64 - 4096 is refused at open, not a trap", arguments: [UInt64(1) << 63, UInt64.max - 4095])
    func fileOffset(_ offset: UInt64) async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        let number = try RealChain.fileMapping(try RealChain.manifest(dir))
        try RealChain.rewrite(dir) { $0.mappings[number].offset = offset }
        #expect(throws: ImageError.malformed(dir, file: "manifest.json",
                                             detail: "mapping \(number) has file offset \(offset), beyond what a file can hold")) {
            try CheckpointImage.open(dir)
        }
        // The kernel layer itself refuses an offset off_t cannot hold.
        let fd = try Kernel.openAt(nil, "/dev/null", flags: O_RDONLY)
        defer { try? fd.close() }
        #expect(throws: Errno.overflow) { try Kernel.readAt(fd, offset: offset, count: 4096) }
    }

    @Test("a clean_file mapping longer than 2^63 bytes is refused at open (found by the fuzzer in the hardened reader)")
    func hugeFileMapping() async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        let number = try RealChain.fileMapping(try RealChain.manifest(dir))
        try RealChain.rewrite(dir) { $0.mappings[number].end = UInt64.max - 4095 }
        #expect(throws: ImageError.malformed(dir, file: "manifest.json",
                                             detail: "mapping \(number) has file offset 0, beyond what a file can hold")) {
            try CheckpointImage.open(dir)
        }
    }

    // MARK: No hang (F3)

    @Test("a FIFO as any image file, or as INCOMPLETE, fails every reader at once",
          arguments: ["COMMIT", "manifest.json", "pages.index", "pages.data", "INCOMPLETE"])
    func fifo(_ file: String) async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        try? FileManager.default.removeItem(atPath: dir + "/" + file)
        #expect(mkfifo(dir + "/" + file, 0o600) == 0)
        let expected: ImageError = file == "INCOMPLETE" ? .incomplete(dir, reason: "no reason recorded")
            : .malformed(dir, file: file, detail: "not a regular file")
        for command in [["verify", dir], ["show", dir], ["read", dir, "--addr", "0x1000", "--len", "1"]] {
            let (run, seconds) = try await boundedRun(["images"] + command)
            #expect(run.status == 1, "\(command[0])")
            #expect(run.standardError == "mitosis: \(expected)\n", "\(command[0])")
            #expect(seconds < 5, "\(command[0]) took \(seconds) s")
        }
    }

    // MARK: No disclosure (F4)

    @Test("clean_file pages are read only from the recorded file: the real one reads back, /etc/shadow does not")
    func cleanFileIdentity() async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        let manifest = try RealChain.manifest(dir)
        let number = try RealChain.fileMapping(manifest)
        let mapping = manifest.mappings[number]
        let page = try #require(mapping.pages.first { $0.state == .cleanFile }).start
        // The recorded file reads back: the bytes at the mapped offset.
        let file = try Kernel.openAt(nil, mapping.path!, flags: O_RDONLY)
        let expected = try Kernel.readAt(file, offset: mapping.offset + (page - mapping.start), count: 64)
        try file.close()
        #expect(try CheckpointImage.open(dir).read(address: page, length: 64) == expected)
        #expect(CheckpointImage.verifyChain(dir).isEmpty)

        // The same mapping pointed at /etc/shadow, every page clean_file.
        let shadow = try Kernel.status("/etc/shadow")
        func point(_ identity: MappedFileIdentity?) throws {
            try RealChain.rewrite(dir) {
                $0.mappings[number].path = "/etc/shadow"
                $0.mappings[number].offset = 0
                $0.mappings[number].pages = [PageRange(start: mapping.start, end: mapping.end, state: .cleanFile)]
                $0.mappings[number].file = identity
            }
        }
        let refusals: [(MappedFileIdentity?, String)] = [
            (nil, "the image records no identity for the file (written by a Mitosis that did not), so its bytes cannot be trusted"),
            (mapping.file, "it is not the file the checkpoint recorded (device, inode, size or modification time differ)"),
            // Everything stat tells, forged: only the content checksum is unknown to the forger.
            (MappedFileIdentity(device: shadow.device, inode: shadow.inode, size: UInt64(shadow.size),
                                mtimeNs: shadow.modificationTime, chunkXxh64: ["0123456789abcdef"]),
             "its content differs from the checkpoint's"),
        ]
        for (identity, reason) in refusals {
            try point(identity)
            #expect(throws: ImageError.notStored(address: mapping.start, detail: "clean_file page of /etc/shadow, which is not read: \(reason)")) {
                try CheckpointImage.open(dir).read(address: mapping.start, length: 64)
            }
            #expect(CheckpointImage.verifyChain(dir) == [.unreadableFile(dir, file: "/etc/shadow", detail: reason)])
            let read = try await boundedRun(["images", "read", dir, "--addr", "0x" + String(mapping.start, radix: 16), "--len", "64"]).run
            #expect(read.status == 1)
            #expect(read.standardOutput.isEmpty)
        }
    }

    @Test("a clean_file path naming a FIFO, a /proc file or a device is refused without reading it",
          arguments: ["fifo", "/proc/version", "/dev/zero"])
    func cleanFileSpecial(_ target: String) async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        let path = target == "fifo" ? chain.root.sub("fifo") : target
        if target == "fifo" { #expect(mkfifo(path, 0o600) == 0) }
        let st = try Kernel.status(path)
        let manifest = try RealChain.manifest(dir)
        let number = try RealChain.fileMapping(manifest)
        let mapping = manifest.mappings[number]
        try RealChain.rewrite(dir) {
            $0.mappings[number].path = path
            $0.mappings[number].offset = 0
            $0.mappings[number].pages = [PageRange(start: mapping.start, end: mapping.end, state: .cleanFile)]
            // The identity of what is there now, so that only the file type can refuse it.
            $0.mappings[number].file = MappedFileIdentity(device: st.device, inode: st.inode, size: UInt64(st.size),
                                                          mtimeNs: st.modificationTime, chunkXxh64: [])
        }
        let reason = target == "/proc/version" ? "it is on a kernel pseudo filesystem (0x9fa0)" : "it is not a regular file"
        let (run, seconds) = try await boundedRun(["images", "read", dir, "--addr", "0x" + String(mapping.start, radix: 16), "--len", "16"])
        #expect(run.status == 1)
        #expect(run.standardError == "mitosis: \(ImageError.notStored(address: mapping.start, detail: "clean_file page of \(path), which is not read: \(reason)"))\n")
        #expect(seconds < 5)
    }

    @Test("a file changed since the checkpoint is not read, even with its identity forged back")
    func cleanFileChanged() throws {
        let root = try TempDirectory()
        let file = root.sub("backing")
        try Synthetic.overwrite(file, Synthetic.pattern(5, pages: 2))
        let identity = try #require(MappedFileIdentity.capture(path: file, inode: try Kernel.status(file).inode,
                                                               offset: 0, length: 0x2000, pageSize: 4096))
        let mapping = CheckpointMapping(start: 0x80000, end: 0x82000, perms: "r--p", offset: 0, path: file, kind: "file",
                                        pages: Synthetic.ranges(from: 0x80000, [.cleanFile, .cleanFile]), file: identity)
        let dir = root.sub("img")
        try Synthetic.write(dir, mappings: [mapping], pages: [])
        #expect(try CheckpointImage.open(dir).read(address: 0x80000, length: 0x2000) == Synthetic.pattern(5, pages: 2))
        // Same size, one byte changed, modification time put back: only the content checksum tells.
        var before = stat()
        #expect(stat(file, &before) == 0)
        try Synthetic.flip(file, at: 5000)
        var times = [before.st_atim, before.st_mtim]
        #expect(utimensat(AT_FDCWD, file, &times, 0) == 0)
        #expect(MappedFile.matches(try Kernel.status(file), identity))
        #expect(throws: ImageError.notStored(address: 0x80000, detail: "clean_file page of \(file), which is not read: its content differs from the checkpoint's")) {
            try CheckpointImage.open(dir).read(address: 0x80000, length: 1)
        }
    }

    // MARK: Bounded memory (F5)

    @Test("a run longer than 256 pages over a sparse 2 GiB pages.data is refused before any read")
    func sparseRun() async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        let length: UInt64 = 2 << 30
        let data = try Kernel.openAt(nil, dir + "/pages.data", flags: O_WRONLY | O_TRUNC)
        try Kernel.truncate(data, to: Int(length))
        try data.close()
        var manifest = try RealChain.manifest(dir)
        let start = manifest.mappings[0].start
        var index = ImageFormat.encodeIndex(pageSize: 4096, runs: [PageRun(address: start, length: length, dataOffset: 0, checksum: 0)])
        index.removeLast(8)
        index.appendLittleEndian(Checksum.xxh64(index))
        try Synthetic.overwrite(dir + "/pages.index", index)
        // Sealed by hand: the data's checksum is never computed at open, so it may be anything.
        manifest.mappings = [CheckpointMapping(start: start, end: start + length, perms: "rw-p", offset: 0, path: nil, kind: "anonymous",
                                               pages: [PageRange(start: start, end: start + length, state: .stored)])]
        manifest.pageIndex = PageIndexSummary(runs: 1, pages: Int(length / 4096), bytes: length)
        let indexDigest = FileDigest(size: UInt64(index.count), xxh64: Checksum.xxh64(index))
        let dataDigest = FileDigest(size: length, xxh64: 0)
        manifest.files = ["pages.index": indexDigest, "pages.data": dataDigest]
        let manifestBytes = try JSONOutput.encoder().encode(manifest)
        try manifestBytes.write(to: URL(fileURLWithPath: dir + "/manifest.json"))
        let commit = ImageFormat.encodeCommit(id: manifest.id, files: [
            ("manifest.json", FileDigest(size: UInt64(manifestBytes.count), xxh64: Checksum.xxh64(manifestBytes))),
            ("pages.index", indexDigest), ("pages.data", dataDigest),
        ])
        try Synthetic.overwrite(dir + "/COMMIT", commit)
        #expect(throws: ImageError.malformed(dir, file: "pages.index", detail: "entry 0 is longer than 256 pages")) { try CheckpointImage.open(dir) }
        let read = try await boundedRun(["images", "read", dir, "--addr", "0x" + String(start, radix: 16), "--len", "16"]).run
        #expect(read.standardError == "mitosis: \(dir): malformed pages.index: entry 0 is longer than 256 pages\n")
    }

    // MARK: Long chains (F7)

    @Test("a chain longer than the open-file limit verifies and reads")
    func longChain() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let root = try TempDirectory()
        let track = try await ToolRun(ToolRun.mitosis, ["track", String(child.pid), "--images", root.sub("c"), "--count", "70", "--interval", "0", "--json"])
        try #require(track.status == 0, "\(track.standardError)")
        let newest = root.sub("c/70")
        let manifest = try RealChain.manifest(newest)
        let page = try #require(manifest.mappings.lazy.flatMap(\.pages).first { $0.state == .inherited }).start
        let limited = ["/bin/sh", "-c", "ulimit -n 40 && exec \"$0\" \"$@\"", ToolRun.mitosis]
        let verify = try await ToolRun("/usr/bin/timeout", ["60"] + limited + ["images", "verify", newest])
        #expect(verify.status == 0, "\(verify.standardError)")
        #expect(verify.standardOutput.hasPrefix("ok: \(newest): 70 image(s), "))
        let read = try await ToolRun("/usr/bin/timeout", ["60"] + limited + ["images", "read", newest, "--addr", "0x" + String(page, radix: 16), "--len", "4096"])
        #expect(read.status == 0, "\(read.standardError)")
        #expect(read.standardOutput.utf8.count > 0)
    }

    // MARK: verify means readable (F9, F10)

    @Test("verify reports inherited pages that no ancestor holds")
    func inheritedWithoutHolder() async throws {
        let chain = try await RealChain.take()
        let manifest = try RealChain.manifest(chain.newest)
        let (number, range) = try #require(manifest.mappings.enumerated().lazy.compactMap { item in
            item.element.pages.firstIndex { $0.state == .neverTouched }.map { (item.offset, $0) }
        }.first)
        let address = manifest.mappings[number].pages[range].start
        try RealChain.rewrite(chain.newest) { $0.mappings[number].pages[range].state = .inherited }
        #expect(CheckpointImage.verifyChain(chain.newest)
                == [.notStored(address: address, detail: "\(chain.newest) records it as inherited but no ancestor holds it")])
        #expect(throws: ImageError.notStored(address: address, detail: "recorded as inherited but no image in the chain holds it")) {
            try CheckpointImage.open(chain.newest).read(address: address, length: 1)
        }
        let verify = try await boundedRun(["images", "verify", chain.newest]).run
        #expect(verify.status == 1)
        #expect(verify.standardOutput.isEmpty)
    }

    @Test("structural contradictions are refused at open: inherited pages in a full image, bad sequences, clean_file without a path, reserved index field")
    func structure() async throws {
        let chain = try await RealChain.take(count: 2)
        let full = chain.paths[0], incremental = chain.paths[1]
        let manifest = try RealChain.manifest(full)
        let anonymous = try #require(manifest.mappings.firstIndex { $0.pages.contains { $0.state == .stored } })
        let saved = try ["manifest.json", "pages.index", "COMMIT"].map { ($0, try Synthetic.bytes(full + "/" + $0)) }
        func restore() throws { for (name, bytes) in saved { try Synthetic.overwrite(full + "/" + name, bytes) } }

        try RealChain.rewrite(full) { $0.mappings[anonymous].pages[0].state = .inherited }
        #expect(throws: ImageError.malformed(full, file: "manifest.json", detail: "mapping \(anonymous) has inherited pages in a full checkpoint")) {
            try CheckpointImage.open(full)
        }
        try restore()
        try RealChain.rewrite(full) { $0.sequence = 5 }
        #expect(throws: ImageError.malformed(full, file: "manifest.json", detail: "a full checkpoint with sequence 5")) { try CheckpointImage.open(full) }
        try restore()
        try RealChain.rewrite(incremental) { $0.sequence = -1 }
        #expect(throws: ImageError.malformed(incremental, file: "manifest.json", detail: "an incremental checkpoint with sequence -1")) {
            try CheckpointImage.open(incremental)
        }
        let number = try RealChain.fileMapping(manifest)
        for path in [nil, "relative/libc.so"] {
            try RealChain.rewrite(full) { $0.mappings[number].path = path }
            #expect(throws: ImageError.malformed(full, file: "manifest.json", detail: "mapping \(number) has clean_file pages but no absolute file path")) {
                try CheckpointImage.open(full)
            }
            try restore()
        }
        try Synthetic.setIndexCompression(full, 1, index: saved[1].1)
        #expect(throws: ImageError.malformed(full, file: "pages.index", detail: "reserved header field is not 0")) { try CheckpointImage.open(full) }
    }

    @Test("a manifest that is not JSON, or nested 5,000 deep, is reported as not valid JSON, not as lacking format_version")
    func manifestNotJSON() async throws {
        let chain = try await RealChain.take(count: 1)
        let dir = chain.newest
        for (text, detail) in [("[1]", "not a JSON object"),
                               (String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000), "not valid JSON"),
                               (String(repeating: "{\"a\":", count: 5000) + "1" + String(repeating: "}", count: 5000), "not valid JSON"),
                               ("{\"format_version\": 1", "not valid JSON")] {
            try Synthetic.overwrite(dir + "/manifest.json", Array(text.utf8))
            try Synthetic.resign(dir)
            #expect(throws: ImageError.malformed(dir, file: "manifest.json", detail: detail)) { try CheckpointImage.open(dir) }
        }
    }

    @Test("an INCOMPLETE marker that is a symbolic link still marks the image incomplete")
    func incompleteSymlink() async throws {
        let chain = try await RealChain.take(count: 1)
        try FileManager.default.createSymbolicLink(atPath: chain.newest + "/INCOMPLETE", withDestinationPath: "/nonexistent")
        #expect(CheckpointImage.verifyChain(chain.newest) == [.incomplete(chain.newest, reason: "no reason recorded")])
    }

    // MARK: Fuzzing

    @Test("the regression corpus of hostile images replays with the expected refusal, no crash, hang or disclosure")
    func corpus() async throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus").path
        let run = try await ToolRun("/usr/bin/timeout", ["300", ScenarioProcess.executable("mitosis-image-fuzz"), "--corpus-replay", corpus])
        #expect(run.status == 0, "\(run.standardOutput)\(run.standardError)")
        let entries = try FileManager.default.contentsOfDirectory(atPath: corpus).filter { $0.hasSuffix(".json") }.count
        #expect(run.standardOutput.hasSuffix("\(entries) of \(entries) corpus entries as expected\n"))
    }

    @Test("a short fuzz run (200 mutations, fixed seed) finds no crash, hang or read outside the image")
    func shortFuzz() async throws {
        let run = try await ToolRun("/usr/bin/timeout", ["300", ScenarioProcess.executable("mitosis-image-fuzz"), "--mutations", "200", "--seed-number", "7"])
        #expect(run.status == 0, "\(run.standardOutput)\(run.standardError)")
        #expect(run.standardOutput.contains("mutations 200 in "))
        #expect(run.standardOutput.contains("crashes 0, hangs 0, reads outside the image 0, other findings 0\n"))
    }

    @Test("a short fuzz run of a compressed seed chain (200 mutations, damaged frames resealed) finds no crash, hang or read outside the image")
    func shortFuzzCompressed() async throws {
        let run = try await ToolRun("/usr/bin/timeout", ["300", ScenarioProcess.executable("mitosis-image-fuzz"), "--mutations", "200",
                                                         "--seed-number", "11", "--compressed"])
        #expect(run.status == 0, "\(run.standardOutput)\(run.standardError)")
        #expect(run.standardOutput.contains("mutations 200 in "))
        #expect(run.standardOutput.contains("crashes 0, hangs 0, reads outside the image 0, other findings 0\n"))
    }

    // MARK: Messages and directories (F12, F13)

    @Test("bad --images paths get one mitosis line, no Foundation error")
    func imagePaths() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let root = try TempDirectory()
        try Synthetic.overwrite(root.sub("file"), [1])
        let cases: [([String], String)] = [
            (["dump", String(child.pid), "--images", root.sub("file/img")],
             "mitosis: \(root.sub("file")): create directory failed: Not a directory\n"),
            (["dump", String(child.pid), "--images", "."], "mitosis: '.' cannot be a new image directory: give the name of one to create\n"),
            (["dump", String(child.pid), "--images", "/"], "mitosis: '/' cannot be a new image directory: give the name of one to create\n"),
            (["track", String(child.pid), "--images", ""], "mitosis: '' cannot be a new image directory: give the name of one to create\n"),
            (["track", String(child.pid), "--images", root.sub("file"), "--count", "1"],
             "mitosis: \(root.sub("file")): create directory failed: Not a directory\n"),
        ]
        for (arguments, message) in cases {
            let run = try await boundedRun(arguments, seconds: 30).run
            #expect(run.status == 1, "\(arguments)")
            #expect(run.standardError == message, "\(arguments)")
        }
    }

    @Test("containers are created 0700 under umask 000")
    func containerMode() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let root = try TempDirectory()
        let umask000 = ["/bin/sh", "-c", "umask 000 && exec \"$0\" \"$@\"", ToolRun.mitosis]
        let track = try await ToolRun("/usr/bin/timeout", ["60"] + umask000 + ["track", String(child.pid), "--images", root.sub("t/chain"), "--count", "1"])
        #expect(track.status == 0, "\(track.standardError)")
        let dump = try await ToolRun("/usr/bin/timeout", ["60"] + umask000 + ["dump", String(child.pid), "--images", root.sub("d/sub/img")])
        #expect(dump.status == 0, "\(dump.standardError)")
        for directory in ["t", "t/chain", "d", "d/sub"] {
            #expect(try Kernel.status(root.sub(directory)).mode & 0o7777 == 0o700, "\(directory)")
        }
    }

    @Test("a refused track leaves no directory behind",
          .enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
                   "needs root (to drop to nobody) and util-linux setpriv"))
    func refusedTrack() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let directory = "/tmp/mitosis-refused-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let run = try await ToolRun(ToolRun.mitosis, ["track", String(child.pid), "--images", directory, "--count", "1"],
                              prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        #expect(run.status == 1)
        #expect(run.standardError.hasPrefix("mitosis: permission denied"))
        #expect(!FileManager.default.fileExists(atPath: directory))
    }
}

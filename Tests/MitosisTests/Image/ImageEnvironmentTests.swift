import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisInspect
@testable import MitosisTrace

/// A 64 KiB tmpfs mounted in a private temporary directory, unmounted on release.
final class TinyDisk {
    let root: TempDirectory
    var path: String { root.path }

    init?() throws {
        root = try TempDirectory()
        guard mount("tmpfs", root.path, "tmpfs", 0, "size=64k,mode=0700") == 0 else { return nil }
    }

    deinit { umount2(root.path, Int32(MNT_DETACH)) }

    /// Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN, no restrictive sandbox).
    static let canMount: Bool = (try? TinyDisk()).flatMap { $0 } != nil
}

@Suite("Image environment")
struct ImageEnvironmentTests {
    @Test("a full disk mid-write leaves the new checkpoint incomplete and the chain valid",
          .enabled(if: TinyDisk.canMount, "mounting a tmpfs needs root with CAP_SYS_ADMIN"))
    func noSpace() throws {
        let disk = try #require(try TinyDisk())
        let parent = try Synthetic.write(disk.path + "/0", mappings: [Synthetic.anonymous(0x10000, [.stored])],
                                         pages: [(0x10000, Synthetic.pattern(1))])
        let header = CheckpointHeader(kind: .incremental, parent: ParentLink(path: "../0", id: parent.id), sequence: 1, pid: 4242)
        let sink = DirectorySink(directory: disk.path + "/1")
        try sink.begin(header)
        let pages = 40
        let mapping = Synthetic.anonymous(0x10000, .init(repeating: .stored, count: pages))
        #expect(throws: ImageError.noSpace(disk.path + "/1")) {
            try sink.writePages(at: 0x10000, Synthetic.pattern(2, pages: pages))
            try sink.finish(CheckpointManifest(header: header, tracking: "synthetic", mappings: [mapping]))
        }
        let partial = disk.path + "/.1.partial-\(header.id)"
        #expect(CheckpointImage.verifyChain(partial) == [.incomplete(partial, reason: "aborted: \(disk.path)/1: no space left on device")])
        #expect(try Synthetic.bytes(partial + "/pages.data").isEmpty, "the page data is freed")
        #expect(!FileManager.default.fileExists(atPath: disk.path + "/1"))
        #expect(CheckpointImage.verifyChain(disk.path + "/0").isEmpty)
        // Later calls are told why the checkpoint ended.
        #expect(throws: ImageError.noSpace(disk.path + "/1")) { try sink.writePages(at: 0, Synthetic.pattern(1)) }
        // With the space freed, the next attempt succeeds.
        try FileManager.default.removeItem(atPath: partial)
        try Synthetic.write(disk.path + "/1", kind: .incremental, parent: ("../0", parent),
                            mappings: [Synthetic.anonymous(0x10000, [.stored])], pages: [(0x10000, Synthetic.pattern(3))])
        #expect(try CheckpointImage.open(disk.path + "/1").read(address: 0x10000, length: 4096) == Synthetic.pattern(3))
    }

    @Test("the manifest carries the live process model and frozen thread states unchanged")
    func processModel() async throws {
        let child = try await ScenarioProcess("threads", ["2"])
        defer { child.stop() }
        let model = try Introspector.inspect(pid: child.pid)
        let threads = try await withFrozenProcess(child.pid) { tracer in try await tracer.threadStates() }
        #expect(threads.count == 3)
        let root = try TempDirectory()
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: child.pid)
        let sink = DirectorySink(directory: root.sub("live"))
        try sink.begin(header)
        let written = try sink.finish(CheckpointManifest(header: header, tracking: "none", mappings: [], process: model, threads: threads))
        let image = try CheckpointImage.open(root.sub("live"))
        #expect(image.manifest == written)
        #expect(image.manifest.process == model)
        #expect(image.manifest.threads == threads)
        #expect(image.manifest.threads.map(\.tid) == model.threads.map(\.tid))
    }
}

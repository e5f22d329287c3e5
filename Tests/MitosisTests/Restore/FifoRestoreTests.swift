import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisModel
@testable import MitosisRestore

/// The `fifo` scenario's record, and a FIFO gone from its path refused by name (its restore, and
/// the self-check after it, are `ScenarioRestoreTests`'s `fifo` case).
@Suite struct FifoRestoreTests {
    @Test func theUnreadBytesAreRecordedAndAMissingFifoIsRefusedByName() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let log = scratch.path + "/scenario.log"
        let child = try await ScenarioProcess("fifo", [log])
        defer { child.stop() }
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(child.pid), "--images", image])
        #expect(dump.status == 0, "\(dump.standardError)")
        // The dump left the bytes unread (the check reads them with tee).
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        let manifest = try CheckpointImage.open(image).manifest
        let ends = (manifest.descriptors ?? []).filter { $0.kind == .fifo }
        #expect(ends.map(\.fd) == [20, 21, 22])
        #expect(ends.map(\.path) == [log + ".fifo", log + ".fifo", log + ".fifo2"])
        let pipes = manifest.restore?.pipes ?? []
        #expect(pipes.first { $0.inode == ends[0].inode }?.bytes == Data("fifobytes".utf8))
        #expect(pipes.first { $0.inode == ends[2].inode }?.bytes == Data("rw".utf8))
        unlink(log + ".fifo")
        let refusals = try Restorer(image: CheckpointImage.open(image)).refusals().map(\.description).filter { $0.hasPrefix("fd 2") && !$0.hasPrefix("fd 2 ") }
        #expect(refusals == ["fd 20 (\(log).fifo): no FIFO at \(log).fifo here", "fd 21 (\(log).fifo): no FIFO at \(log).fifo here"])
    }
}

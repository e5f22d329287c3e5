import Foundation
import Testing

/// A promotion that fails keeps its fence (never two primaries) and says how to retry; a second
/// promotion is refused by that fence.
@Suite struct PromotionFenceTests {
    @Test func aFailedPromotionKeepsItsFenceAndSaysHowToRetry() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let images = scratch.path + "/standby"
        try FileManager.default.createDirectory(atPath: images + "/epochs", withIntermediateDirectories: true)

        let first = try await ToolRun(ToolRun.mitosis, ["promote", images])
        #expect(first.status == 1)
        #expect(first.standardError == """
            mitosis: \(images) holds no committed epoch
            mitosis: \(images) stays fenced; once no process runs from it, remove \(images)/PROMOTED to promote it again

            """, "\(first.standardError)")
        #expect(FileManager.default.fileExists(atPath: images + "/PROMOTED"))

        let second = try await ToolRun(ToolRun.mitosis, ["promote", images])
        #expect(second.status == 1)
        #expect(second.standardError == "mitosis: \(images) was already promoted (\(images)/PROMOTED exists)\n", "\(second.standardError)")

        try FileManager.default.removeItem(atPath: images + "/PROMOTED")
        let third = try await ToolRun(ToolRun.mitosis, ["promote", images])
        #expect(third.status == 1 && third.standardError.contains("stays fenced"), "\(third.standardError)")
    }
}

import Foundation
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel

/// Scenarios verify their own state (`check`), so that a test can prove a frozen, checkpointed
/// or restored copy intact without knowing its addresses. The check must have teeth: one byte
/// changed from outside is found.
@Suite("Scenario self-checks")
struct SelfCheckTests {
    @Test("the memory scenario passes its self-check, still after a full checkpoint, and fails on one changed byte")
    func memorySelfCheck() async throws {
        let child = try await ScenarioProcess("memory")
        defer { child.stop() }
        let anon = UInt64(try child.fact("anon").dropFirst(2), radix: 16)!
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
        try await child.send("write anon 7 3,5")
        try await child.send("discard 6")
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")

        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mitosis-selfcheck-\(UUID())")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let session = try await CheckpointSession(pid: child.pid)
        _ = try await session.checkpoint(to: DirectorySink(directory: scratch.path))
        await session.stop()
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")

        // Page 5 of `anon` holds generation 7 now; byte 9 of it gets one bit flipped.
        let address = anon + 5 * 4096 + 9
        var byte: [UInt8] = [0]
        _ = try byte.withUnsafeMutableBytes { try Kernel.readMemory(pid: child.pid, address: address, into: $0) }
        let expected = byte[0]
        byte[0] ^= 1
        _ = try byte.withUnsafeBytes { try Kernel.writeMemory(pid: child.pid, address: address, from: $0) }
        try await child.send("check")
        #expect(try child.fact("check") == "FAIL:anon_page_5_byte_9_is_\(expected ^ 1)_not_\(expected)")
    }
}

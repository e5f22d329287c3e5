import Foundation
import Testing
@testable import MitosisCheckpoint
@testable import MitosisImage
@testable import MitosisKernel

/// A full checkpoint into a directory streams its first copy round to the image while the target
/// runs (`EarlyPageSink`). Pages the target writes after their copy must still come out of the
/// image as they were at the freeze, and the image must verify.
@Suite struct StreamedDumpTests {
    @Test func pagesWrittenAfterTheirCopyHoldTheirBytesOfTheFreeze() async throws {
        // 64 MiB, a tenth of it rewritten every millisecond, a different tenth each time.
        let child = try await ScenarioProcess("churn", ["64", "10", "1"])
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let area = UInt64(try child.fact("churn").dropFirst(2), radix: 16)!
        let length = 64 << 20
        let pid = child.pid
        let frozen = LockedBox<[UInt8]>([])
        var options = CheckpointOptions()
        // The region as the freeze holds it, read while the target is frozen.
        options.whileFrozen = {
            guard let memory = try? ProcessMemoryFile(pid: pid) else { return }
            defer { memory.close() }
            var bytes = [UInt8](repeating: 0, count: length)
            let read = (try? bytes.withUnsafeMutableBytes { try memory.read(at: area, into: $0) }) ?? 0
            if read == length { frozen.value = bytes }
        }
        let result = try await withCheckpointSession(pid: pid, options: options) { session in
            try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
        }
        #expect(frozen.value.count == length)
        // Pages written after they were streamed were copied again (and replaced in the image).
        #expect(result.pagesCopied > result.stats.pagesWritten, "copied \(result.pagesCopied), stored \(result.stats.pagesWritten)")
        let image = try CheckpointImage.open(scratch.path + "/1")
        #expect(try image.chain().read(address: area, length: length) == frozen.value)
        #expect(image.verify().isEmpty)
    }

    /// `mitosis dump`'s one checkpoint (`lastCheckpoint`): tracking is lifted at the thaw, on a
    /// thread of its own while the image is written, and gone from the target by the time the
    /// checkpoint returns; the image is still the memory of the freeze, and the session takes
    /// no second checkpoint.
    @Test(.enabled(if: TrackingStrategy.userfaultfdWriteProtect.isSupported, "\(TrackingStrategy.userfaultfdWriteProtect.unsupportedReason)"))
    func aLastCheckpointLiftsTrackingBeforeItReturns() async throws {
        let child = try await ScenarioProcess("churn", ["16", "10", "1"])
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let area = UInt64(try child.fact("churn").dropFirst(2), radix: 16)!
        let length = 16 << 20
        let pid = child.pid
        let frozen = LockedBox<[UInt8]>([])
        let registeredWhileFrozen = LockedBox<[String]>([])
        var options = CheckpointOptions(strategy: .userfaultfdWriteProtect)
        options.lastCheckpoint = true
        options.whileFrozen = {
            registeredWhileFrozen.value = (try? TargetHealth.userfaultfdRegistered(pid)) ?? []
            guard let memory = try? ProcessMemoryFile(pid: pid) else { return }
            defer { memory.close() }
            var bytes = [UInt8](repeating: 0, count: length)
            let read = (try? bytes.withUnsafeMutableBytes { try memory.read(at: area, into: $0) }) ?? 0
            if read == length { frozen.value = bytes }
        }
        let registeredAfter = try await withCheckpointSession(pid: pid, options: options) { session in
            _ = try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
            let registered = try TargetHealth.userfaultfdRegistered(pid)
            await #expect(throws: CheckpointError.sessionStopped) {
                try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/2"))
            }
            return registered
        }
        #expect(!registeredWhileFrozen.value.isEmpty, "tracked with uffd-wp until the thaw")
        #expect(registeredAfter.isEmpty, "still registered: \(registeredAfter)")
        let image = try CheckpointImage.open(scratch.path + "/1")
        #expect(frozen.value.count == length)
        #expect(try image.chain().read(address: area, length: length) == frozen.value)
        #expect(image.verify().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/2"))
    }

    @Test func aQuietTargetIsStoredAsStreamed() async throws {
        let child = try await ScenarioProcess("churn", ["16", "0", "0"])
        defer { child.stop() }
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let area = UInt64(try child.fact("churn").dropFirst(2), radix: 16)!
        let length = 16 << 20
        let result = try await withCheckpointSession(pid: child.pid) { session in
            try await session.checkpoint(to: DirectorySink(directory: scratch.path + "/1"))
        }
        // The setup wrote page p with the byte p & 0xff.
        let expected = (0..<length).map { UInt8(truncatingIfNeeded: $0 / 4096) }
        let image = try CheckpointImage.open(scratch.path + "/1")
        #expect(try image.chain().read(address: area, length: length) == expected)
        #expect(image.verify().isEmpty)
        #expect(result.stats.pagesWritten >= length / 4096)
    }
}

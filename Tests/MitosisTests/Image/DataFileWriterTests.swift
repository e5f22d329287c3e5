import Foundation
import Testing
@testable import MitosisImage
@testable import MitosisKernel

/// `pages.data` is written from the caller's memory (direct I/O where the file system has it),
/// small and unaligned pieces gathered: whatever the mix, the file holds the pieces in order.
@Suite struct DataFileWriterTests {
    @Test func aMixOfPiecesLandsInOrder() throws {
        let root = try TempDirectory()
        let page = 4096
        // Page-aligned memory, as a checkpoint's staged pages are; and Swift arrays, as other callers' are.
        let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 << 20, alignment: page)
        defer { aligned.deallocate() }
        for index in 0..<aligned.count { aligned[index] = UInt8(truncatingIfNeeded: index / page &+ index) }
        let small = [UInt8](repeating: 7, count: 3 * page)
        let unalignedLarge = (0..<(300 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let many = (0..<1100).map { [UInt8](repeating: UInt8(truncatingIfNeeded: $0), count: page) }  // more than one gather buffer

        let path = root.path + "/data"
        let fd = try Kernel.openAt(nil, path, options: [.writeOnly, .create, .exclusive], mode: 0o600)
        defer { try? fd.close() }
        let writer = try DataFileWriter(fd)
        // ext4 (where the tests run) takes direct I/O; tmpfs may not, and then writes are buffered.
        let direct = writer.isDirect
        var expected: [UInt8] = []
        try small.withUnsafeBytes { try writer.write($0) }
        expected += small
        try writer.write(UnsafeRawBufferPointer(aligned))
        expected += Array(aligned)
        try unalignedLarge.withUnsafeBytes { try writer.write($0) }
        expected += unalignedLarge
        try writer.drain()
        for piece in many { try piece.withUnsafeBytes { try writer.write($0) } }
        expected += many.flatMap { $0 }
        try writer.write(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(aligned)[0..<(1 << 20)]))
        expected += Array(aligned[0..<(1 << 20)])
        try writer.finish()
        writer.close()
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == expected)
        #expect(writer.isDirect == direct)
        if (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8))?.contains(" / ext4 ") == true {
            #expect(direct, "ext4 takes direct I/O")
        }
    }

    /// Early pieces are written asynchronously (AIO, the file extended ahead of them) from a few
    /// reused buffers: each buffer's bytes land before it is reused, and later pieces go after them.
    @Test func earlyPiecesLandFromReusedBuffers() throws {
        let root = try TempDirectory()
        let page = 4096, slot = 1 << 20, slots = 3
        let ring = UnsafeMutableRawBufferPointer.allocate(byteCount: slots * slot, alignment: page)
        defer { ring.deallocate() }
        let path = root.path + "/data"
        let fd = try Kernel.openAt(nil, path, options: [.readWrite, .create, .exclusive], mode: 0o600)
        defer { try? fd.close() }
        let writer = try DataFileWriter(fd)
        var expected: [UInt8] = []
        var marks = [UInt64](repeating: 0, count: slots)
        for round in 0..<10 {
            let index = round % slots
            try writer.waitEarly(marks[index])
            let buffer = UnsafeMutableRawBufferPointer(rebasing: ring[index * slot..<(index + 1) * slot])
            // A whole buffer, or three pages of it.
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(round % 4 == 3 ? 3 * page : slot)])
            for offset in 0..<piece.count { piece[offset] = UInt8(truncatingIfNeeded: round &* 37 &+ offset / page) }
            marks[index] = try writer.writeEarly(UnsafeRawBufferPointer(piece))
            expected += Array(piece)
        }
        try writer.waitEarly(marks.max()!)
        let small = [UInt8](repeating: 9, count: 2 * page)
        try small.withUnsafeBytes { try writer.write($0) }
        expected += small
        try writer.finish()
        writer.close()
        #expect(writer.offset == UInt64(expected.count))
        // The sink cuts a file extended ahead of its early writes to its length at commit.
        #expect(writer.extended == 0 || writer.extended >= UInt64(expected.count - small.count))
        try Kernel.truncate(fd, to: expected.count)
        #expect(try Array(Data(contentsOf: URL(fileURLWithPath: path))) == expected)
    }
}

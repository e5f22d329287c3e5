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
}

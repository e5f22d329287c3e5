import Foundation
import Glibc
import SystemPackage
import Testing
@testable import MitosisImage

@Suite("Image stream")
struct StreamSinkTests {
    /// A connected pair of Unix stream sockets, closed on release.
    final class SocketPair: @unchecked Sendable {
        let sender: FileDescriptor
        let receiver: FileDescriptor
        private let closedSender = LockedBox(false)

        init() throws {
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw Errno(rawValue: errno) }
            sender = FileDescriptor(rawValue: fds[0])
            receiver = FileDescriptor(rawValue: fds[1])
        }

        func closeSender() {
            if !closedSender.value { try? sender.close() }
            closedSender.value = true
        }

        deinit {
            closeSender()
            try? receiver.close()
        }
    }

    /// Runs `send` on its own thread while the caller receives: a socket buffer holds far less
    /// than a checkpoint.
    static func concurrently(_ send: @escaping @Sendable () -> Void, receive: () throws -> Void) throws {
        let done = DispatchSemaphore(value: 0)
        Thread { send(); done.signal() }.start()
        defer { done.wait() }
        try receive()
    }

    @Test("an image sent over a socketpair is received as the same directory, file for file")
    func roundTrip() throws {
        let root = try TempDirectory()
        let pair = try SocketPair()
        let mapping = Synthetic.anonymous(0x200000, .init(repeating: .stored, count: 300) + [.neverTouched])
        let pages = Synthetic.pattern(8, pages: 300)
        // The same checkpoint written directly, for comparison.
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 77, pageSize: 4096)
        let draft = CheckpointManifest(header: header, tracking: "synthetic", mappings: [mapping])
        let direct = DirectorySink(directory: root.sub("direct"))
        try direct.begin(header)
        try direct.writePages(at: 0x200000, pages)
        let directManifest = try direct.finish(draft)

        let sent = LockedBox<CheckpointManifest?>(nil)
        let sink = StreamSink(pair.sender)
        try Self.concurrently({
            try? sink.begin(header)
            try? sink.writePages(at: 0x200000, Array(pages[..<(200 * 4096)]))
            try? sink.writePages(at: 0x200000 + 200 * 4096, Array(pages[(200 * 4096)...]))
            sent.value = try? sink.finish(draft)
            pair.closeSender()
        }) {
            let received = try CheckpointStream.receive(from: pair.receiver, into: root.sub("received"))
            #expect(received == directManifest)
        }
        #expect(sent.value == directManifest)
        for name in ["COMMIT", "manifest.json", "pages.index", "pages.data"] {
            #expect(try Synthetic.bytes(root.sub("received/\(name)")) == Synthetic.bytes(root.sub("direct/\(name)")), "\(name)")
        }
        #expect(try CheckpointImage.open(root.sub("received")).read(address: 0x200000, length: pages.count) == pages)
        #expect(CheckpointImage.verifyChain(root.sub("received")).isEmpty)
    }

    @Test("an aborted or cut-short stream leaves an incomplete checkpoint")
    func abortedAndCut() throws {
        let root = try TempDirectory()
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 77, pageSize: 4096)
        for cut in [false, true] {
            let pair = try SocketPair()
            let name = cut ? "cut" : "aborted"
            try Self.concurrently({
                let sink = StreamSink(pair.sender)
                try? sink.begin(header)
                try? sink.writePages(at: 0x1000, Synthetic.pattern(1, pages: 3))
                if !cut { sink.abort(reason: "target exited") }
                pair.closeSender()
            }) {
                let expected = cut ? ImageError.stream("the stream ended inside frame 2")
                    : ImageError.stream("the sender aborted the checkpoint: target exited")
                #expect(throws: expected) { try CheckpointStream.receive(from: pair.receiver, into: root.sub(name)) }
            }
            let partial = root.sub(".\(name).partial-\(header.id)")
            let reason = cut ? "aborted: checkpoint stream: the stream ended inside frame 2"
                : "aborted: the sender aborted: target exited"
            #expect(throws: ImageError.incomplete(partial, reason: reason)) { try CheckpointImage.open(partial) }
            #expect(!FileManager.default.fileExists(atPath: root.sub(name)))
        }
    }

    @Test("a damaged frame is refused")
    func damagedFrame() throws {
        let root = try TempDirectory()
        var stream = CheckpointStream.streamHeader()
        let header = CheckpointHeader(kind: .full, sequence: 0, pid: 1, pageSize: 4096)
        let payload = try CheckpointStream.json(header)
        stream.appendLittleEndian(UInt32(1))
        stream.appendLittleEndian(UInt32(0))
        stream.appendLittleEndian(UInt64(payload.count))
        stream += payload
        stream.appendLittleEndian(Checksum.xxh64(payload) ^ 1)
        let file = root.sub("stream")
        try Synthetic.overwrite(file, stream)
        let fd = try FileDescriptor.open(file, .readOnly)
        defer { try? fd.close() }
        #expect(throws: ImageError.stream("frame 0: checksum mismatch")) { try CheckpointStream.receive(from: fd, into: root.sub("img")) }
        try Synthetic.overwrite(file, Array("NOTASTREAM......".utf8))
        let other = try FileDescriptor.open(file, .readOnly)
        defer { try? other.close() }
        #expect(throws: ImageError.stream("not a checkpoint stream (bad magic)")) { try CheckpointStream.receive(from: other, into: root.sub("img")) }
    }
}

/// A value shared with a helper thread.
final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}

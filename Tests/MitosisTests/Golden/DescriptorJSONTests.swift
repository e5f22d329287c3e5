import Foundation
import Testing
@testable import MitosisModel

/// The JSON of descriptors, byte for byte: `inspect --json`, `graph` and the checkpoint manifest
/// all carry it, so a change of the model's shape must not change a byte of it.
/// `MITOSIS_RECORD_GOLDEN=1 swift test --filter DescriptorJSON` rewrites the golden file.
@Suite("Golden JSON")
struct DescriptorJSONTests {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("descriptors.json")

    /// One descriptor of every kind that carries kind-specific state, and two plain ones.
    static var descriptors: [OpenDescriptor] {
        let device = DeviceNumber(encoded: 0x803)
        var file = OpenDescriptor(fd: 3, kind: .file, target: "/var/log/x.log (deleted)", path: "/var/log/x.log",
                                  inode: 1234, device: device, position: 4096, flags: 0o2102001, mountId: 27, deleted: true)
        file.flagNames = OpenFlags.names(file.flags)
        var eventfd = OpenDescriptor(fd: 4, kind: .eventfd, target: "anon_inode:[eventfd]", anonInodeName: "eventfd", inode: 7)
        eventfd.state = .eventfd(EventfdState(counter: 5, id: 12, semaphore: true))
        var epoll = OpenDescriptor(fd: 5, kind: .epoll, target: "anon_inode:[eventpoll]", anonInodeName: "[eventpoll]", inode: 7, flags: 0o2000002)
        epoll.state = .epoll([EpollWatch(fd: 4, events: 0x80000019, eventNames: EpollWatch.names(0x80000019), data: 42,
                                          position: 0, inode: 7, device: DeviceNumber(encoded: 0xe))])
        var signalfd = OpenDescriptor(fd: 6, kind: .signalfd, target: "anon_inode:[signalfd]", anonInodeName: "[signalfd]", inode: 7)
        signalfd.state = .signalfd(SignalfdState(mask: 0x4002))
        var timerfd = OpenDescriptor(fd: 7, kind: .timerfd, target: "anon_inode:[timerfd]", anonInodeName: "[timerfd]", inode: 7)
        timerfd.state = .timerfd(TimerfdState(clockId: 1, ticks: 3, settimeFlags: 1,
                                               value: TimeSpec(seconds: 1, nanoseconds: 5), interval: TimeSpec(seconds: 0, nanoseconds: 250_000_000)))
        var inotify = OpenDescriptor(fd: 8, kind: .inotify, target: "anon_inode:inotify", anonInodeName: "inotify", inode: 7)
        inotify.state = .inotify([InotifyWatch(wd: 1, inode: 99, device: device, mask: 0x2, ignoredMask: 0)])
        var fanotify = OpenDescriptor(fd: 9, kind: .fanotify, target: "anon_inode:[fanotify]", anonInodeName: "[fanotify]", inode: 7)
        fanotify.state = .fanotify(FanotifyState(flags: 0x10, eventFlags: 0o100000, marks: [
            FanotifyMark(target: .inode, inode: 99, device: device, markFlags: 0, mask: 0x20, ignoredMask: 0),
            FanotifyMark(target: .mount, mountId: 27, markFlags: 1, mask: 0x8, ignoredMask: 0x2),
        ]))
        var pidfd = OpenDescriptor(fd: 10, kind: .pidfd, target: "anon_inode:[pidfd]", anonInodeName: "[pidfd]", inode: 7)
        pidfd.state = .pidfd(PidfdState(pid: 4242, namespacePids: [4242, 1]))
        let pipe = OpenDescriptor(fd: 11, kind: .pipe, target: "pipe:[555]", inode: 555, device: DeviceNumber(encoded: 0xd), flags: 0o1)
        return [file, eventfd, epoll, signalfd, timerfd, inotify, fanotify, pidfd, pipe]
    }

    @Test("every descriptor kind encodes exactly as the golden file, and decodes back to itself")
    func descriptorsMatchTheGoldenFile() throws {
        let encoded = try JSONOutput.string(Self.descriptors) + "\n"
        if ProcessInfo.processInfo.environment["MITOSIS_RECORD_GOLDEN"] == "1" {
            try encoded.write(to: Self.golden, atomically: true, encoding: .utf8)
        }
        #expect(encoded == (try String(contentsOf: Self.golden, encoding: .utf8)))
        let decoded = try JSONOutput.decoder().decode([OpenDescriptor].self, from: Data(encoded.utf8))
        #expect(decoded == Self.descriptors)
    }
}

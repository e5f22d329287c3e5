import Testing
@testable import MitosisModel

@Suite("fdinfo and fd target parsers")
struct ProcFdinfoTests {
    @Test("common lines: pos, octal flags, mnt_id, ino")
    func common() throws {
        let info = try #require(ProcFdinfo(parsing: "pos:\t4096\nflags:\t02102002\nmnt_id:\t27\nino:\t253853\n"))
        #expect(info.position == 4096 && info.flags == 0o2102002 && info.mountId == 27 && info.inode == 253853)
        #expect(OpenFlags.names(info.flags) == ["O_RDWR", "O_APPEND", "O_LARGEFILE", "O_CLOEXEC"])
        #expect(OpenFlags.names(0) == ["O_RDONLY"])
        #expect(OpenFlags.names(0o300000) == ["O_RDONLY", "O_LARGEFILE", "O_DIRECTORY"])
        #expect(OpenFlags.names(0o4010001) == ["O_WRONLY", "O_DSYNC", "O_SYNC"])
        #expect(OpenFlags.names(0o40000000 | 1) == ["O_WRONLY", "0o40000000"])
    }

    @Test("eventfd counter is hex")
    func eventfd() throws {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\neventfd-count:             1234\neventfd-id: 7\neventfd-semaphore: 1\n"
        let info = try #require(ProcFdinfo(parsing: text))
        #expect(info.eventfd == EventfdState(counter: 0x1234, id: 7, semaphore: true))
        // Older kernels print neither id nor semaphore.
        #expect(ProcFdinfo(parsing: "pos: 0\nflags: 02\neventfd-count: ff\n")?.eventfd == EventfdState(counter: 255, id: nil, semaphore: nil))
    }

    @Test("epoll tfd lines")
    func epoll() throws {
        let text = """
        pos:\t0
        flags:\t02
        mnt_id:\t17
        ino:\t1038
        tfd:        4 events: 80000019 data:             1234  pos:0 ino:117a0 sdev:f
        tfd:       12 events:       1d data: ffffffffffffffff  pos:77 ino:2 sdev:fe00001
        """
        let info = try #require(ProcFdinfo(parsing: text))
        #expect(info.epoll == [
            EpollWatch(fd: 4, events: 0x8000_0019, eventNames: ["EPOLLIN", "EPOLLERR", "EPOLLHUP", "EPOLLET"], data: 0x1234,
                       position: 0, inode: 0x117a0, device: DeviceNumber(major: 0, minor: 15)),
            EpollWatch(fd: 12, events: 0x1d, eventNames: ["EPOLLIN", "EPOLLOUT", "EPOLLERR", "EPOLLHUP"], data: UInt64.max,
                       position: 77, inode: 2, device: DeviceNumber(major: 254, minor: 1)),
        ])
    }

    @Test("signalfd mask: bit n-1 is signal n")
    func signalfd() throws {
        let info = try #require(ProcFdinfo(parsing: "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nsigmask:\t0000000000004200\n"))
        #expect(info.signalfd == SignalfdState(mask: 0x4200))
        #expect(info.signalfd?.signals == [10, 15])
        #expect(SignalfdState(mask: 1 << 63).signals == [64])
    }

    @Test("timerfd clock, ticks, octal settime flags, timespecs")
    func timerfd() throws {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\nsettime flags: 03\nit_value: (9, 999989724)\nit_interval: (2, 500000000)\n"
        let info = try #require(ProcFdinfo(parsing: text))
        #expect(info.timerfd == TimerfdState(clockId: 1, ticks: 3, settimeFlags: 3,
                                             value: TimeSpec(seconds: 9, nanoseconds: 999_989_724),
                                             interval: TimeSpec(seconds: 2, nanoseconds: 500_000_000)))
        // A truncated timerfd block gives no timerfd state rather than a wrong one.
        #expect(ProcFdinfo(parsing: "pos:\t0\nflags:\t02\nclockid: 1\nticks: 3\nsettime flags: 03\nit_value: (9,")?.timerfd == nil)
    }

    @Test("inotify and fanotify marks (hex fields)")
    func notify() throws {
        let inotify = """
        pos:\t0
        flags:\t00
        mnt_id:\t17
        ino:\t1038
        inotify wd:a ino:3df9d sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:9ddf030000000000
        inotify wd:1 ino:2 sdev:800001 mask:fff ignored_mask:0
        """
        let info = try #require(ProcFdinfo(parsing: inotify))
        #expect(info.inotify == [
            InotifyWatch(wd: 10, inode: 0x3df9d, device: DeviceNumber(major: 254, minor: 0), mask: 0x300, ignoredMask: 0),
            InotifyWatch(wd: 1, inode: 2, device: DeviceNumber(major: 8, minor: 1), mask: 0xfff, ignoredMask: 0),
        ])
        let fanotify = """
        pos:\t0
        flags:\t02
        mnt_id:\t17
        ino:\t1038
        fanotify flags:10 event-flags:8000
        fanotify ino:3df9d sdev:fe00000 mflags:0 mask:20 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:9ddf030000000000
        fanotify mnt_id:1b mflags:0 mask:1 ignored_mask:0
        fanotify sdev:fe00001 mflags:2 mask:8 ignored_mask:4
        """
        let group = try #require(ProcFdinfo(parsing: fanotify)?.fanotify)
        #expect(group.flags == 0x10 && group.eventFlags == 0x8000)
        #expect(group.marks == [
            FanotifyMark(target: .inode, inode: 0x3df9d, device: DeviceNumber(major: 254, minor: 0), mountId: nil, markFlags: 0, mask: 0x20, ignoredMask: 0),
            FanotifyMark(target: .mount, inode: nil, device: nil, mountId: 0x1b, markFlags: 0, mask: 1, ignoredMask: 0),
            FanotifyMark(target: .filesystem, inode: nil, device: DeviceNumber(major: 254, minor: 1), mountId: nil, markFlags: 2, mask: 8, ignoredMask: 4),
        ])
    }

    @Test("pidfd Pid and NSpid")
    func pidfd() throws {
        let info = try #require(ProcFdinfo(parsing: "pos:\t0\nflags:\t02000002\nmnt_id:\t4\nino:\t15447\nPid:\t15446\nNSpid:\t15446\t12\n"))
        #expect(info.pidfd == PidfdState(pid: 15446, namespacePids: [15446, 12]))
        #expect(ProcFdinfo(parsing: "pos:\t0\nflags:\t02\nPid:\t-1\nNSpid:\t-1\n")?.pidfd?.pid == -1)
    }

    @Test("hostile fdinfo: truncated, garbage numbers, junk lines")
    func hostile() throws {
        #expect(ProcFdinfo(parsing: "") == nil)
        #expect(ProcFdinfo(parsing: "pos:\t0\n") == nil)
        #expect(ProcFdinfo(parsing: "pos:\tx\nflags:\t02\n") == nil)
        #expect(ProcFdinfo(parsing: "pos:\t0\nflags:\t09\n") == nil)  // 9 is not octal
        #expect(ProcFdinfo(parsing: "pos:\t99999999999999999999999\nflags:\t02\n") == nil)
        let junk = try #require(ProcFdinfo(parsing: """
        pos:\t1
        flags:\t02
        tfd: events: data:
        tfd:        x events: 1 data: 2
        tfd:        4 events: 123456789 data: 2
        inotify wd:zz ino:1 sdev:1 mask:1
        inotify
        fanotify mflags:0 mask:1
        fanotify
        eventfd-count: nothex
        sigmask:
        it_value: (1, 2)
        :::
        \(String(repeating: "x", count: 100_000))
        """))
        #expect(junk.position == 1)
        #expect(junk.epoll == [] && junk.inotify == [] && junk.fanotify == nil)
        #expect(junk.eventfd == nil && junk.signalfd == nil && junk.timerfd == nil)
    }

    @Test("link targets classify into kinds")
    func classify() {
        func kind(_ target: String, mode: UInt32? = 0o100644, rdev: DeviceNumber? = nil, mq: Bool = false) -> ProcFdTarget.Classification {
            ProcFdTarget.classify(target, mode: mode, specialDevice: rdev, onMessageQueueFileSystem: mq)
        }
        #expect(kind("pipe:[71584]", mode: 0o10600) == .init(kind: .pipe, inode: 71584, deleted: false))
        #expect(kind("socket:[71605]", mode: 0o140777) == .init(kind: .socket, inode: 71605, deleted: false))
        #expect(kind("anon_inode:[eventfd]").kind == .eventfd)
        #expect(kind("anon_inode:[eventpoll]") == .init(kind: .epoll, anonInodeName: "eventpoll", deleted: false))
        #expect(kind("anon_inode:[signalfd]").kind == .signalfd)
        #expect(kind("anon_inode:[timerfd]").kind == .timerfd)
        #expect(kind("anon_inode:inotify") == .init(kind: .inotify, anonInodeName: "inotify", deleted: false))
        #expect(kind("anon_inode:[fanotify]").kind == .fanotify)
        #expect(kind("anon_inode:[pidfd]").kind == .pidfd)
        #expect(kind("pidfd:[15447]").kind == .pidfd)
        #expect(kind("anon_inode:[io_uring]").kind == .ioUring)
        #expect(kind("anon_inode:[userfaultfd]") == .init(kind: .anonInode, anonInodeName: "userfaultfd", deleted: false))
        #expect(kind("anon_inode:bpf-map") == .init(kind: .anonInode, anonInodeName: "bpf-map", deleted: false))
        #expect(kind("/memfd:scratch space (deleted)") == .init(kind: .memfd, path: "/memfd:scratch space", deleted: true))
        #expect(kind("/tmp/gone (deleted)") == .init(kind: .file, path: "/tmp/gone", deleted: true))
        #expect(kind("/tmp/a b (c) (deleted) x") == .init(kind: .file, path: "/tmp/a b (c) (deleted) x", deleted: false))
        #expect(kind("/tmp/line\nbreak") == .init(kind: .file, path: "/tmp/line\nbreak", deleted: false))
        #expect(kind("/tmp", mode: 0o40755).kind == .directory)
        #expect(kind("/tmp/fifo", mode: 0o10644).kind == .fifo)
        #expect(kind("/dev/pts/3", mode: 0o20620, rdev: DeviceNumber(major: 136, minor: 3)).kind == .tty)
        #expect(kind("/dev/tty", mode: 0o20666, rdev: DeviceNumber(major: 5, minor: 0)).kind == .tty)
        #expect(kind("/dev/null", mode: 0o20666, rdev: DeviceNumber(major: 1, minor: 3)).kind == .characterDevice)
        #expect(kind("/dev/vda", mode: 0o60660, rdev: DeviceNumber(major: 254, minor: 0)).kind == .blockDevice)
        #expect(kind("/probeq", mq: true) == .init(kind: .messageQueue, path: "/probeq", deleted: false))
        #expect(kind("net:[4026531833]") == .init(kind: .other, inode: 4026531833, deleted: false))
        #expect(kind("", mode: nil) == .init(kind: .other, deleted: false))
        #expect(kind("pipe:[zz]").kind == .other)
        #expect(kind("/tmp/unknown", mode: nil).kind == .file)
    }
}

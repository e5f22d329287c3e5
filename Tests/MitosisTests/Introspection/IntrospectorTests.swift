import Foundation
import Glibc
import Testing
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisTrace

/// Exact facts of the `fds` scenario, checked the same way on the model from `Introspector` and
/// on the model decoded from `mitosis inspect --json`.
struct FdsScenarioFacts {
    let child: ScenarioProcess

    func fd(_ key: String) throws -> Int32 { Int32(try child.intFact(key)) }
    func inode(_ key: String) throws -> UInt64 { UInt64(try child.intFact(key + "_ino")) }

    func check(_ model: ProcessModel) throws {
        let pid = child.pid
        let dir = try child.fact("dir")
        #expect(model.pid == pid)

        // Identity.
        let identity = model.identity
        #expect(identity.pid == pid && identity.ppid == getpid())
        #expect(identity.comm == "mitosis-scenari")  // comm is truncated to 15 bytes
        #expect(identity.state == "S")
        let exe = ScenarioProcess.executable("mitosis-scenario")
        #expect(identity.cmdline == [exe, "fds"])
        #expect(identity.exe == exe)
        #expect(identity.cwd == FileManager.default.currentDirectoryPath)
        #expect(identity.root == "/")
        #expect(identity.uid == Credentials(real: getuid(), effective: geteuid(), saved: geteuid(), filesystem: geteuid()))
        #expect(identity.gid.real == getgid())
        #expect(identity.environ?.contains("PATH=" + (ProcessInfo.processInfo.environment["PATH"] ?? "")) == true)
        #expect(identity.capabilities?.effective.count == 16)
        #expect(model.threads == [ThreadInfo(tid: pid, name: "mitosis-scenari", state: "S")])
        let ownNet = try Kernel.readLink("/proc/self/ns/net")
        #expect(model.namespaces.first { $0.type == "net" }.map { "net:[\($0.inode)]" } == ownNet)
        #expect(model.cgroups == ProcCgroup.parse(String(decoding: try Kernel.readFile("/proc/self/cgroup"), as: UTF8.self)))
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        #expect(model.limits.first { $0.name == "Max open files" }
                == ResourceLimit(name: "Max open files", soft: UInt64(limit.rlim_cur), hard: UInt64(limit.rlim_max), units: "files"))

        // Descriptors: exactly the scenario's, each with its exact state.
        let fds = Dictionary(uniqueKeysWithValues: model.fds.map { ($0.fd, $0) })
        #expect(model.fds.map(\.fd) == model.fds.map(\.fd).sorted())
        func descriptor(_ key: String) throws -> OpenDescriptor { try #require(fds[try fd(key)]) }

        let file = try descriptor("file")
        #expect(try file.kind == .file && file.path == dir + "/data.bin" && file.inode == (try inode("file")))
        #expect(file.position == 1234 && file.flags == 0o2102002 && !file.deleted)
        #expect(file.flagNames == ["O_RDWR", "O_APPEND", "O_LARGEFILE", "O_CLOEXEC"])
        #expect(file.mountId > 0)
        #expect(try descriptor("dir_fd").kind == .directory && (try descriptor("dir_fd")).path == dir)
        #expect(try descriptor("dir_fd").inode == (try inode("dir_fd")))

        let reader = try descriptor("pipe_r"), writer = try descriptor("pipe_w")
        #expect(reader.kind == .pipe && writer.kind == .pipe)
        let pipeInode = try inode("pipe_r")
        #expect(reader.inode == pipeInode && writer.inode == pipeInode)
        #expect(reader.flagNames == ["O_RDONLY"] && writer.flagNames == ["O_WRONLY"])
        #expect(reader.target == "pipe:[\(reader.inode)]" && reader.path == nil)
        for key in ["sp0", "sp1", "listener", "client", "accepted"] {
            let socket = try descriptor(key)
            #expect(try socket.kind == .socket && socket.inode == (try inode(key)) && socket.target == "socket:[\(socket.inode)]")
        }

        let event = try descriptor("eventfd")
        #expect(event.kind == .eventfd && event.eventfd?.counter == 142)
        #expect(event.flagNames == ["O_RDWR", "O_NONBLOCK", "O_CLOEXEC"])

        let epoll = try descriptor("epoll")
        #expect(epoll.kind == .epoll)
        #expect(epoll.epoll?.map(\.fd) == [try fd("pipe_r"), try fd("sp0")])
        #expect(epoll.epoll?.map(\.events) == [0x19, 0x8000_001d])  // the kernel adds EPOLLERR|EPOLLHUP
        #expect(epoll.epoll?.map(\.data) == [0x1111, 0x2222])
        #expect(epoll.epoll?.map(\.inode) == [try inode("pipe_r"), try inode("sp0")])
        #expect(epoll.epoll?.last?.eventNames == ["EPOLLIN", "EPOLLOUT", "EPOLLERR", "EPOLLHUP", "EPOLLET"])

        let timer = try #require(try descriptor("timerfd").timerfd)
        #expect(timer.clockId == 1 && timer.ticks == 0 && timer.settimeFlags == 0)
        #expect(timer.interval == TimeSpec(seconds: 3, nanoseconds: 250_000_000))
        #expect(timer.value.seconds >= 0 && timer.value.seconds < 100)  // counting down from 100 s

        let signals = try #require(try descriptor("signalfd").signalfd)
        #expect(signals.mask == (1 << 9) | (1 << 11) && signals.signals == [SIGUSR1, SIGUSR2])

        let watches = try #require(try descriptor("inotify").inotify)
        let dirDevice = try Kernel.status(dir).device
        let expectedWatch = InotifyWatch(wd: Int32(try child.intFact("inotify_wd")), inode: try inode("dir_fd"),
                                         device: DeviceNumber(encoded: UInt64(dirDevice)), mask: 0x300, ignoredMask: 0)
        #expect(watches == [expectedWatch])

        if try child.intFact("fanotify") >= 0 {
            let group = try #require(try descriptor("fanotify").fanotify)
            #expect(group.marks == [FanotifyMark(target: .inode, inode: try inode("dir_fd"), device: DeviceNumber(encoded: UInt64(dirDevice)),
                                                 mountId: nil, markFlags: 0, mask: 0x20 /* FAN_OPEN */, ignoredMask: 0)])
        }
        if try child.intFact("io_uring") >= 0 {
            #expect(try descriptor("io_uring").kind == .ioUring && (try descriptor("io_uring")).anonInodeName == "io_uring")
        }

        let memfd = try descriptor("memfd")
        #expect(try memfd.kind == .memfd && memfd.path == "/memfd:mitosis scratch" && memfd.deleted && memfd.inode == (try inode("memfd")))
        #expect(try descriptor("pidfd").kind == .pidfd && (try descriptor("pidfd")).pidfd?.pid == pid)

        let gone = try descriptor("deleted")
        #expect(try gone.kind == .file && gone.deleted && gone.path == dir + "/gone.txt" && gone.inode == (try inode("deleted")))
        let spaced = try descriptor("spaced")
        #expect(spaced.kind == .file && spaced.path == dir + "/with space.txt" && !spaced.deleted)
        #expect(spaced.flagNames == ["O_WRONLY", "O_LARGEFILE"])
        #expect(try descriptor("fifo").kind == .fifo && (try descriptor("fifo")).path == dir + "/fifo")
        let queue = try descriptor("mqueue")
        #expect(try queue.kind == .messageQueue && queue.path == "/mitosis-fds-\(pid)" && queue.inode == (try inode("mqueue")))
        #expect(try descriptor("ptmx").kind == .tty && (try descriptor("ptmx")).specialDevice?.major == 5)
        #expect(try descriptor("null").kind == .characterDevice && (try descriptor("null")).specialDevice == DeviceNumber(major: 1, minor: 3))

        // Mappings: the file mapped at a known address, and the SysV segment.
        let mapAddress = UInt64(try child.intFact("map_addr"))
        let mapped = try #require(model.maps.first { $0.start == mapAddress })
        #expect(mapped == MemoryMapping(
            start: mapAddress, end: mapAddress + 8192, perms: "r--s", offset: 4096,
            device: DeviceNumber(encoded: UInt64(dirDevice)), inode: try inode("map"), path: dir + "/mapped.bin",
            kind: .file, deleted: false, sizes: mapped.sizes, vmFlags: mapped.vmFlags))
        #expect(mapped.vmFlags?.contains("sh") == true && mapped.sizes?.size == 8192)
        let shmAddress = UInt64(try child.intFact("shm_addr")), shmid = Int32(try child.intFact("shmid"))
        let segmentMapping = try #require(model.maps.first { $0.start == shmAddress })
        #expect(segmentMapping.kind == .sysvSharedMemory && segmentMapping.inode == UInt64(shmid))
        #expect(segmentMapping.length == 16384 && segmentMapping.isShared && segmentMapping.deleted)
        #expect(model.maps.map(\.start) == model.maps.map(\.start).sorted())
        let newlinePath = dir + "/line\nbreak"
        let newlineFile = try descriptor("newline"), newlineInode = try inode("newline"), memfdInode = try inode("memfd")
        #expect(newlineFile.path == newlinePath && newlineFile.kind == .file && newlineFile.inode == newlineInode)
        func mapping(at key: String) throws -> MemoryMapping {
            let start = UInt64(try child.intFact(key))
            return try #require(model.maps.first { $0.start == start })
        }
        let newlineMapping = try mapping(at: "newline_addr")
        #expect(newlineMapping.path == newlinePath && newlineMapping.inode == newlineInode && newlineMapping.kind == .file)
        let memfdMapping = try mapping(at: "memfd_addr")
        #expect(memfdMapping.path == "/memfd:mitosis scratch" && memfdMapping.deleted && memfdMapping.kind == .file)
        #expect(memfdMapping.inode == memfdInode && memfdMapping.perms == "rw-s" && memfdMapping.length == 8192)
        let sharedMapping = try mapping(at: "shared_addr")
        #expect(sharedMapping.kind == .sharedAnonymous && sharedMapping.length == 12288 && sharedMapping.perms == "rw-s")
        #expect(sharedMapping.sizes?.rss == 4096)  // one page touched

        // IPC.
        #expect(model.ipc.sysvVisible)
        let segment = try #require(model.ipc.sharedMemory.first { $0.shmid == shmid })
        #expect(segment.size == 16384 && segment.creatorPid == pid && segment.lastPid == pid)
        #expect(segment.attachCount == 1 && segment.attachedAt == [shmAddress] && segment.key == 0)
        let semid = Int32(try child.intFact("semid")), msqid = Int32(try child.intFact("msqid"))
        #expect(model.ipc.semaphores.map(\.semid) == [semid])
        #expect(model.ipc.semaphores.first?.lastOperationPids == [0, pid])
        #expect(model.ipc.semaphores.first?.count == 2 && model.ipc.semaphores.first?.perms == 0o600)
        #expect(model.ipc.messageQueues.map(\.msqid) == [msqid])
        #expect(model.ipc.messageQueues.first.map { [$0.messages, $0.bytes] } == [1, 5])
        #expect(model.ipc.messageQueues.first.map { [$0.lastSendPid, $0.lastReceivePid] } == [pid, 0])
        #expect(model.ipc.posixMessageQueues == [PosixMessageQueue(fd: try fd("mqueue"), name: "/mitosis-fds-\(pid)", inode: try inode("mqueue"))])
    }
}

extension ScenarioProcess {
    /// Waits until every thread of the scenario sleeps (the main one in its read of the next
    /// command), so that their state letters are a known `S`.
    func waitUntilBlocked() async throws {
        for _ in 0..<200 where try !TargetHealth.threadStates(of: pid).values.allSatisfy({ $0 == "S" }) { try await Task.sleep(for: .microseconds(5_000)) }
    }
}

@Suite("Introspector")
struct IntrospectorTests {
    @Test("reads every descriptor, mapping and IPC object of the fds scenario exactly, harmlessly")
    func fdsScenario() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        try await child.waitUntilBlocked()
        let before = try TargetHealth(pid: child.pid)
        let model = try Introspector.inspect(pid: child.pid)
        try FdsScenarioFacts(child: child).check(model)
        #expect(Set(model.fds.map(\.fd)) == Set(before.descriptors.keys))
        #expect(model.maps.count == before.maps.split(separator: "\n").count)
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")
    }

    @Test("lists every thread with its tid, name and state")
    func threads() async throws {
        let child = try await ScenarioProcess("threads", ["4"])
        defer { child.stop() }
        try await child.waitUntilBlocked()
        let states = try TargetHealth.threadStates(of: child.pid)
        let model = try Introspector.inspect(pid: child.pid, detailedMemory: false)
        #expect(model.threads.map(\.tid) == states.keys.sorted())
        #expect(model.threads.count == 5 && model.threads.first?.tid == child.pid)
        #expect(model.threads.allSatisfy { $0.name == "mitosis-scenari" && $0.state == "S" })
        #expect(model.maps.allSatisfy { $0.sizes == nil && $0.vmFlags == nil })
        #expect(model.identity.cmdline.suffix(2) == ["threads", "4"])
    }

    @Test("a process in another IPC namespace: SysV objects are reported as not visible",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare"), "needs util-linux unshare"))
    func otherIPCNamespace() async throws {
        // unshare execs the scenario in place: same pid, new IPC namespace.
        let child = try await ScenarioProcess("--ipc", [ScenarioProcess.executable("mitosis-scenario"), "idle"],
                                        executable: "/usr/bin/unshare")
        defer { child.stop() }
        let model = try Introspector.inspect(pid: child.pid)
        let own = try Kernel.readLink("/proc/self/ns/ipc")
        #expect(model.namespaces.first { $0.type == "ipc" }.map { "ipc:[\($0.inode)]" } != own)
        #expect(!model.ipc.sysvVisible && model.ipc.sharedMemory.isEmpty && model.ipc.semaphores.isEmpty)
    }

    @Test("the model survives a JSON round trip")
    func codable() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        let model = try Introspector.inspect(pid: child.pid)
        let decoded = try JSONOutput.decoder().decode(ProcessModel.self, from: try JSONOutput.encoder().encode(model))
        #expect(decoded == model)
    }

    @Test("refuses zombies, kernel threads and missing processes with typed errors")
    func badTargets() async throws {
        let child = try await ScenarioProcess("zombie")
        defer { child.stop() }
        let zombie = Int32(try child.intFact("zombie"))
        #expect(throws: MitosisError.zombie(zombie)) { try Introspector.inspect(pid: zombie) }
        // Read part by part through a handle, a process that exited meanwhile is gone.
        let ending = try await ScenarioProcess("idle")
        let handle = try TargetProcess(pid: ending.pid)
        ending.stop()
        #expect(throws: MitosisError.targetExited(ending.pid)) { try ProcessReader.descriptor(handle, fd: 0) }
        #expect(throws: MitosisError.invalidPID("0")) { try Introspector.inspect(pid: 0) }
        let exited = try await ScenarioProcess("idle")
        exited.stop()
        #expect(throws: MitosisError.noSuchProcess(exited.pid)) { try Introspector.inspect(pid: exited.pid) }
        if Self.kthreaddVisible {
            #expect(throws: MitosisError.kernelThread(2)) { try Introspector.inspect(pid: 2) }
        }
    }

    /// Whether pid 2 is the kernel's kthreadd (not so inside a pid namespace).
    static var kthreaddVisible: Bool {
        (try? Kernel.readFile("/proc/2/stat")).map { String(decoding: $0, as: UTF8.self).hasPrefix("2 (kthreadd)") } ?? false
    }
}

/// `TargetProcess` pins the process it was opened for: once that process is gone, nothing is
/// read from a process that took its pid.
@Suite("Target handle")
struct TargetProcessTests {
    @Test("a handle whose process exited and whose pid was taken by another says so, and reads nothing")
    func pidReuseIsDetected() async throws {
        var attempt = 0
        var (original, handle, spawned): (ScenarioProcess, TargetProcess, ScenarioProcess?)
        repeat {
            attempt += 1
            original = try await ScenarioProcess("idle")
            handle = try TargetProcess(pid: original.pid)
            try handle.requireAlive()
            #expect(try ProcessReader.identity(handle).pid == original.pid)
            original.stop()
            // Reuse the pid: a child spawned right after the pid counter was set below it. A
            // thread the parallel run starts in between may take the pid first (and keep it):
            // then again with another process.
            spawned = try? await ScenarioProcess("idle", [], pid: original.pid)
        } while spawned == nil && attempt < 3
        let impostor = try #require(spawned, "pid \(original.pid) was taken by another task at each of 3 attempts")
        defer { impostor.stop() }
        #expect(impostor.pid == original.pid)
        #expect(throws: MitosisError.pidReused(original.pid)) { try handle.requireAlive() }
        #expect(throws: MitosisError.pidReused(original.pid)) { try ProcessReader.identity(handle) }
        #expect(throws: MitosisError.pidReused(original.pid)) { try ProcessReader.descriptors(handle) }
        // A new handle opens the new process.
        #expect(try ProcessReader.identity(TargetProcess(pid: original.pid)).pid == original.pid)
    }
}

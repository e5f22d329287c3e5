import Foundation
import Glibc
import Testing
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
import MitosisTrace

/// The kernel's task/file iterator (`DescriptorIterator`) and `/proc` must describe every
/// descriptor identically: `ProcessReader.descriptors` takes the iterator where it can and falls
/// back to /proc, and nothing above it may tell which ran. Mitosis uses the iterator from 6.1
/// on (the kernel matrix found it equal to /proc on 6.1, 6.12 and 6.18); these tests run it on
/// any kernel where it loads (`.any`), and skip, saying why, where it does not.
@Suite("Descriptors in one pass (BPF task/file iterator) against /proc")
struct DescriptorIteratorTests {
    /// Root with kernel BTF on a kernel where Mitosis uses the iterator: there it must load.
    static let expected = getuid() == 0 && FileManager.default.fileExists(atPath: "/sys/kernel/btf/vmlinux")
        && kernelVersion.count == 2 && !kernelVersion.lexicographicallyPrecedes([6, 1])
    static let kernelVersion = ((try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8)) ?? "")
        .split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
    /// Why the iterator cannot run here at all (not root, no BTF, the kernel refuses it), or nil.
    static let unusable: String? = getuid() != 0 ? "needs root" : DescriptorIterator.unavailableReason(tid: getpid(), kernels: .any)
    static let usable = unusable == nil

    @Test("the iterator loads where root has kernel BTF, from 6.1 on", .enabled(if: expected, "needs root, /sys/kernel/btf/vmlinux and kernel ≥ 6.1"))
    func loads() {
        let reason = DescriptorIterator.unavailableReason(tid: getpid())
        #expect(reason == nil, "\(reason ?? "")")
    }

    @Test("both paths give the same descriptors", .enabled(if: usable, Comment(rawValue: unusable ?? "")),
          arguments: [("fds", []), ("sockets", []), ("epoll", []), ("pairs", []), ("threads", []), ("tcp", []),
                      ("leaderless", []), ("graphload", ["300"])] as [(String, [String])])
    func samePaths(scenario: String, arguments: [String]) async throws {
        let child = try await ScenarioProcess(scenario, arguments)
        defer { child.stop() }
        if scenario == "leaderless" {
            // Its main thread exits on `leader`: the iterator must then read through a live thread.
            try await child.send("leader")
            #expect(try child.fact("leader_state") == "Z")
        }
        let target = try TargetProcess(pid: child.pid)
        let fromProc = try ProcessReader.descriptorsFromProc(target)
        let inOnePass = try #require(try ProcessReader.descriptorsInOnePass(target, kernels: .any)).descriptors
        #expect(inOnePass.map(\.fd) == fromProc.map(\.fd))
        for (fast, slow) in zip(inOnePass.map(Self.timeless), fromProc.map(Self.timeless)) where fast != slow {
            Issue.record("\(scenario) fd \(slow.fd):\n iterator \(fast)\n /proc    \(slow)")
        }
        // Most came from the iterator's records alone, not from the /proc fallback inside it.
        let records = try #require(DescriptorIterator.records(tid: target.process.entry, kernels: .any))
        let alone = records.filter { ProcessReader.descriptor($0) != nil }
        #expect(alone.count * 2 >= records.count, "\(alone.count) of \(records.count) from the records alone")
    }

    /// A running timer's time left changes between two reads: not compared.
    static func timeless(_ descriptor: OpenDescriptor) -> OpenDescriptor {
        var descriptor = descriptor
        if var timer = descriptor.timerfd {
            timer.value = TimeSpec(seconds: 0, nanoseconds: 0)
            descriptor.state = .timerfd(timer)
        }
        return descriptor
    }

    @Test("graphs from the iterator (open files by address) and from /proc (kcmp) are the same bytes",
          .enabled(if: usable, Comment(rawValue: unusable ?? "")), arguments: ["fds", "pairs", "sockets", "tree", "graphload"])
    func sameGraphs(scenario: String) async throws {
        let child = try await ScenarioProcess(scenario, scenario == "graphload" ? ["300"] : [])
        defer { child.stop() }
        var options = GraphOptions(includeDescendants: true)
        options.descriptorIterator = .any
        let fast = try JSONOutput.string(GraphBuilder.graph(of: child.pid, options: options))
        options.descriptorIterator = nil
        let slow = try JSONOutput.string(GraphBuilder.graph(of: child.pid, options: options))
        #expect(fast == slow)
    }

    @Test("the records' numbers are what stat and fdinfo say", .enabled(if: usable, Comment(rawValue: unusable ?? "")))
    func recordFields() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        let records = try #require(DescriptorIterator.records(tid: child.pid, kernels: .any))
        #expect(records.map(\.fd) == records.map(\.fd).sorted())
        for record in records {
            let info = try #require(ProcFdinfo(parsing: String(decoding: try Kernel.readFile("/proc/\(child.pid)/fdinfo/\(record.fd)"), as: UTF8.self)))
            #expect(record.flags == info.flags && record.position == info.position && record.mountId == info.mountId
                    && record.inode == info.inode, "fd \(record.fd)")
            #expect(record.target == (try Kernel.readLink("/proc/\(child.pid)/fd/\(record.fd)")), "fd \(record.fd)")
        }
    }

    @Test("an eventfd's record carries fdinfo's counter, id and semaphore flag", .enabled(if: usable, Comment(rawValue: unusable ?? "")))
    func eventfdRecords() throws {
        // eventfd(2) from libc (Swift's Glibc module leaves out <sys/eventfd.h>); 1 is EFD_SEMAPHORE.
        typealias MakeEventfd = @convention(c) (UInt32, Int32) -> Int32
        let eventfd = unsafeBitCast(try #require(dlsym(dlopen(nil, RTLD_NOW), "eventfd")), to: MakeEventfd.self)
        let plain = eventfd(3, 0), semaphore = eventfd(7, 1)
        defer {
            close(plain)
            close(semaphore)
        }
        #expect(plain >= 0 && semaphore >= 0)
        let records = try #require(DescriptorIterator.records(tid: getpid(), kernels: .any))
        for fd in [plain, semaphore] {
            let record = try #require(records.first { $0.fd == fd })
            let info = try #require(ProcFdinfo(parsing: String(decoding: try Kernel.readFile("/proc/self/fdinfo/\(fd)"), as: UTF8.self)))
            let state = try #require(info.eventfd)
            let recorded = try #require(record.eventfd, "fd \(fd): no eventfd state in the record")
            #expect(recorded.counter == state.counter && Int(recorded.id) == state.id, "fd \(fd)")
            if let flag = state.semaphore { #expect(recorded.semaphore == flag, "fd \(fd)") }
            let lines: ProcessReader.EventfdLines = state.semaphore == nil ? .withoutSemaphore : .withSemaphore
            #expect(ProcessReader.descriptor(record, eventfds: lines)?.eventfd == state, "fd \(fd)")
            #expect(ProcessReader.descriptor(record) == nil, "fd \(fd): made without knowing fdinfo's lines")
        }
        #expect(records.first { $0.fd == semaphore }?.eventfd?.semaphore == true)
    }

    @Test("hostile BTF: truncated, wrong magic, garbage — nil, no crash")
    func hostileBTF() throws {
        #expect(KernelBTF([]) == nil)
        #expect(KernelBTF([UInt8](repeating: 0xff, count: 64)) == nil)
        var header: [UInt8] = [0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        #expect(KernelBTF(header) == nil)  // type section beyond the bytes
        header[12] = 0
        let empty = try #require(KernelBTF(header))
        #expect(empty.functionID("bpf_iter_task_file") == nil && empty.member("file", "f_pos") == nil)
        if let vmlinux = try? Kernel.readFile("/sys/kernel/btf/vmlinux", limit: 256 << 20) {
            let btf = try #require(KernelBTF(vmlinux))
            #expect(btf.functionID("bpf_iter_task_file") != nil)
            #expect(btf.member("file", "f_pos")?.size == 8 && btf.member("file", "no_such_member") == nil)
            for cut in [25, 1000, vmlinux.count / 2, vmlinux.count - 1] { #expect(KernelBTF(Array(vmlinux.prefix(cut))) == nil) }
        }
    }
}

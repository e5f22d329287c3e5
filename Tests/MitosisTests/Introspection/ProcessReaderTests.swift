import Glibc
import Testing
@testable import MitosisInspect
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisTrace

@Suite("ProcessReader")
struct ProcessReaderTests {
    @Test("reads every mapping of a live child, with smaps detail, and leaves it untouched")
    func mappingsOfChild() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let mappings = try ProcessReader.mappings(TargetProcess(pid: child.pid))
        let plain = try ProcessReader.mappings(TargetProcess(pid: child.pid), detailed: false)
        #expect(mappings.count == before.maps.split(separator: "\n").count)
        #expect(plain.map(\.start) == mappings.map(\.start))
        #expect(mappings.allSatisfy { $0.sizes != nil && $0.vmFlags != nil })
        #expect(plain.allSatisfy { $0.sizes == nil && $0.vmFlags == nil })
        let exe = try Kernel.readLink("/proc/\(child.pid)/exe")
        #expect(exe == ScenarioProcess.executable("mitosis-scenario"))
        #expect(mappings.contains { $0.path == exe && $0.kind == .file && $0.isExecutable })
        #expect(mappings.filter { $0.kind == .stack }.count == 1)
        #expect(mappings.filter { $0.kind == .vdso }.count == 1)
        // The main stack is resident and dirty: smaps must say so.
        let stack = try #require(mappings.first { $0.kind == .stack })
        #expect((stack.sizes?.rss ?? 0) > 0 && stack.vmFlags?.contains("gd") == true)
        #expect(try TargetHealth(pid: child.pid) == before)
    }

    @Test("reads the descriptors of a live child: its stdin and stdout are the harness's pipes")
    func descriptorsOfChild() async throws {
        let child = try await ScenarioProcess("idle")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let descriptors = try ProcessReader.descriptors(TargetProcess(pid: child.pid))
        #expect(descriptors.map(\.fd) == before.descriptors.keys.sorted())
        for descriptor in descriptors {
            #expect(descriptor.target == before.descriptors[descriptor.fd])
        }
        let stdin = try #require(descriptors.first)
        #expect(stdin.fd == 0 && stdin.kind == .pipe && stdin.path == nil)
        #expect("pipe:[\(stdin.inode)]" == stdin.target)
        #expect(stdin.flagNames.first == "O_RDONLY")
        #expect(descriptors[1].kind == .pipe && descriptors[1].flagNames.first == "O_WRONLY")
        #expect(try ProcessReader.descriptor(TargetProcess(pid: child.pid), fd: 999) == nil)
        #expect(try TargetHealth(pid: child.pid) == before)
    }

    @Test("a descriptor replaced while it is read is never a mix of two open files")
    func churn() async throws {
        let child = try await ScenarioProcess("fdchurn")
        defer { child.stop() }
        let inodeA = UInt64(try child.intFact("a_ino")), inodeB = UInt64(try child.intFact("b_ino"))
        var seen: [UInt64: Int] = [:]
        for _ in 0..<2000 {
            guard let descriptor = try ProcessReader.descriptor(TargetProcess(pid: child.pid), fd: 100) else { continue }
            // fdinfo (position) and stat (inode) must describe the same open file. (The link target
            // can still name the other file after two replacements between its two reads: A-B-A.)
            let isA = descriptor.inode == inodeA
            #expect(isA || descriptor.inode == inodeB)
            #expect(descriptor.position == (isA ? 111 : 222), "inode \(descriptor.inode) at \(descriptor.position)")
            seen[descriptor.inode, default: 0] += 1
        }
        #expect(seen.count == 2)  // the race really ran
    }

    @Test("a process that does not exist is .noSuchProcess")
    func missing() throws {
        let missing = try Self.unusedPID()
        #expect(throws: MitosisError.noSuchProcess(missing)) { try ProcessReader.mappings(TargetProcess(pid: missing)) }
    }

    /// A pid no process can have: pid_max bounds pids, and one above it never exists.
    static func unusedPID() throws -> Int32 {
        Int32(String(decoding: try Kernel.readFile("/proc/sys/kernel/pid_max"), as: UTF8.self).trimmingCharacters(in: "\n"))! + 1
    }
}

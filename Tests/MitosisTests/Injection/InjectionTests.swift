import CMitosis
import Glibc
import SystemPackage
import Testing
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisTrace

extension Tracer {
    /// The raw general-purpose registers of a frozen thread, as bytes (for exact comparison).
    func registerBytes(_ tid: Int32) throws -> [UInt8] {
        let registers = try Ptrace.getRegisters(tid)
        return withUnsafeBytes(of: registers) { Array($0) }
    }
}

@Suite("Syscall injection")
struct InjectionTests {
    /// Freezes the `inject` scenario, runs `body`, and checks that every thread's registers are
    /// exactly as before and that the child ends running, untraced, with the same fds and maps.
    private func withInjectTarget(_ body: (Tracer, ScenarioProcess) async throws -> Void) async throws {
        let child = try await ScenarioProcess("inject")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        try await withFrozenProcess(child.pid) { tracer async throws in
            var registers: [Int32: [UInt8]] = [:]
            for tid in await tracer.threads(of: child.pid) { registers[tid] = try await tracer.registerBytes(tid) }
            try await body(tracer, child)
            for tid in await tracer.threads(of: child.pid) {
                #expect(try await tracer.registerBytes(tid) == registers[tid], "registers of thread \(tid)")
            }
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")  // the main thread, blocked in read(), still answers
        try await child.send("feed")  // the reader thread, blocked in read(), still reads
        #expect(try child.intFact("reader_bytes") == 1)
        try await child.send("rounds")
        let rounds = try child.intFact("sleeper_rounds")
        try await Task.sleep(for: .microseconds(30_000))
        try await child.send("rounds")  // the sleeper thread, in nanosleep(), still loops
        #expect(try child.intFact("sleeper_rounds") > rounds)
    }

    @Test("getpid and gettid run in the chosen thread")
    func getpidAndGettid() async throws {
        try await withInjectTarget { tracer, child in
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
            let reader = Int32(try child.intFact("reader_tid"))
            let sleeper = Int32(try child.intFact("sleeper_tid"))
            #expect(try await tracer.injectSyscall(SyscallNumber.gettid, [], in: reader) == Int64(reader))
            #expect(try await tracer.injectSyscall(SyscallNumber.gettid, [], in: sleeper) == Int64(sleeper))
            #expect(try await tracer.injectSyscall(SyscallNumber.gettid, []) == Int64(child.pid))
        }
    }

    @Test("mmap appears in the target's maps; munmap removes it")
    func mmapAndMunmap() async throws {
        try await withInjectTarget { tracer, child in
            let length = 5 * 4096
            let address = try await tracer.injectMmap(length: length, protection: PROT_READ)
            let maps = String(decoding: try Kernel.readFile("/proc/\(child.pid)/maps"), as: UTF8.self)
            let range = String(address, radix: 16) + "-" + String(address + UInt64(length), radix: 16) + " r--p "
            #expect(maps.split(separator: "\n").contains { $0.hasPrefix(range) }, "\(range) in maps")
            try await tracer.injectMunmap(address: address, length: length)
            let after = String(decoding: try Kernel.readFile("/proc/\(child.pid)/maps"), as: UTF8.self)
            #expect(!after.contains(String(address, radix: 16) + "-"))
        }
    }

    @Test("write(2) of known bytes into the target's pipe")
    func writeIntoPipe() async throws {
        var pipeRead = 0
        try await withInjectTarget { tracer, child in
            pipeRead = try child.intFact("pipe_read")
            let fd = UInt64(try child.intFact("pipe_write"))
            let bytes = Array("mitosis\n".utf8)
            let buffer = try await tracer.injectMmap(length: 4096)
            _ = try bytes.withUnsafeBytes { try Kernel.writeMemory(pid: child.pid, address: buffer, from: $0) }
            #expect(try await tracer.injectSyscall(SyscallNumber.write, [fd, buffer, UInt64(bytes.count)]) == 8)
            try await tracer.injectMunmap(address: buffer, length: 4096)
        }
        #expect(pipeRead == 3)
        // The bytes wait in the pipe for the target itself to read.
        let child = try await ScenarioProcess("inject")
        defer { child.stop() }
        try await withFrozenProcess(child.pid) { tracer async throws in
            let buffer = try await tracer.injectMmap(length: 4096)
            _ = try Array("mitosis\n".utf8).withUnsafeBytes { try Kernel.writeMemory(pid: child.pid, address: buffer, from: $0) }
            _ = try await tracer.performSyscall(SyscallNumber.write, [UInt64(try child.intFact("pipe_write")), buffer, 8])
            try await tracer.injectMunmap(address: buffer, length: 4096)
        }
        try await child.send("drain")
        #expect(try child.fact("data") == "6d69746f7369730a")
    }

    @Test("a failing call returns -errno, and performSyscall throws that Errno")
    func errorsMapped() async throws {
        try await withInjectTarget { tracer, _ async throws in
            #expect(try await tracer.injectSyscall(SyscallNumber.close, [999]) == -Int64(EBADF))
            await #expect(throws: Errno.badFileDescriptor) {
                try await tracer.performSyscall(SyscallNumber.close, [999])
            }
            await #expect(throws: Errno.invalidArgument) {
                try await tracer.injectMunmap(address: 1, length: 4096)  // unaligned
            }
        }
    }

    @Test("a userfaultfd created by the target comes over; the target keeps no descriptor")
    func userfaultfdFromTarget() async throws {
        try await withInjectTarget { tracer, _ async throws in
            let uffd = try await tracer.createTargetUserfaultfd()
            defer { try? uffd.close() }
            #expect(try Kernel.readLink("/proc/self/fd/\(uffd.rawValue)") == "anon_inode:[userfaultfd]")
        }
    }

    @Test("a thread that is not frozen by the tracer is refused")
    func refusesForeignThread() async throws {
        try await withInjectTarget { tracer, _ async throws in
            await #expect(throws: MitosisError.self) {
                try await tracer.injectSyscall(SyscallNumber.getpid, [], in: getpid())
            }
        }
    }

    @Test("signals dequeued during an injected call are delivered at thaw, none eaten")
    func signalsDeferredToThaw() async throws {
        let child = try await ScenarioProcess("signals")
        defer { child.stop() }
        try await withFrozenProcess(child.pid) { tracer async throws in
            kill(child.pid, SIGUSR1)
            kill(child.pid, SIGUSR2)
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("count")
        #expect(try child.fact("usr1") == "1")
        #expect(try child.fact("usr2") == "1")
    }

    @Test("signals queued with a value during injected calls arrive at thaw with that value")
    func queuedSignalsKeepTheirValue() async throws {
        let child = try await ScenarioProcess("signals")
        defer { child.stop() }
        try await withFrozenProcess(child.pid) { tracer async throws in
            sigqueue(child.pid, SIGUSR1, sigval(sival_int: 7))
            sigqueue(child.pid, SIGUSR2, sigval(sival_int: 42))
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
        try await child.send("count")
        #expect(try child.fact("usr1") == "1" && child.fact("usr2") == "1")
        #expect(try child.fact("usr1_value") == "7")
        #expect(try child.fact("usr2_value") == "42")
    }

    @Test("a thread frozen inside an rseq critical section and lent for an injected call resumes at the section's abort handler, its section still guarded")
    func rseqCriticalSection() async throws {
        let child = try await ScenarioProcess("rseq")
        defer { child.stop() }
        try await child.send("check")
        #expect(try child.fact("check") == "PASS", "a signal does not abort the section even before any freeze")
        // The injected call returned the thread to user space outside the section, where the
        // kernel cleared the section pointer: the thread went back in unguarded, and spun on
        // through every later signal.
        try await withFrozenProcess(child.pid) { tracer async throws in
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
        }
        try await child.send("check")
        #expect(try child.fact("check") == "PASS")
    }

    @Test("injecting into a job-control-stopped target leaves it stopped")
    func stoppedTarget() async throws {
        let child = try await ScenarioProcess("inject")
        defer { child.stop() }
        kill(child.pid, SIGSTOP)
        for _ in 0..<100 where try TargetHealth.threadStates(of: child.pid)[child.pid] != "T" { try await Task.sleep(for: .microseconds(5_000)) }
        try await withFrozenProcess(child.pid) { tracer async throws in
            #expect(try await tracer.injectSyscall(SyscallNumber.getpid, []) == Int64(child.pid))
        }
        try await Task.sleep(for: .microseconds(20_000))
        #expect(try TargetHealth.threadStates(of: child.pid).values.allSatisfy { $0 == "T" })
        #expect(try TargetHealth.tracer(of: child.pid) == 0)
        kill(child.pid, SIGCONT)
        try await child.send("ping")
    }
}

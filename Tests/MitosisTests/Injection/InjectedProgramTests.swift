import Glibc
import Testing
@testable import MitosisKernel
import MitosisModel
@testable import MitosisTrace

extension Tracer {
    /// A frozen thread's blocked-signal mask (asked from the tracer's thread, as ptrace requires).
    func signalMask(_ tid: Int32) throws -> UInt64 { try Ptrace.signalMask(tid) }
}

@Suite("Injected programs")
struct InjectedProgramTests {
    @Test("a program runs its calls in order in the chosen thread; registers, signal masks and the target are as before; the cost per call is printed")
    func programs() async throws {
        let child = try await ScenarioProcess("inject")
        defer { child.stop() }
        let before = try TargetHealth(pid: child.pid)
        let clock = ContinuousClock()
        try await withFrozenProcess(child.pid) { tracer async throws in
            let reader = Int32(try child.intFact("reader_tid"))
            var registers: [Int32: [UInt8]] = [:], masks: [Int32: UInt64] = [:]
            for tid in await tracer.threads(of: child.pid) {
                registers[tid] = try await tracer.registerBytes(tid)
                masks[tid] = try await tracer.signalMask(tid)
            }
            let calls = [InjectedCall(SyscallNumber.getpid), InjectedCall(SyscallNumber.gettid), InjectedCall(SyscallNumber.close, [999])]
            let many = Array(repeating: InjectedCall(SyscallNumber.getpid), count: 50)
            let length = (Tracer.programAreaSize(calls: many.count) + 4095) / 4096 * 4096
            let area = try await tracer.injectMmap(length: length, protection: SyscallFlags.readWriteExecuteProtection)
            #expect(try await tracer.runProgram(calls, area: area) == [Int64(child.pid), Int64(child.pid), -Int64(EBADF)])
            #expect(try await tracer.runProgram(calls, in: reader, area: area) == [Int64(child.pid), Int64(reader), -Int64(EBADF)])
            // An ordinary injected call after a program (the thread waits in the program's signal stop).
            #expect(try await tracer.injectSyscall(SyscallNumber.gettid, [], in: reader) == Int64(reader))
            let start = clock.now
            for _ in 0..<20 {
                #expect(try await tracer.runProgram(many, area: area) == Array(repeating: Int64(child.pid), count: many.count))
            }
            print("injected program of 50 getpid calls: \((clock.now - start) / 1_000) per call")
            // Programs in both threads at once, each in its own part of the area, started
            // together. A program for a thread that is not seized fails the call, once the
            // program started before it has ended and its thread is put back (checked below).
            let half = UInt64(Tracer.programAreaSize(calls: calls.count))
            let both = try await tracer.runPrograms([(child.pid, calls, area), (reader, calls, area + half)])
            #expect(both == [[Int64(child.pid), Int64(child.pid), -Int64(EBADF)], [Int64(child.pid), Int64(reader), -Int64(EBADF)]])
            await #expect(throws: MitosisError.self) {
                try await tracer.runPrograms([(child.pid, calls, area), (999_999, calls, area + half)])
            }
            try await tracer.injectMunmap(address: area, length: length)
            for tid in await tracer.threads(of: child.pid) {
                #expect(try await tracer.registerBytes(tid) == registers[tid], "registers of thread \(tid)")
                #expect(try await tracer.signalMask(tid) == masks[tid], "signal mask of thread \(tid)")
            }
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
        #expect(try TargetHealth(pid: child.pid) == before)
        try await child.send("ping")  // the main thread, blocked in read(), still answers
        try await child.send("feed")  // the reader thread, blocked in read(), still reads
        #expect(try child.intFact("reader_bytes") == 1)
    }
}

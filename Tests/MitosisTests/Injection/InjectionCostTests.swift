import Glibc
import Testing
@testable import MitosisKernel
@testable import MitosisTrace

@Suite("Syscall injection cost")
struct InjectionCostTests {
    @Test("1,000 injected getpid calls return the target's pid; the cost per call is printed")
    func thousandGetpid() async throws {
        let child = try await ScenarioProcess("inject")
        defer { child.stop() }
        let clock = ContinuousClock()
        let elapsed = try await withFrozenProcess(child.pid) { tracer async throws in
            var wrong = 0
            let start = clock.now
            for _ in 0..<1_000 where try await tracer.injectSyscall(SyscallNumber.getpid) != Int64(child.pid) { wrong += 1 }
            #expect(wrong == 0)
            return clock.now - start
        }
        print("injected getpid: \(elapsed / 1_000) per call")
        await #expect(try TargetHealth.runsFreely(child.pid))
    }

    @Test("programs in six threads, one by one and side by side, answer alike; the cost of each way is printed")
    func programsSideBySide() async throws {
        let child = try await ScenarioProcess("threads", ["5"])
        defer { child.stop() }
        let clock = ContinuousClock()
        try await withFrozenProcess(child.pid) { tracer async throws in
            let tids = await tracer.threads(of: child.pid)
            #expect(tids.count == 6)
            let calls = [InjectedCall(SyscallNumber.getpid), InjectedCall(SyscallNumber.gettid)]
            let size = Tracer.programAreaSize(calls: calls.count)
            let length = (size * tids.count + 4095) / 4096 * 4096
            let area = try await tracer.injectMmap(length: length, protection: SyscallFlags.readWriteExecuteProtection)
            let programs = tids.enumerated().map { (tid: Optional($0.element), calls: calls, area: area + UInt64($0.offset * size)) }
            let expected = tids.map { Optional([Int64(child.pid), Int64($0)]) }
            var start = clock.now
            for _ in 0..<30 {
                var answers: [[Int64]?] = []
                for program in programs { answers.append(try await tracer.runProgram(program.calls, in: program.tid, area: program.area)) }
                #expect(answers == expected)
            }
            let oneByOne = (clock.now - start) / 30
            start = clock.now
            for _ in 0..<30 { #expect(try await tracer.runPrograms(programs) == expected) }
            print("programs in \(tids.count) threads: one by one \(oneByOne), side by side \((clock.now - start) / 30)")
            try await tracer.injectMunmap(address: area, length: length)
        }
        await #expect(try TargetHealth.runsFreely(child.pid))
    }
}

import Foundation
import Glibc
import MitosisTestSupport
import Testing
@testable import MitosisKernel
import SystemPackage

/// The launcher every tool and lock goes through: writing to a child that has gone must be an
/// error the caller handles, never SIGPIPE, which would end Mitosis (and, during a restore, take
/// the network lock with it at the worst moment).
@Suite("Child processes")
struct ChildProcessTests {
    @Test("writing to a child that exited throws EPIPE; no SIGPIPE is raised or left pending")
    func writeToExitedChild() async throws {
        // The test bundle catches SIGPIPE (a stray one must not end the run): none may arrive here.
        let sigpipesBefore = mitosis_test_support_sigpipes()
        let status = try String(decoding: Kernel.readFile("/proc/self/status"), as: UTF8.self)
        let caught = status.split(separator: "\n").first { $0.hasPrefix("SigCgt:") }.flatMap { UInt64($0.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) }
        #expect(caught.map { $0 & (1 << (UInt64(SIGPIPE) - 1)) != 0 } == true, "the test bundle does not catch SIGPIPE: \(status)")
        let child = try ChildProcess(executable: "/bin/true", arguments: [], stdin: .pipe, stdout: .null, stderr: .null)
        let exit = try await Blocking.run { child.wait() }
        #expect(ChildProcess.exitCode(of: exit) == 0)
        let outcome = try await Blocking.run { () -> Errno? in
            do throws(Errno) { try child.write(Array("delete table inet x\n".utf8)); return nil } catch { return error }
        }
        #expect(outcome == .brokenPipe)
        // The thread's signal state is as before: SIGPIPE neither pending nor left blocked.
        let (pending, blocked) = try await Blocking.run { () -> (Bool, Bool) in
            try? child.write([0x0A])
            var pending = sigset_t(), mask = sigset_t()
            sigpending(&pending)
            pthread_sigmask(SIG_SETMASK, nil, &mask)
            return (sigismember(&pending, SIGPIPE) == 1, sigismember(&mask, SIGPIPE) == 1)
        }
        #expect(!pending)
        #expect(!blocked)
        #expect(mitosis_test_support_sigpipes() == sigpipesBefore)
        child.closeInput()
    }
}

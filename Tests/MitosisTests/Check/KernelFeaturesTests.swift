import Foundation
import Glibc
import SystemPackage
import Testing
@testable import MitosisCheckpoint
@testable import MitosisKernel
@testable import MitosisModel

@Suite("Kernel features")
struct KernelFeaturesTests {
    static let ids = ["ptrace-seize", "process-vm-readv", "pidfd-getfd", "kcmp", "syscall-injection",
                      "sock-diag-inet", "sock-diag-unix", "soft-dirty", "pagemap-scan", "uffd-wp-async",
                      "dirty-tracking"]

    @Test("every probe answers, as this machine's kernel (6.18, no soft-dirty) really is")
    func thisMachine() async throws {
        let report = try await KernelFeatures.check()
        #expect(report.features.map(\.id) == Self.ids)
        for id in Self.ids where id != "soft-dirty" {
            #expect(report[id]?.supported == true, "\(id): \(report[id]?.detail ?? "missing")")
        }
        #expect(report["soft-dirty"] == KernelFeature(
            id: "soft-dirty", supported: false,
            detail: "/proc/PID/clear_refs accepted 4, but a page written afterwards never shows pagemap bit 55 (kernel without CONFIG_MEM_SOFT_DIRTY)"))
        #expect(report["ptrace-seize"]?.detail == "PTRACE_SEIZE and PTRACE_INTERRUPT stopped 1 thread(s) of a child; PTRACE_DETACH released them")
        #expect(report["process-vm-readv"]?.detail == "process_vm_readv read 27 known bytes of a child's memory")
        #expect(report["dirty-tracking"]?.detail == "uffd-wp (auto picks it; this kernel offers uffd-wp, hash)")
    }

    @Test("a probe that throws reports the feature unsupported with the error as detail")
    func failingProbe() async throws {
        let probe = KernelProbe("always-missing") { _ in throw Errno.noSuchFileOrDirectory }
        let report = try await KernelFeatures.check([.kcmp, probe])
        #expect(report.features == [
            KernelFeature(id: "kcmp", supported: true,
                          detail: "kcmp saw an inherited open file as shared and the forked address space as distinct"),
            KernelFeature(id: "always-missing", supported: false, detail: "\(Errno.noSuchFileOrDirectory)"),
        ])
    }

    @Test("the probe child shares the pipe and memory it promises, and is reaped by end()")
    func probeChild() async throws {
        let child = try ProbeChild()
        #expect(try Kernel.readLink("/proc/\(child.pid)/fd/\(child.sharedFD)") == Kernel.readLink("/proc/self/fd/\(child.sharedFD)"))
        // The child closes every other inherited descriptor as it starts.
        var descriptors: [String] = []
        for _ in 0..<200 {
            descriptors = try Kernel.listDirectory("/proc/\(child.pid)/fd")
            if descriptors == [String(child.sharedFD)] { break }
            try await Task.sleep(for: .microseconds(10_000))
        }
        #expect(descriptors == [String(child.sharedFD)])
        #expect(child.pageAddress % 4096 == 0)
        child.end()
        #expect(throws: Errno.noSuchFileOrDirectory) { try Kernel.readFile("/proc/\(child.pid)/stat") }
    }

    @Test("mitosis check --json prints the report; the text form prints one line per feature")
    func commandLine() async throws {
        let json = try await ToolRun(ToolRun.mitosis, ["check", "--json"])
        #expect(json.status == 0)
        let report = try JSONOutput.decoder().decode(KernelFeatureReport.self, from: Data(json.standardOutput.utf8))
        #expect(report.features.map(\.id) == Self.ids)
        #expect(report["soft-dirty"]?.supported == false)
        #expect(report["uffd-wp-async"]?.supported == true)
        let text = try await ToolRun(ToolRun.mitosis, ["check"])
        #expect(text.status == 0)
        let lines = text.standardOutput.split(separator: "\n")
        #expect(lines.count == Self.ids.count)
        #expect(lines.contains { $0.hasPrefix("soft-dirty         no   /proc/PID/clear_refs accepted 4") })
        #expect(lines.contains { $0.hasPrefix("pagemap-scan       yes  ioctl PAGEMAP_SCAN") })
    }
}

import Foundation
import Testing

/// The layering that Package.swift enforces between targets, plus what the compiler cannot see:
/// which targets may call libc, and which binaries may link libunwind.
@Suite("Architecture")
struct LayeringTests {
    /// The package's root, found from this file's path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Modules that talk to the kernel directly, and the only targets allowed to import them.
    static let kernelModules: [String: Set<String>] = [
        "Glibc": ["MitosisKernel"],
        "CMitosis": ["MitosisKernel"],
        "CMitosisStacks": ["MitosisStacks"],
    ]

    @Test("no target above the kernel layer imports libc or the C shims")
    func kernelIsTouchedInOneLayer() throws {
        var offenders: [String] = []
        let sources = Self.root.appendingPathComponent("Sources")
        for target in try FileManager.default.contentsOfDirectory(atPath: sources.path) where target.hasPrefix("Mitosis") {
            let enumerator = FileManager.default.enumerator(atPath: sources.appendingPathComponent(target).path)
            while let file = enumerator?.nextObject() as? String {
                guard file.hasSuffix(".swift") else { continue }
                let text = try String(contentsOf: sources.appendingPathComponent(target).appendingPathComponent(file), encoding: .utf8)
                for line in text.split(separator: "\n") where line.hasPrefix("import ") {
                    let module = String(line.dropFirst("import ".count))
                    if let allowed = Self.kernelModules[module], !allowed.contains(target) {
                        offenders.append("Sources/\(target)/\(file): import \(module)")
                    }
                }
            }
        }
        #expect(offenders == [], "libc and the C shims belong to MitosisKernel:\n\(offenders.joined(separator: "\n"))")
    }

    @Test("a client that only inspects links without libunwind or libelf")
    func inspectOnlyClientSkipsStacks() async throws {
        let ldd = try await ToolRun("/usr/bin/ldd", [ScenarioProcess.executable("mitosis-inspect-example")])
        #expect(ldd.status == 0)
        #expect(!ldd.standardOutput.contains("libunwind"))
        #expect(!ldd.standardOutput.contains("libelf"))
        // …while the CLI, which shows stacks, does link them.
        let cli = try await ToolRun("/usr/bin/ldd", [ToolRun.mitosis])
        #expect(cli.standardOutput.contains("libunwind"))
    }

    @Test("the inspect-only client inspects a real process")
    func inspectOnlyClientWorks() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        let run = try await ToolRun(ScenarioProcess.executable("mitosis-inspect-example"), [String(child.pid)])
        #expect(run.status == 0)
        #expect(run.standardOutput.hasPrefix("process \(child.pid) (mitosis-scenari): 1 threads, "))
    }
}

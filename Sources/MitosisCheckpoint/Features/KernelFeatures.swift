import SystemPackage
import MitosisKernel
import MitosisModel

/// Whether this kernel has one feature Mitosis uses, found by trying it.
public struct KernelFeature: Codable, Equatable, Sendable {
    /// A stable identifier: `ptrace-seize`, `pagemap-scan`…
    public var id: String
    public var supported: Bool
    /// What the probe did and saw, or why it failed (one line).
    public var detail: String

    package init(id: String, supported: Bool, detail: String) {
        self.id = id
        self.supported = supported
        self.detail = detail
    }
}

/// The result of `mitosis check`: `{"features": [{"id", "supported", "detail"}, …]}`.
public struct KernelFeatureReport: Codable, Equatable, Sendable {
    public var features: [KernelFeature]

    public subscript(id: String) -> KernelFeature? { features.first { $0.id == id } }
}

/// One feature probe. It tries the feature for real (against `ProbeChild`, a short-lived child
/// of its own, or on Mitosis itself where that disturbs nothing) and returns a one-line detail;
/// throwing means unsupported, with the error as the detail.
public struct KernelProbe: Sendable {
    public let id: String
    package let run: @Sendable (ProbeChild) async throws -> String

    package init(_ id: String, run: @escaping @Sendable (ProbeChild) async throws -> String) {
        self.id = id
        self.run = run
    }
}

/// Why a probe found a feature missing when no system call failed (one line; the `probe`
/// domain of the `MitosisFailure` family).
public struct ProbeFailure: MitosisFailure {
    public static let domain = "probe"
    public let description: String
    public var code: String { "probe.failed" }
    public init(_ description: String) { self.description = description }
}

/// What the running kernel supports, probe by probe.
public enum KernelFeatures {
    /// Every probe, in report order. An area adds its feature with one line here (and the probe
    /// itself as a `static let` in an `extension KernelProbe`).
    public static let probes: [KernelProbe] = [
        .ptraceSeize,
        .processVMReadv,
        .pidfdGetfd,
        .kcmp,
        .syscallInjection,
        .sockDiagInet,
        .sockDiagUnix,
        .softDirty,
        .pagemapScan,
        .uffdWriteProtectAsync,
        .dirtyTracking,
    ]

    /// Runs `probes` (all by default) against one probe child and reports each.
    public static func check(_ probes: [KernelProbe] = KernelFeatures.probes) async throws(Errno) -> KernelFeatureReport {
        let child = try ProbeChild()
        defer { child.end() }
        var features: [KernelFeature] = []
        for probe in probes {
            do {
                features.append(KernelFeature(id: probe.id, supported: true, detail: try await probe.run(child)))
            } catch {
                features.append(KernelFeature(id: probe.id, supported: false, detail: "\(error)"))
            }
        }
        return KernelFeatureReport(features: features)
    }
}

import Foundation
import Glibc
import Testing
@testable import MitosisKernel

/// `--metrics`: a real protect/standby pair across two test hosts, each serving Prometheus's
/// text format; scraped with curl, twice, the epoch counters must advance.
@Suite struct ReplicationMetricsTests {
    /// The value of the sample `name` (no labels) in a Prometheus text exposition.
    static func value(_ name: String, in text: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ")[1])
        }
        return nil
    }

    /// The number after `marker` that comes after `anchor` in `text`: `12.5` in `… p99 12.5 ms`.
    static func number(after marker: String, following anchor: String, in text: String) -> Double? {
        guard let start = text.range(of: anchor)?.upperBound, let at = text.range(of: marker, range: start..<text.endIndex)?.upperBound else { return nil }
        return Double(text[at...].prefix { $0.isNumber || $0 == "." })
    }

    static func scrape(_ hosts: NetworkHosts, _ host: String, _ url: String) async throws -> (status: Int32, body: String) {
        let run = try await ToolRun("/usr/bin/curl", ["-sS", "--max-time", "10", "-w", "\\n%{http_code}", url], prefix: hosts.prefix(host))
        return (run.status, run.standardOutput)
    }

    @Test func protectAndStandbyServePrometheusMetricsWhoseEpochCountersAdvance() async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") else {
            Issue.record("curl is missing (scripts/setup installs it)")
            return
        }
        let hosts = try await NetworkHosts()
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        do {
            let log = scratch.path + "/scenario.log"
            let child = try await ScenarioProcess("restore", [log, "4", "1", "120"], prefix: hosts.prefix(hosts.a))
            defer { child.stop() }
            try await child.send("detach")
            let standby = try ServiceProcess(["standby", "--listen", "\(hosts.addressB):7400", "--images", scratch.path + "/standby",
                                              "--metrics", "\(hosts.addressB):9465"], in: hosts.prefix(hosts.b), log: scratch.path + "/standby.log")
            try await standby.awaitLog("serving http://")
            let protect = try ServiceProcess(["protect", "\(child.pid)", "--standby", "\(hosts.addressB):7400", "--interval", "50",
                                              "--metrics", "\(hosts.addressA):9464"], in: hosts.prefix(hosts.a), log: scratch.path + "/protect.log")
            try await protect.awaitLog("serving http://")
            _ = try await StandbyImages.awaitEpoch(scratch.path + "/standby", atLeast: 3)

            let primaryURL = "http://\(hosts.addressA):9464/metrics", standbyURL = "http://\(hosts.addressB):9465/metrics"
            let first = try await Self.scrape(hosts, hosts.a, primaryURL)
            let firstStandby = try await Self.scrape(hosts, hosts.b, standbyURL)
            #expect(first.status == 0 && first.body.hasSuffix("\n200"), "\(first.body.suffix(300))")
            #expect(firstStandby.status == 0 && firstStandby.body.hasSuffix("\n200"), "\(firstStandby.body.suffix(300))")
            for name in ["mitosis_protect_epoch", "mitosis_protect_epochs_total", "mitosis_protect_full_epochs_total",
                         "mitosis_protect_sent_bytes_total", "mitosis_protect_lag_epochs", "mitosis_protect_connected",
                         "mitosis_protect_freeze_seconds_count", "mitosis_protect_lag_seconds_count"] {
                #expect(Self.value(name, in: first.body) != nil, "\(name) missing in:\n\(first.body.prefix(3000))")
            }
            #expect(first.body.contains("# TYPE mitosis_protect_freeze_seconds histogram"))
            #expect(first.body.contains("mitosis_protect_freeze_seconds_bucket{le=\"0.02\"}"), "\(first.body.prefix(3000))")
            #expect(Self.value("mitosis_protect_connected", in: first.body) == 1)
            #expect(Self.value("mitosis_protect_full_epochs_total", in: first.body) == 1)
            for name in ["mitosis_standby_epoch", "mitosis_standby_term", "mitosis_standby_epochs_total", "mitosis_standby_committed_bytes_total",
                         "mitosis_standby_ready", "mitosis_standby_commit_seconds_count"] {
                #expect(Self.value(name, in: firstStandby.body) != nil, "\(name) missing in:\n\(firstStandby.body.prefix(3000))")
            }
            #expect(Self.value("mitosis_standby_term", in: firstStandby.body) == 1)

            // Epochs go on: every counter and the epoch numbers advance, on both sides.
            let epochs = Self.value("mitosis_protect_epochs_total", in: first.body) ?? 0
            let standbyEpochs = Self.value("mitosis_standby_epochs_total", in: firstStandby.body) ?? 0
            _ = try await StandbyImages.awaitEpoch(scratch.path + "/standby", atLeast: UInt64(max(epochs, standbyEpochs)) + 3)
            let second = try await Self.scrape(hosts, hosts.a, primaryURL)
            let secondStandby = try await Self.scrape(hosts, hosts.b, standbyURL)
            #expect((Self.value("mitosis_protect_epochs_total", in: second.body) ?? 0) >= epochs + 2, "\(second.body.prefix(2000))")
            #expect((Self.value("mitosis_protect_epoch", in: second.body) ?? 0) > (Self.value("mitosis_protect_epoch", in: first.body) ?? 0))
            #expect((Self.value("mitosis_protect_freeze_seconds_count", in: second.body) ?? 0) >= epochs + 2)
            #expect((Self.value("mitosis_protect_sent_bytes_total", in: second.body) ?? 0) > (Self.value("mitosis_protect_sent_bytes_total", in: first.body) ?? 0))
            #expect((Self.value("mitosis_standby_epochs_total", in: secondStandby.body) ?? 0) >= standbyEpochs + 2, "\(secondStandby.body.prefix(2000))")
            #expect((Self.value("mitosis_standby_epoch", in: secondStandby.body) ?? 0) > (Self.value("mitosis_standby_epoch", in: firstStandby.body) ?? 0))

            // One route only.
            let other = try await Self.scrape(hosts, hosts.a, "http://\(hosts.addressA):9464/other")
            #expect(other.body.hasSuffix("\n404"), "\(other.body)")

            #expect(await protect.stop(SIGTERM) == 0, "\(protect.text.suffix(2000))")
            #expect(protect.text.contains("protected process \(child.pid): "))
            // An epoch's lag runs from its freeze to its acknowledgement: shorter than its `total`
            // (from its checkpoint's start: the pre-copy before the freeze takes milliseconds),
            // and never shorter than its freeze.
            let lag99 = try #require(Self.number(after: " p99 ", following: "; lag p50 ", in: protect.text))
            let total99 = try #require(Self.number(after: "/", following: "  total ", in: protect.text))
            let freeze99 = try #require(Self.number(after: " p99 ", following: "; freeze p50 ", in: protect.text))
            #expect(freeze99 <= lag99 && lag99 < total99, "\(protect.text.suffix(1500))")
            #expect(await standby.stop(SIGTERM) == 0, "\(standby.text.suffix(2000))")
            #expect(try TargetHealth.tracer(of: child.pid) == 0)
        } catch {
            await hosts.remove()
            throw error
        }
        await hosts.remove()
    }
}

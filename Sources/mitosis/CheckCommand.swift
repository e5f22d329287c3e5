import ArgumentParser
import Foundation
import Mitosis

/// Tells which kernel features Mitosis can use here, each found by trying it.
struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Try each kernel feature Mitosis uses and report which work here.")

    @Flag(help: "Print JSON: {\"features\": [{\"id\", \"supported\", \"detail\"}]}.") var json = false

    func run() async throws {
        do {
            let report = try await KernelFeatures.check()
            if json {
                print(try JSONOutput.string(report))
                return
            }
            let width = report.features.map(\.id.count).max() ?? 0
            for feature in report.features {
                let id = feature.id.padding(toLength: width, withPad: " ", startingAt: 0)
                print("\(id)  \(feature.supported ? "yes" : "no ")  \(feature.detail)")
            }
        } catch {
            fail(error)
        }
    }
}

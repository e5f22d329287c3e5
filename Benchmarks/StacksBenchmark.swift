import ArgumentParser
import Foundation
import Mitosis
import MitosisStacks

/// The stacks of every thread of a process, by Mitosis beside `eu-stack -p` (elfutils) and
/// `gdb -batch -ex 'thread apply all bt'`, interleaved in one run; and how far Mitosis's frames
/// agree with eu-stack's.
struct StacksBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stacks",
        abstract: "Stacks of a many-threaded process: Mitosis vs eu-stack vs gdb, and frame agreement with eu-stack.")

    @Option(help: "The pid of a running target (e.g. `mitosis-scenario threads 63`).") var pid: Int32
    @Option(help: "Rounds; each runs every tool once.") var runs: Int = 5
    @Flag(help: "Leave gdb out (it takes about a second per run).") var skipGdb = false
    @Option(help: "Also sample at this rate for one second and report the target's stop time per sample.")
    var sampleHz: Double = 50

    func run() async throws {
        let clock = ContinuousClock()
        var mitosis: [Duration] = [], euStack: [Duration] = [], gdb: [Duration] = []
        var agreement = (frames: 0, samePC: 0, sameName: 0, threads: 0)
        for round in 0..<runs {
            var start = clock.now
            let stacks = try await ProcessStacks.capture(pid: pid)
            mitosis.append(clock.now - start)

            start = clock.now
            let euOutput = try Self.run("/usr/bin/eu-stack", ["-p", "\(pid)"])
            euStack.append(clock.now - start)

            if !skipGdb {
                start = clock.now
                _ = try Self.run("/usr/bin/gdb", ["-batch", "-nx", "-ex", "thread apply all bt", "-p", "\(pid)"])
                gdb.append(clock.now - start)
            }
            if round == 0 {
                let reference = Self.parseEuStack(euOutput)
                agreement.threads = reference.count
                for thread in stacks.threads {
                    guard let theirs = reference[thread.tid] else { continue }
                    for (index, frame) in theirs.enumerated() {
                        agreement.frames += 1
                        guard index < thread.frames.count else { continue }
                        if thread.frames[index].pc == frame.pc { agreement.samePC += 1 }
                        if thread.frames[index].function == frame.name { agreement.sameName += 1 }
                    }
                }
                print("target \(pid): \(stacks.threads.count) threads, \(stacks.threads.map(\.frames.count).reduce(0, +)) frames")
            }
        }
        let ours = Self.median(mitosis)
        print("mitosis (library, freeze+unwind+thaw+symbolize): median \(ours)  min \(mitosis.min()!)")
        print("eu-stack -p:                                       median \(Self.median(euStack))  = \(Self.ratio(Self.median(euStack), ours)) × mitosis")
        if !skipGdb {
            print("gdb -batch 'thread apply all bt':                  median \(Self.median(gdb))  = \(Self.ratio(Self.median(gdb), ours)) × mitosis")
        }
        print("agreement with eu-stack over \(agreement.threads) threads, \(agreement.frames) frames: "
              + "pc \(agreement.samePC)/\(agreement.frames), function \(agreement.sameName)/\(agreement.frames)")
        if sampleHz > 0 {
            let profile = try await StackSampler.run(pid: pid, hertz: sampleHz, duration: .seconds(1))
            print("sampling at \(sampleHz) Hz for 1 s: \(profile.summary)")
        }
    }

    /// eu-stack's `TID n:` blocks of `#i  0xPC name` lines.
    static func parseEuStack(_ text: String) -> [Int32: [(pc: UInt64, name: String?)]] {
        var result: [Int32: [(UInt64, String?)]] = [:]
        var current: Int32?
        for line in text.split(separator: "\n") {
            if line.hasPrefix("TID "), let tid = Int32(line.dropFirst(4).dropLast()) {
                current = tid
                result[tid] = []
            } else if line.hasPrefix("#"), let tid = current {
                let fields = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
                guard fields.count >= 2, let pc = UInt64(fields[1].dropFirst(2), radix: 16) else { continue }
                let name = fields.count == 3 ? String(fields[2]) : nil
                result[tid, default: []].append((pc, name == "??" ? nil : name))
            }
        }
        return result
    }

    /// Runs a tool to completion and returns its standard output.
    static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let data = try ToolOutput.capture(tool, arguments)
        return String(decoding: data, as: UTF8.self)
    }

    static func median(_ samples: [Duration]) -> Duration { samples.sorted()[samples.count / 2] }

    static func ratio(_ a: Duration, _ b: Duration) -> String {
        String(format: "%.1f", Double(a.components.attoseconds / 1_000_000_000 + a.components.seconds * 1_000_000_000)
               / Double(b.components.attoseconds / 1_000_000_000 + b.components.seconds * 1_000_000_000))
    }
}

import Foundation
import MitosisModel
import MitosisTrace

/// Samples the call stacks of a running process at a fixed rate: each sample freezes every
/// thread, walks the stacks, thaws, and only then symbolizes, so the target is stopped just for
/// the walk.
public enum StackSampler {
    /// The sampling rates accepted, per second: at least one sample every 100 s, at most 1000 a second.
    public static let hertzRange: ClosedRange<Double> = 0.01...1000
    /// The longest sampling run accepted (its stop times are kept, one per sample).
    public static let maxDuration: Duration = .seconds(3600)

    /// Takes `hertz × duration` samples of `pid` (`hertz` in `hertzRange`, `duration` positive and
    /// at most `maxDuration`; `maxFrames` is capped at `Tracer.maxFramesLimit`). Stops early,
    /// keeping what it has, if the process exits.
    public static func run(pid: Int32, hertz: Double, duration: Duration,
                           maxFrames: Int = Tracer.defaultMaxFrames) async throws -> StackProfile {
        guard hertzRange.contains(hertz), duration > .zero, duration <= maxDuration else {
            throw MitosisError.unsupported(feature: "stack sampling",
                                           detail: "rates from \(hertzRange.lowerBound) to \(hertzRange.upperBound) per second for up to \(maxDuration); asked \(hertz) per second for \(duration)")
        }
        let clock = ContinuousClock()
        let interval = Duration.seconds(1 / hertz)
        let count = max(1, Int((Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18) * hertz))
        let symbolizer = Symbolizer(pid: pid, maps: [])
        var lastMaps: [UInt8] = []
        var profile = StackProfile()
        let start = clock.now
        for index in 0..<count {
            try await clock.sleep(until: start + interval * index)
            let stopped = clock.now
            let raw: [RawStack], maps: [UInt8]
            do {
                (raw, maps) = try await withFrozenProcess(pid) { tracer in try await tracer.unwindWithMaps(maxFrames: maxFrames) }
            } catch let error as MitosisError where profile.samples > 0 {
                if error.goneProcess != nil { break }
                throw error
            }
            profile.stopTimes.append(clock.now - stopped)
            if maps != lastMaps {
                symbolizer.update(maps: maps)
                lastMaps = maps
            }
            profile.samples += 1
            for stack in raw {
                let frames = symbolizer.symbolize(stack).frames.reversed().map { $0.foldedName }
                profile.counts[([stack.name.foldedSafe] + frames).joined(separator: ";"), default: 0] += 1
            }
        }
        return profile
    }
}

/// Sampled stacks, counted: the input of flame graphs.
public struct StackProfile: Sendable {
    /// Samples taken (each counts every thread once).
    public var samples = 0
    /// `thread;outermost;…;innermost` → how many thread samples had exactly that stack.
    public var counts: [String: Int] = [:]
    /// How long the target was stopped for each sample.
    public var stopTimes: [Duration] = []

    /// One `stack count` line per distinct stack, sorted: Brendan Gregg's folded format.
    public func folded() -> String {
        counts.keys.sorted().map { "\($0) \(counts[$0]!)\n" }.joined()
    }

    /// Samples taken and the target's stop time per sample (median and maximum).
    public var summary: String {
        let sorted = stopTimes.sorted()
        guard let maximum = sorted.last else { return "no samples" }
        return "\(samples) samples, \(counts.values.reduce(0, +)) thread stacks; target stopped per sample: median \(sorted[sorted.count / 2]), max \(maximum)"
    }
}

extension StackFrame {
    /// The frame's name in a folded stack: the function, or `module+0xOFFSET`.
    package var foldedName: String {
        guard let function else { return label.foldedSafe }
        return function.foldedSafe
    }
}

extension String {
    /// Without the separators of the folded format (`;` between frames, newline between stacks).
    package var foldedSafe: String {
        String(map { $0 == ";" || $0 == "\n" ? ":" : $0 })
    }
}

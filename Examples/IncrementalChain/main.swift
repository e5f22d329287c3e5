// Keeps a chain of incremental checkpoints of a running process, using only Mitosis's public API:
//
//     mitosis-incremental-chain PID DIR [COUNT] [INTERVAL_MS]
//
// DIR/1 is a full checkpoint, DIR/2… each store only the pages written since the one before.
// The process keeps running throughout; dirty tracking leaves nothing in it afterwards.
import Foundation
import Mitosis

let arguments = CommandLine.arguments
guard arguments.count >= 3, let pid = Int32(arguments[1]) else {
    FileHandle.standardError.write(Data("usage: mitosis-incremental-chain PID DIR [COUNT] [INTERVAL_MS]\n".utf8))
    exit(2)
}
let directory = arguments[2]
let count = arguments.count > 3 ? Int(arguments[3]) ?? 3 : 3
let interval = arguments.count > 4 ? Int(arguments[4]) ?? 1000 : 1000

/// Takes the chain; stops tracking on every path.
func takeChain() async throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    // Track writes (the best strategy this kernel offers) for the scope; tracking stops on every
    // path, and the target keeps no trace of it.
    try await withCheckpointSession(pid: pid) { session in
        print("tracking process \(pid) with \(session.strategy.rawValue)")
        for number in 1...max(count, 1) {
            if number > 1 { try await Task.sleep(for: .milliseconds(interval)) }
            // Any CheckpointSink works here: a directory, or a stream to a peer.
            let sink = DirectorySink(directory: "\(directory)/\(number)")
            let result = try await session.checkpoint(to: sink, parent: number == 1 ? nil : .previous(path: "../\(number - 1)"))
            print(CheckpointSummary(result, path: sink.path).text)
        }
    }
}

do {
    try await takeChain()
} catch {
    FileHandle.standardError.write(Data("mitosis-incremental-chain: \(error)\n".utf8))
    exit(1)
}

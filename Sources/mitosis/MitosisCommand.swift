import ArgumentParser
import Foundation
import Mitosis

@main
struct MitosisCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mitosis",
        abstract: "Attach to a running Linux process, see everything it holds, and copy it.",
        subcommands: [
            FreezeCommand.self,
            CheckCommand.self,
            InspectCommand.self,
            StacksCommand.self,
            GraphCommand.self,
            WatchCommand.self,
            DemoCommand.self,
            ImagesCommand.self,
            DumpCommand.self,
            RestoreCommand.self,
            TrackCommand.self,
            ProtectCommand.self,
            StandbyCommand.self,
            PromoteCommand.self,
        ]
    )
}

/// Prints one clear line for a failure and exits nonzero; never a stack trace.
func fail(_ error: any Error) -> Never {
    let message = "\(error)"
    FileHandle.standardError.write(Data("mitosis: \(message)\n".utf8))
    exit(1)
}

/// Parses a pid argument into a validated pid, or exits with one line.
func targetPID(_ text: String, forTracing: Bool) -> Int32 {
    do {
        let pid = try TargetCheck.parsePID(text)
        try TargetCheck.validate(pid, forTracing: forTracing)
        return pid
    } catch {
        fail(error)
    }
}

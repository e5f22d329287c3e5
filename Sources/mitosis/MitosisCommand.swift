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
            ClusterCommand.self,
        ]
    )

    /// Parses and runs the command as ArgumentParser's own `main` does, with one difference: a
    /// negative number where a pid goes (`mitosis inspect -5`) is a pid that is not valid, told
    /// in the one line every other bad pid gets, not a usage error about an unknown option.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
            await Restorer.awaitLiftedLocks()
        } catch {
            await Restorer.awaitLiftedLocks()
            if let pid = negativePID(in: arguments) { fail(MitosisError.invalidPID(pid)) }
            exit(withError: error)
        }
    }

    /// A negative integer that stands where a value of its own goes, not after an option name.
    static func negativePID(in arguments: [String]) -> String? {
        arguments.indices.first { index in
            let argument = arguments[index]
            return argument.count > 1 && argument.hasPrefix("-") && Int(argument) != nil
                && (index == 0 || !arguments[index - 1].hasPrefix("-"))
        }.map { arguments[$0] }
    }
}

/// Prints one clear line for a failure and exits nonzero; never a stack trace. Every error of the
/// library is a `MitosisFailure` and says what happened in its `summary`.
func fail(_ error: any Error, hint: String? = nil) -> Never {
    let message = (error as? any MitosisFailure)?.summary ?? "\(error)"
    FileHandle.standardError.write(Data("mitosis: \(message)\n".utf8))
    if let hint { FileHandle.standardError.write(Data("mitosis: \(hint)\n".utf8)) }
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

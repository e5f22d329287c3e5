// mitosis-inspect-example PID: a client that only inspects. It imports the Mitosis umbrella and
// nothing else, so it links neither libunwind nor libelf (only MitosisStacks does).
import Foundation
import Mitosis

guard CommandLine.arguments.count == 2, let pid = Int32(CommandLine.arguments[1]), pid > 0 else {
    FileHandle.standardError.write(Data("usage: mitosis-inspect-example PID\n".utf8))
    exit(2)
}
do {
    let model = try Introspector.inspect(pid: pid, detailedMemory: false)
    print("process \(pid) (\(model.identity.comm)): \(model.threads.count) threads, \(model.maps.count) mappings, \(model.fds.count) descriptors")
} catch {
    FileHandle.standardError.write(Data("mitosis-inspect-example: \(error)\n".utf8))
    exit(1)
}

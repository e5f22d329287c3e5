import ArgumentParser
import Foundation
import Mitosis

/// Which dirty-tracking strategy a command uses (`auto`: the best the kernel offers).
enum TrackOption: String, ExpressibleByArgument, CaseIterable {
    case auto
    case softDirty = "soft-dirty"
    case uffdWP = "uffd-wp"
    case hash

    var strategy: TrackingStrategy? { TrackingStrategy(rawValue: rawValue) }
}

/// A consistent checkpoint of a running process, with a freeze of milliseconds.
struct DumpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump",
        abstract: "Checkpoint a process's memory, registers and descriptors into an image directory.",
        discussion: """
            Memory is copied while the process runs, with dirty tracking on; the process is then \
            frozen only to copy the pages written meanwhile, its registers and its descriptors. \
            It keeps running afterwards (a job-control-stopped process stays stopped) unless --kill \
            is given, which kills it once the image is committed: its established TCP connections \
            are then closed without a FIN or RST and stay locked (nftables) until `mitosis restore` \
            rebuilds them. With --parent, pages whose bytes \
            equal that image's are recorded as inherited instead of stored.
            """)

    @Argument(help: "The process id.") var pid: String
    @Option(help: "The image directory to create (must not exist; its parent is created, mode 0700, if missing).") var images: String
    @Option(help: "An earlier image of the same process to build an incremental checkpoint on (with --tree, an earlier tree image of the same tree).") var parent: String?
    @Option(help: "Dirty tracking: \(TrackOption.allCases.map(\.rawValue).joined(separator: ", ")).") var track: TrackOption = .auto
    @Flag(help: "Kill the process once the image is committed.") var kill = false
    @Flag(help: "Checkpoint the process and all its descendants into one tree image (restored as a tree).") var tree = false
    @Flag(help: "Copy the process even if it asked not to be dumped (prctl PR_SET_DUMPABLE 0, or changed credentials).")
    var force = false
    @Flag(help: "Do not record what a restore needs (no system calls injected for it); the image cannot be restored.")
    var noRestoreState = false
    @Flag(help: "Compress the page data (zstd, one frame per run of pages): a smaller image for more CPU time; off by default.")
    var compress = false
    @Flag(help: "Fsync nothing, as CRIU does: NOT durable, a crash of the machine may lose or damage the image (readers refuse a damaged image by its checksums). Not with --tree.")
    var noSync = false
    @Flag(help: "Print the result as JSON.") var json = false
    @Flag(help: "Do not lock the process's TCP connections while they are captured (and, with --kill, until the restore): a peer's packet may then be answered with a reset.")
    var noNetworkLock = false

    func validate() throws {
        if noSync && tree { throw ValidationError("--no-sync is for one process: a tree image is always synced") }
    }

    func run() async throws {
        let pid = targetPID(pid, forTracing: true)
        do {
            let base: CheckpointParent? = tree ? nil : try parent.map { path in
                .image(try CheckpointImage.open(path), path: relativePath(from: images, to: path))
            }
            let container = try DirectorySink.container(of: images)
            var options = CheckpointOptions(strategy: track.strategy)
            options.recordRestoreState = !noRestoreState
            options.networkLock = !noNetworkLock
            // Killed afterwards: the connections stay locked, closed silently by the kill.
            options.moveConnections = kill
            options.copyNonDumpable = force
            if tree {
                let base = try parent.map { path in (image: try TreeImage.open(path), path: relativePath(from: images, to: path)) }
                let result = try await TreeCheckpoint.dump(root: pid, to: images, options: options, kill: kill, parent: base,
                                                              compression: compress ? .zstd : nil)
                if json {
                    print(try JSONOutput.string(result.members.map { CheckpointSummary($0, path: images + "/\($0.manifest.pid)") }))
                } else {
                    print("tree of process \(pid): \(result.members.count) processes in \(images)\(kill ? ", killed" : "")")
                    for member in result.members { print(CheckpointSummary(member, path: images + "/\(member.manifest.pid)").text) }
                }
                return
            }
            // One checkpoint: tracking ends at its thaw, while the image is written.
            options.lastCheckpoint = true
            let progress = ProgressLine("mitosis dump")
            options.progress = { progress.update($0) }
            let session = try await CheckpointSession(pid: pid, options: options)
            let result: CheckpointResult
            do {
                defer { progress.end() }
                // Only once the target may be traced, so that a refused dump leaves nothing behind.
                try DirectorySink.createDirectories(container)
                result = try await session.checkpoint(to: DirectorySink(directory: images, compression: compress ? .zstd : nil, synced: !noSync),
                                                    parent: base)
            } catch {
                await session.stop()
                throw error
            }
            if kill { try await session.killTarget() } else { await session.stop() }
            let summary = CheckpointSummary(result, path: images)
            print(json ? try JSONOutput.string(summary) : summary.text)
        } catch {
            fail(error)
        }
    }
}

/// `target` as seen from inside the directory `image` (both may be relative to the current directory).
func relativePath(from image: String, to target: String) -> String {
    let cwd = FileManager.default.currentDirectoryPath
    func components(_ path: String) -> [String] {
        URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: cwd, isDirectory: true)).standardizedFileURL.pathComponents
    }
    let from = components(image), to = components(target)
    var common = 0
    while common < from.count, common < to.count, from[common] == to[common] { common += 1 }
    let path = Array(repeating: "..", count: from.count - common) + to[common...]
    return path.isEmpty ? "." : path.joined(separator: "/")
}

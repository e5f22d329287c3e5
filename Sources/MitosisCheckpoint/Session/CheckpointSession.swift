import Foundation
import Logging
import SystemPackage
import MitosisImage
import MitosisInspect
import MitosisKernel
import MitosisModel
import MitosisTrace

/// How a `CheckpointSession` works.
public struct CheckpointOptions: Sendable {
    /// The dirty-tracking strategy; nil picks the best the kernel offers (`TrackingStrategy.automatic`).
    public var strategy: TrackingStrategy?
    /// How page maps are read; nil uses `PAGEMAP_SCAN` where the kernel has it.
    public var pageMapMethod: PageMapReader.Method?
    /// At most this many copy rounds while the target runs, before the freeze; fewer when the
    /// set left to copy stops shrinking, or when a round's copy took less time than its look at
    /// the page tables (the freeze then copies what is left in about that time).
    public var maxPrecopyRounds = 8
    /// Pre-copy ends once no more than this many pages are left to copy.
    public var freezeThresholdPages = 64
    /// Record what a restore needs (`RestoreRecord`: signal dispositions, mm bounds…), at the
    /// cost of a few injected system calls during the freeze. Without it the image cannot be restored.
    public var recordRestoreState = true
    /// The target is killed after this checkpoint (`killTarget`, `dump --kill`): its established
    /// TCP connections stay locked until the kill, which closes them in repair mode (silently),
    /// and their network lock is held after Mitosis exits, until a restore lifts it.
    public var moveConnections = false
    /// Lock the established TCP connections while they are captured (and, when moved, until
    /// the restore): without it a peer's packet meeting no socket is answered with a reset.
    public var networkLock = true
    /// Runs while the target is frozen, after its memory is copied: what else must be read at
    /// the same instant (replication reads the sizes of the data files there). Keep it short.
    public var whileFrozen: (@Sendable () -> Void)?
    /// Runs after the pre-copy, right before the freeze, on the session's thread (it may
    /// block): replication waits there for the previous epoch's acknowledgement, so that the
    /// next epoch's pre-copy overlaps the standby's commit while no freeze comes before it.
    /// Returns whether it waited (the pre-copy then runs again: pages were written meanwhile);
    /// throwing fails the checkpoint, the target left as it was.
    public var beforeFreeze: (@Sendable () throws -> Bool)?
    /// Copy a process that asked not to be dumped (`prctl(PR_SET_DUMPABLE, 0)`, or changed
    /// credentials): its memory may hold secrets it meant to keep out of dumps. Without it the
    /// session refuses such a process with `MitosisError.notDumpable`.
    public var copyNonDumpable = false
    /// Told how far each checkpoint has come (on the session's thread; keep it quick): for a
    /// progress display.
    public var progress: (@Sendable (CheckpointProgress) -> Void)?
    /// The session takes no checkpoint after the next one (`mitosis dump`): tracking ends at its
    /// thaw, on a thread of its own while the image is written, rather than at `stop`, after
    /// the commit. Lifting uffd-wp from a 1 GiB mapping (`UFFDIO_UNREGISTER`) takes ~100 ms,
    /// which then overlaps the image's fsyncs. Later checkpoints are refused.
    public var lastCheckpoint = false

    public init(strategy: TrackingStrategy? = nil, pageMapMethod: PageMapReader.Method? = nil) {
        self.strategy = strategy
        self.pageMapMethod = pageMapMethod
    }
}

/// How far a checkpoint has come: the bytes of the current phase done and to do.
public struct CheckpointProgress: Sendable {
    public enum Phase: String, Sendable {
        /// Copying the target's pages into Mitosis (one pre-copy round, or the frozen copy).
        case copying
        /// Handing the copied pages to the sink.
        case writing
    }
    public var phase: Phase
    public var done: UInt64
    public var total: UInt64
}

/// What an incremental checkpoint builds on.
public enum CheckpointParent: Sendable {
    /// The previous checkpoint of this session, whose image is at `path` relative to the new
    /// image's directory (e.g. `../1`). Dirty tracking since that checkpoint decides what is stored.
    case previous(path: String)
    /// An image taken earlier (by another run, with no tracking since): pages whose bytes equal
    /// what that image's chain holds are inherited, the others stored.
    case image(CheckpointImage, path: String)
    /// An earlier checkpoint of this session (`id`, `sequence`), at `path`: the pages written
    /// since it are those tracked since the previous checkpoint plus `changedSince`, the pages
    /// the checkpoints after it stored. Replication resynchronises a standby that lost its
    /// newest epochs this way, without a full checkpoint.
    case earlier(id: String, sequence: Int, path: String, changedSince: PageSet)
}

/// A checkpoint taken, with what it cost.
public struct CheckpointResult: Sendable {
    /// The manifest as the sink stored it.
    public var manifest: CheckpointManifest
    /// Copy rounds run while the target ran, before the freeze.
    public var precopyRounds: Int
    /// Pages copied in all, re-copies of pages written meanwhile included.
    public var pagesCopied: Int
    /// Pages copied while the target was frozen.
    public var pagesCopiedFrozen: Int
    /// Where the checkpoint's time went, in milliseconds: `precopy` (rounds while the target
    /// runs), `before freeze` (`CheckpointOptions.beforeFreeze`, when it waited), `lock`
    /// (preparing the network lock), `seize` (freezing), `frozen map`, `frozen copy`, `frozen
    /// threads+fds`, `frozen restore state` (of which `frozen injected calls` asked the process
    /// itself, by ptrace), `frozen connections`, `thaw`, `unlock` (lifting the
    /// network lock), `inspect` (what is read after the thaw), `write` (pages to the sink). The
    /// sink's `finish` is not included.
    public var phases: [String: Double] = [:]
    /// The TCP connections were captured under the network lock, which drops their packets while
    /// it holds: always when the process is moved, else only when a connection changed during
    /// the capture without it (`CheckpointOptions.networkLock`).
    public var connectionsLocked = false
    /// When the target was stopped: the checkpoint holds its state of this instant (a
    /// standby's lag is counted from it).
    public var frozenAt: ContinuousClock.Instant?
    public var stats: CheckpointStats { manifest.stats }
}

/// Tracks a process's writes and takes consistent checkpoints of its memory with a short freeze.
///
/// A session starts dirty tracking (`start`), takes any number of full or incremental
/// checkpoints into sinks of the caller's choosing (`checkpoint`), and stops tracking (`stop`),
/// leaving nothing in the target. Each checkpoint copies memory while the target runs, round after
/// round while the set of pages written meanwhile shrinks, then freezes the target only to copy
/// the pages written since the last round; the result is the memory of that instant.
public actor CheckpointSession {
    public nonisolated let pid: Int32
    public nonisolated let strategy: TrackingStrategy
    public nonisolated let options: CheckpointOptions
    private let tracker: DirtyTracker
    /// Finds the writes to shared memory when `tracker` follows page tables (every strategy but
    /// `hash`): content hashes of the shared-memory pages only. Nil with `hash`, which covers them.
    private let sharedHashes: HashTracker?
    /// The shared-memory data pages of the page map last collected: those whose copies are hashed.
    private var sharedPages = PageSet()
    private let pageMaps: PageMapReader
    private let memory: MemoryReader
    /// Pins the target's identity: reads, signals and checkpoints go to it, never to a process
    /// that reused its pid.
    private let target: TargetProcess
    /// Pages whose bytes in the previous checkpoint of this session are still current.
    private var previousValid = PageSet()
    private var previous: (id: String, sequence: Int)?
    private var stopped = false
    /// Tracking ended after a `lastCheckpoint`: no checkpoint may follow.
    private var trackingEnded = false
    /// Connections of the last checkpoint, still locked, for `killTarget` to close silently.
    private var movedConnections: ConnectionCapture?
    /// The network lock reused by every checkpoint of the session, with the network namespace
    /// (`net:[…]`) it locks in.
    private var keptLock: (lock: NetworkLock, namespace: String?)?
    /// The identities of the files behind `clean_file` pages, by offset, length and path: a file
    /// is hashed again only when its status changes.
    private var fileIdentities: [String: MappedFileIdentity] = [:]
    /// The mapping flags of the last smaps read, with the mappings (from `maps`) they were
    /// read for and when (`mappingFlags(for:)`).
    private var smapsFlags: (maps: [MemoryMapping], flags: [RestoreRecord.MappingFlags], read: ContinuousClock.Instant)?
    private let logger = Logger(label: "mitosis.checkpoint")
    /// The session's own thread: copying GiBs of memory and writing images must not tie up a
    /// thread of Swift's cooperative pool (Docs/architecture.md, "Concurrency").
    private nonisolated let executor = DedicatedThreadExecutor(name: "mitosis-checkpoint")
    public nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    /// Starts tracking the writes of `pid`.
    public init(pid: Int32, options: CheckpointOptions = CheckpointOptions()) async throws {
        target = try TargetProcess(pid: pid, forTracing: true)
        if !options.copyNonDumpable { try await TargetCheck.requireDumpable(target) }
        self.pid = pid
        self.options = options
        var chosen = options.strategy
        if chosen == nil { chosen = TrackingStrategy.automatic }
        let strategy = chosen!
        self.strategy = strategy
        pageMaps = try PageMapReader(pid: pid, method: options.pageMapMethod)
        memory = try MemoryReader(pid: pid)
        tracker = try strategy.makeTracker(pid: pid)
        sharedHashes = strategy == .hash ? nil : try HashTracker(pid: pid)
        // The freeze reads the descriptors, with the BPF iterator where it is used.
        DescriptorIterator.prepare()
        do {
            let map = try pageMaps.read(ProcessReader.mappings(target, detailed: false))
            try await tracker.start(map)
        } catch {
            tracker.stop()
            sharedHashes?.stop()
            pageMaps.close()
            memory.close()
            throw Self.translate(error, pid: pid)
        }
    }

    /// A session released without `stop` stops then.
    deinit {
        executor.shutdown()
        guard !stopped else { return }
        tracker.stop()
        sharedHashes?.stop()
        pageMaps.close()
        memory.close()
    }

    /// Stops tracking and releases everything the session holds in Mitosis and in the target.
    public func stop() {
        guard !stopped else { return }
        stopped = true
        // Not killed after all: the target gets its connections back.
        movedConnections?.resume()
        movedConnections = nil
        keptLock?.lock.release()
        keptLock = nil
        tracker.stop()
        sharedHashes?.stop()
        pageMaps.close()
        memory.close()
    }

    /// Kills the target (SIGKILL), for a checkpoint that moves a process rather than copies it:
    /// call it only once the checkpoint is committed. Stops the session.
    public func killTarget() throws {
        guard !stopped else { throw CheckpointError.sessionStopped }
        defer { stop() }
        // Repair mode on, so that the kill closes the sockets without a FIN or RST; then the
        // lock is copied into the table that outlives Mitosis. Should Mitosis die in between, the
        // process is dead and its clients see a reset, but no lock is left behind.
        movedConnections?.silence()
        let killed = Result { () throws(Errno) in try Kernel.pidfdKill(target.process.pidfd) }
        switch killed {
        case .success, .failure(.noSuchProcess):
            let held = Result { try movedConnections?.hold() }
            movedConnections?.close()
            movedConnections = nil
            if case .failure(let error) = held { throw CheckpointError.connectionsNotHeld("\(error)") }
        case .failure:
            break  // still alive: `stop` gives its connections back
        }
        if case .failure(.noSuchProcess) = killed { throw MitosisError.targetExited(pid) }
        try killed.get()
    }

    /// Takes a checkpoint into `sink`: full when `parent` is nil, else incremental over it.
    /// On failure the sink is aborted (its image marked incomplete) and the target is left as it was.
    public func checkpoint(to sink: CheckpointSink, parent: CheckpointParent? = nil) async throws -> CheckpointResult {
        try await checkpoint(to: sink, parent: parent, freeze: nil)
    }

    /// As `checkpoint(to:parent:)`; with `freeze`, the target is frozen together with the other
    /// members of its tree (`TreeFreeze`) instead of on its own, so that every member's image is
    /// of one instant.
    package func checkpoint(to sink: CheckpointSink, parent: CheckpointParent?, freeze: TreeFreeze?) async throws -> CheckpointResult {
        guard !stopped, !trackingEnded else { throw CheckpointError.sessionStopped }
        try target.requireAlive()
        let clock = ContinuousClock()
        let started = clock.now
        var header: CheckpointHeader
        var parentStored = PageSet()
        var parentImage: CheckpointImage?
        switch parent {
        case nil:
            header = CheckpointHeader(kind: .full, sequence: 0, pid: pid)
        case .previous(let path):
            guard let previous else { throw CheckpointError.noPreviousCheckpoint }
            header = CheckpointHeader(kind: .incremental, parent: ParentLink(path: path, id: previous.id),
                                      sequence: previous.sequence + 1, pid: pid)
        case .earlier(let id, let sequence, let path, _):
            // With no checkpoint taken yet nothing is inheritable: every page is stored.
            header = CheckpointHeader(kind: .incremental, parent: ParentLink(path: path, id: id), sequence: sequence + 1, pid: pid)
        case .image(let image, let path):
            guard image.manifest.pid == pid else {
                throw CheckpointError.parentOfOtherProcess(parent: image.manifest.pid, target: pid)
            }
            header = CheckpointHeader(kind: .incremental, parent: ParentLink(path: path, id: image.manifest.id),
                                      sequence: image.manifest.sequence + 1, pid: pid)
            parentImage = image
            parentStored = Self.heldPages(of: image.manifest)
        }
        try sink.begin(header)
        movedConnections?.resume()
        movedConnections = nil
        var moved: ConnectionCapture?
        /// `options.lastCheckpoint`'s tracker stop, awaited before this returns or throws.
        var untracking: Task<Void, Never>?
        let run = Run()
        // A full checkpoint into a sink that takes early pages streams its first round there.
        let early = parent == nil ? (sink as? EarlyPageSink).flatMap { $0.takesEarlyPages ? $0 : nil } : nil
        do {
            switch parent {
            case .previous: run.inheritable = previousValid
            // Current in the newest checkpoint and stored by none after `id`: inherited from it.
            case .earlier(_, _, _, let changed): run.inheritable = previousValid.subtracting(changed)
            default: break
            }
            // Copy while the target runs, as long as the set left to copy shrinks.
            run.mark("start", clock)  // starts the clock of `phases`: nothing before is timed
            var rounds = options.maxPrecopyRounds
            var waitBefore = options.beforeFreeze
            while true {
                var left = Int.max
                let first = run.rounds
                var lastMap: ProcessPageMap?
                while run.rounds - first < rounds {
                    let looking = clock.now
                    let (map, dirty) = try await observe(run, reusing: lastMap)
                    lastMap = map
                    run.invalidate(dirty)
                    var toCopy = map.data.subtracting(run.inheritable).subtracting(run.staged).subtracting(run.early)
                    if let parentImage, run.rounds == 0 {
                        toCopy = try adoptUnchanged(toCopy, from: parentImage, held: parentStored, run)
                    }
                    let count = toCopy.pageCount()
                    let copying = clock.now
                    if let early, run.rounds == 0 {
                        run.early = try stream(toCopy, run, into: early)
                        run.earlyAll = run.early
                    } else {
                        run.staged = run.staged.union(try copy(toCopy, run, tolerant: true))
                    }
                    let copied = clock.now
                    run.rounds += 1
                    if count <= options.freezeThresholdPages || count >= left { break }
                    // Another round pays only when copying what is written meanwhile would make
                    // the freeze longer than the round's own look at the page tables (`maps`, the
                    // page map, the tracker's scan: milliseconds for redis, whatever it wrote):
                    // a round whose copy took less than its look leaves the freeze a copy of
                    // about that size. An epoch of 50 ms of writes stops after one round; a
                    // process writing hundreds of MBs keeps going while the set shrinks.
                    if copied - copying < copying - looking { break }
                    left = count
                }
                run.mark("precopy", clock)
                // Whatever the caller waits for before the freeze; pages written meanwhile are
                // copied in a few more rounds.
                guard let beforeFreeze = waitBefore else { break }
                waitBefore = nil
                guard try beforeFreeze() else { break }
                run.mark("before freeze", clock)
                rounds = max(1, options.maxPrecopyRounds / 2)
            }
            // `nft` for the network lock started now rather than during the freeze, when the
            // process holds sockets (only established TCP connections will be locked).
            let preparedLock = options.recordRestoreState && options.networkLock && holdsSockets() ? networkLock() : nil
            run.mark("lock", clock)
            // Freeze, copy what was written since, thaw.
            var frozenAt: ContinuousClock.Instant?
            let (final, threads, descriptors, captured) = try await TreeFreeze.frozen(pid, by: freeze) { tracer in
                frozenAt = clock.now
                run.mark("seize", clock)
                defer { run.frozen += clock.now - frozenAt! }
                // The pid is seized by number: make sure it still names the process this session
                // tracks (not one that took its pid after it exited).
                try target.requireAlive()
                // The page map is read afresh: one carried over from the last copy round misses
                // pages given back since (an allocator's `MADV_DONTNEED` of whole page tables is
                // not reported written by uffd-wp on 6.18; PurgedMemoryTests), and they would
                // keep their bytes of before in the image instead of reading as zeros.
                let frozenMaps = try ProcessReader.mappings(target, detailed: false)
                let map = try readPageMap(run, frozenMaps)
                run.invalidate(try collectWrites(map))
                run.mark("frozen map", clock)
                let toCopy = map.data.subtracting(run.inheritable).subtracting(run.staged).subtracting(run.early)
                let copied = try copy(toCopy, run, tolerant: false)
                run.copiedFrozen = copied.pageCount()
                run.staged = run.staged.union(copied)
                run.mark("frozen copy", clock)
                options.whileFrozen?()
                let threads = try await tracer.threadStates()
                let descriptors = try ProcessReader.descriptors(target)
                run.mark("frozen threads+fds", clock)
                // Without a restore record the image still serves as a memory checkpoint; a
                // restore refuses it.
                var restore: RestoreRecord?
                var injected = Duration.zero
                if options.recordRestoreState {
                    do {
                        let captured = try await RestoreCapture.capture(tracer, target: target, maps: frozenMaps, descriptors: descriptors)
                        restore = captured.record
                        injected = captured.injected
                    } catch {
                        logger.warning("checkpoint of \(pid) is not restorable: \(error)")
                    }
                }
                run.mark("frozen restore state", clock)
                run.phases["frozen injected calls"] = injected.inMilliseconds
                // The connections last, so that the network lock, when one is taken (which drops
                // the clients' packets: TCP resends them only after its retransmission timeout),
                // holds for the least time. A connection's state may have changed since the
                // sockets' states were read: a client that hangs up during the freeze, which the
                // freeze itself causes (a client with a timeout gives up). So every TCP socket not
                // captured is read again after the capture (`captureConnections`): the image then
                // agrees with what was captured.
                if restore != nil {
                    do {
                        let connections = try captureConnections(descriptors, prepared: preparedLock, record: &restore!, run)
                        restore?.connections = connections.connections
                        if options.moveConnections && !connections.connections.isEmpty {
                            restore?.networkLockTable = connections.reserveHold(pid: pid)
                        }
                        // Out of repair mode already; the lock is lifted after the thaw (ending
                        // `nft` takes milliseconds) unless the process is to be killed.
                        moved = connections
                    } catch {
                        logger.warning("checkpoint of \(pid) is not restorable: its TCP connections could not be captured: \(error)")
                        restore = nil
                    }
                }
                run.mark("frozen connections", clock)
                return (map, threads, descriptors, restore)
            }
            run.mark("thaw", clock)
            if options.lastCheckpoint {
                trackingEnded = true
                let tracker = self.tracker
                untracking = Task.detached { try? await Blocking.run("mitosis-untrack") { tracker.stop() } }
            }
            if !options.moveConnections {
                moved?.resume()
                moved = nil
            }
            run.mark("unlock", clock)
            // Read after the thaw, so that it costs no freeze time (smaps walks every page table):
            // identity, limits and mapping flags change rarely. Mappings, descriptors and threads
            // above are the frozen ones. The model's mappings come from `maps` (no smaps sizes:
            // the flags a restore needs are in the record, and every epoch's manifest is encoded
            // and decoded on both sides of a replication).
            var process: ProcessModel?
            var restore = captured
            if restore != nil {
                do {
                    let model = try Introspector.inspect(target, detailedMemory: false)
                    process = model
                    restore?.mappingFlags = try mappingFlags(for: model.maps)
                } catch {
                    logger.warning("checkpoint of \(pid) is not restorable: \(error)")
                    restore = nil
                }
            }

            run.mark("inspect", clock)
            // Store what the checkpoint holds, describe the rest.
            let stored = run.staged.union(run.early).intersection(final.data)
            let inherited = run.inheritable.intersection(final.data).subtracting(stored)
            var written: UInt64 = 0
            let toWrite = stored.byteCount
            // The streamed pages first, in the order they were streamed (those still current
            // kept where they are), then the others.
            let streamedFirst = stored.intersection(run.earlyAll)
            for range in streamedFirst.ranges + stored.subtracting(run.earlyAll).ranges {
                var cursor = range.start
                let kept = run.early.clamped(start: range.start, end: range.end).ranges
                for next in kept + [PageSet.Range(start: range.end, end: range.end)] {
                    if next.start > cursor {
                        for staged in try run.staging.pieces(of: PageSet.Range(start: cursor, end: next.start)) {
                            try sink.writePages(at: staged.address, UnsafeRawBufferPointer(staged.buffer))
                            written += UInt64(staged.buffer.count)
                            options.progress?(CheckpointProgress(phase: .writing, done: written, total: toWrite))
                        }
                    }
                    if next.end > next.start, let early {
                        try early.keepEarly(at: next.start, length: Int(next.end - next.start))
                        written += next.end - next.start
                        options.progress?(CheckpointProgress(phase: .writing, done: written, total: toWrite))
                    }
                    cursor = next.end
                }
            }
            var stats = CheckpointStats()
            stats.frozenNanoseconds = Self.nanoseconds(run.frozen)
            stats.pagesScanned = run.pagesScanned
            stats.pagesWritten = stored.pageCount()
            stats.bytesWritten = stored.byteCount
            stats.durationNanoseconds = Self.nanoseconds(clock.now - started)
            var manifest = CheckpointManifest(header: header, tracking: strategy.rawValue,
                                              mappings: identifyFiles(Self.describe(final, stored: stored, inherited: inherited), final, pageSize: header.pageSize),
                                              stats: stats)
            manifest.threads = threads
            manifest.descriptors = descriptors
            manifest.process = process
            manifest.restore = restore
            run.mark("write", clock)
            let committed = try sink.finish(manifest)
            await untracking?.value
            movedConnections = moved
            previousValid = stored.union(inherited)
            previous = (committed.id, committed.sequence)
            return CheckpointResult(manifest: committed, precopyRounds: run.rounds, pagesCopied: run.copied,
                                    pagesCopiedFrozen: run.copiedFrozen, phases: run.phases, connectionsLocked: run.connectionsLocked,
                                    frozenAt: frozenAt)
        } catch {
            await untracking?.value
            moved?.resume()
            // The pages written since the previous checkpoint were collected (and the tracker
            // re-armed) by this failed run: the next incremental must not inherit them.
            previousValid = previousValid.subtracting(run.dirtied)
            let failure = Self.translate(error, pid: pid)
            sink.abort(reason: "\(failure)")
            throw failure
        }
    }

    /// The `VmFlags` of every mapping in `maps` (read from `maps`, after the thaw), for the
    /// restore record. They are only in smaps, whose read walks every page table (the largest
    /// part of an epoch's work after the thaw, for redis): it is read again only when the
    /// mappings changed since the last read, or a second after it — flags changed by an
    /// `madvise` over a whole mapping leave `maps` as it was, so the reuse is bounded in time.
    private func mappingFlags(for maps: [MemoryMapping]) throws -> [RestoreRecord.MappingFlags] {
        let now = ContinuousClock.now
        if let cached = smapsFlags, cached.maps == maps, now - cached.read < .seconds(1) { return cached.flags }
        let flags = try ProcessReader.mappings(target, detailed: true).map { RestoreRecord.MappingFlags(start: $0.start, vmFlags: $0.vmFlags ?? []) }
        smapsFlags = (maps, flags, now)
        return flags
    }

    /// The TCP connections of the frozen target, with `record`'s sockets read again to agree
    /// with them. A process that runs on is captured without the network lock, which would drop
    /// its peers' packets (a client waiting for an answer then waits for TCP's retransmission
    /// timeout, at every checkpoint); the capture is checked (`ConnectionCapture.unchanged(sockets:)`)
    /// and, should a segment have come in meanwhile, taken again under the lock (`prepared`, the
    /// session's). A process being moved (`moveConnections`) is captured under the lock, which
    /// stays until its kill.
    private func captureConnections(_ descriptors: [OpenDescriptor], prepared: NetworkLock?, record: inout RestoreRecord,
                                    _ run: Run) throws -> ConnectionCapture {
        if options.networkLock && !options.moveConnections {
            let unlocked = try ConnectionCapture(target: target, descriptors: descriptors, lockNetwork: false)
            do {
                try SocketCapture.reread(uncaptured: unlocked.connections, in: &record, pid: pid, descriptors: descriptors)
            } catch {
                unlocked.resume()
                throw error
            }
            if unlocked.unchanged(sockets: record.sockets ?? []) { return unlocked }
            unlocked.resume()
            logger.debug("checkpoint of \(pid): a TCP connection changed while it was captured; captured again under the network lock")
        }
        let connections = try ConnectionCapture(target: target, descriptors: descriptors, lockNetwork: options.networkLock,
                                                prepared: prepared, keepsLock: !options.moveConnections)
        run.connectionsLocked = options.networkLock && !connections.connections.isEmpty
        do {
            // Every TCP socket read again under the lock, when an unlocked capture came first:
            // a socket it left out may be captured now.
            let captured = options.moveConnections || !options.networkLock ? connections.connections : []
            try SocketCapture.reread(uncaptured: captured, in: &record, pid: pid, descriptors: descriptors)
        } catch {
            connections.resume()
            throw error
        }
        return connections
    }

    /// The network lock's `nft`, started once per session and namespace rather than at every
    /// checkpoint (starting it takes milliseconds, through `nsenter`); a checkpoint that moves the
    /// process gets a lock of its own, which it keeps after the session (`hold`).
    private func networkLock() -> NetworkLock? {
        let path = "/proc/\(Kernel.procEntry(pid))/ns/net"
        guard !options.moveConnections else { return try? NetworkLock(namespacePath: path) }
        let namespace = try? target.readLink("ns/net")
        if let kept = keptLock, kept.lock.isUsable, kept.namespace == namespace { return kept.lock }
        keptLock?.lock.release()
        keptLock = (try? NetworkLock(namespacePath: path)).map { ($0, namespace) }
        return keptLock?.lock
    }

    /// Whether any descriptor of the target is a socket (`socket:[N]`).
    private func holdsSockets() -> Bool {
        guard let fds = try? target.list("fd") else { return false }
        return fds.contains { (try? target.readLink("fd/\($0)"))?.hasPrefix("socket:") == true }
    }

    /// The state of one checkpoint in progress.
    private final class Run {
        package let staging = StagingArea()
        /// Data pages whose bytes in the parent are current.
        package var inheritable = PageSet()
        /// Pages copied into `staging` and not written since.
        package var staged = PageSet()
        /// Pages streamed to the sink in the first round (`earlyAll`), and those of them not
        /// written since (`early`).
        package var early = PageSet()
        package var earlyAll = PageSet()
        package var rounds = 0
        package var copied = 0
        package var copiedFrozen = 0
        package var pagesScanned = 0
        package var frozen = Duration.zero
        /// Every page the tracker reported written during this run: should the checkpoint fail,
        /// they are no longer current in the previous one (the tracker will not report them again).
        package var dirtied = PageSet()
        /// The TCP connections were captured under the network lock (`CheckpointResult.connectionsLocked`).
        package var connectionsLocked = false
        /// Milliseconds per phase (`CheckpointResult.phases`), and when the last one ended.
        package var phases: [String: Double] = [:]
        private var lastMark: ContinuousClock.Instant?

        package func mark(_ phase: String, _ clock: ContinuousClock) {
            let now = clock.now
            if let lastMark { phases[phase, default: 0] += (now - lastMark).inMilliseconds }
            lastMark = now
        }

        package func invalidate(_ dirty: PageSet) {
            inheritable = inheritable.subtracting(dirty)
            staged = staged.subtracting(dirty)
            early = early.subtracting(dirty)
            dirtied = dirtied.union(dirty)
        }
    }

    /// The page map of `maps`, read from `/proc/PID/maps` now unless given; the data pages of
    /// the private mappings unchanged since `earlier` carried over from it (`PageMapReader.read(_:reusing:)`).
    private func readPageMap(_ run: Run, _ maps: [MemoryMapping]? = nil, reusing earlier: ProcessPageMap? = nil) throws -> ProcessPageMap {
        let map = try pageMaps.read(maps ?? ProcessReader.mappings(target, detailed: false), reusing: earlier)
        run.pagesScanned += map.pagesScanned
        return map
    }

    /// The pages written since the last look. In shared memory those are the pages whose content
    /// changed: other processes (and `write(2)` to a memfd) write it out of sight of this one's
    /// page tables, so only comparing bytes tells.
    private func collectWrites(_ map: ProcessPageMap) throws -> PageSet {
        let dirty = try tracker.collect(map)
        guard let sharedHashes else { return dirty }
        sharedPages = map.sharedData
        return dirty.subtracting(map.sharedMemory).union(try sharedHashes.changed(in: sharedPages))
    }

    /// The page map and the pages written since the last look, with the target frozen for the
    /// moment it takes when the tracker needs it.
    ///
    /// `earlier`, the previous copy round's map: with uffd-wp, a later round takes the data pages
    /// of the private mappings unchanged since from it rather than walking every page table again
    /// (the largest part of a round for redis). What it misses — pages first written since that
    /// scan — the freeze copies: its map is always read afresh. Written pages it holds are
    /// found by the tracker, whose look is fresh in every round.
    private func observe(_ run: Run, reusing earlier: ProcessPageMap? = nil) async throws -> (ProcessPageMap, PageSet) {
        guard tracker.collectRequiresFreeze else {
            let map = try readPageMap(run, reusing: strategy == .userfaultfdWriteProtect ? earlier : nil)
            return (map, try collectWrites(map))
        }
        let clock = ContinuousClock()
        return try await withFrozenProcess(pid) { _ in
            let frozenAt = clock.now
            defer { run.frozen += clock.now - frozenAt }
            let map = try readPageMap(run)
            return (map, try collectWrites(map))
        }
    }

    /// Copies `pages` into the staging area and returns what was copied. `tolerant` (the target
    /// runs) skips pieces unmapped meanwhile: a later round or the freeze takes them.
    private func copy(_ pages: PageSet, _ run: Run, tolerant: Bool) throws -> PageSet {
        var pieces: [(address: UInt64, buffer: UnsafeMutableRawBufferPointer)] = []
        for range in pages.ranges { pieces += try run.staging.pieces(of: range) }
        var failures: [Int: MitosisError] = [:]
        // In batches of up to 128 MiB, to tell the progress between them.
        let batchSize = 64
        var done: UInt64 = 0
        for start in stride(from: 0, to: pieces.count, by: batchSize) {
            let batch = Array(pieces[start..<min(start + batchSize, pieces.count)])
            do {
                for (index, failure) in try memory.read(batch) { failures[start + index] = failure }
            } catch {
                throw MitosisError.targetExited(pid)
            }
            done += batch.reduce(0) { $0 + UInt64($1.buffer.count) }
            options.progress?(CheckpointProgress(phase: .copying, done: done, total: pages.byteCount))
        }
        if !tolerant, let failure = failures.values.first { throw failure }
        var copied = PageSet()
        for (index, piece) in pieces.enumerated() where failures[index] == nil {
            recordCopied(at: piece.address, UnsafeRawBufferPointer(piece.buffer))
            copied.insert(start: piece.address, end: piece.address + UInt64(piece.buffer.count))
        }
        run.copied += copied.pageCount()
        return copied
    }

    /// Tells the trackers that compare contents what a copy of `bytes` at `address` holds.
    private func recordCopied(at address: UInt64, _ bytes: UnsafeRawBufferPointer) {
        tracker.recordCopied(at: address, bytes)
        guard let sharedHashes, !sharedPages.isEmpty else { return }
        for range in sharedPages.clamped(start: address, end: address + UInt64(bytes.count)).ranges {
            let offset = Int(range.start - address)
            sharedHashes.recordCopied(at: range.start, UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + Int(range.end - range.start)]))
        }
    }

    /// The first round of a full checkpoint, streamed to `sink` rather than staged: `pages` are
    /// copied into a few reused buffers, each handed to the sink while the next are filled. The
    /// staging area would need fresh memory for every page, which the kernel zeroes first — over
    /// half of a 1 GiB dump's CPU time. Pages written after their copy are copied again into
    /// the staging area by the later rounds or the freeze, and the sink replaces them (see
    /// `EarlyPageSink`). Returns what was streamed; pieces unmapped meanwhile are skipped.
    private func stream(_ pages: PageSet, _ run: Run, into sink: EarlyPageSink) throws -> PageSet {
        let chunk = UInt64(StagingArea.chunkSize)
        let slotSize = Self.streamSlotSize, slots = Self.streamSlots
        var pieces: [PageSet.Range] = []
        for range in pages.ranges {
            var address = range.start
            while address < range.end {
                let end = min(range.end, (address / chunk + 1) * chunk)
                pieces.append(PageSet.Range(start: address, end: end))
                address = end
            }
        }
        guard !pieces.isEmpty else { return PageSet() }
        // On huge pages: fewer faults at first use, and fewer pages for each direct write to pin.
        let ring = try Kernel.mapAnonymousHuge(length: slots * slotSize)
        var marks = [UInt64](repeating: 0, count: slots)
        // The sink reads the buffers until its writes end: wait for them on every path.
        defer {
            try? sink.waitEarly(marks.max()!)
            Kernel.unmap(ring, length: slots * slotSize)
        }
        var streamed = PageSet()
        var done: UInt64 = 0
        var slot = 0
        var next = 0
        while next < pieces.count {
            try sink.waitEarly(marks[slot])
            var batch: [(address: UInt64, buffer: UnsafeMutableRawBufferPointer)] = []
            var used = 0
            while next < pieces.count, used + Int(pieces[next].end - pieces[next].start) <= slotSize {
                let length = Int(pieces[next].end - pieces[next].start)
                batch.append((pieces[next].start, UnsafeMutableRawBufferPointer(start: ring + slot * slotSize + used, count: length)))
                used += length
                next += 1
            }
            let failures: [Int: MitosisError]
            do {
                failures = try memory.read(batch)
            } catch {
                throw MitosisError.targetExited(pid)
            }
            // Pieces read, joined where their addresses run on (they are adjacent in the buffer).
            var joined: [(address: UInt64, buffer: UnsafeMutableRawBufferPointer)] = []
            for (index, piece) in batch.enumerated() where failures[index] == nil {
                recordCopied(at: piece.address, UnsafeRawBufferPointer(piece.buffer))
                if let last = joined.last, last.address + UInt64(last.buffer.count) == piece.address,
                   last.buffer.baseAddress! + last.buffer.count == piece.buffer.baseAddress! {
                    joined[joined.count - 1].buffer = UnsafeMutableRawBufferPointer(start: last.buffer.baseAddress, count: last.buffer.count + piece.buffer.count)
                } else {
                    joined.append(piece)
                }
            }
            for piece in joined {
                marks[slot] = try sink.writeEarly(at: piece.address, UnsafeRawBufferPointer(piece.buffer))
                streamed.insert(start: piece.address, end: piece.address + UInt64(piece.buffer.count))
            }
            done += UInt64(used)
            options.progress?(CheckpointProgress(phase: .copying, done: done, total: pages.byteCount))
            slot = (slot + 1) % slots
        }
        try sink.endEarly()
        run.copied += streamed.pageCount()
        return streamed
    }

    /// `stream`'s buffers: four of four staging chunks each, each filled with one system call.
    private static let streamSlots = 4
    private static let streamSlotSize = 4 * StagingArea.chunkSize

    /// First round over an image from elsewhere: copies `pages`, then keeps as inheritable (and
    /// drops from the copy) every page whose bytes equal the parent chain's. Returns what is left
    /// to copy, which is nothing: the pages that differ are staged here.
    private func adoptUnchanged(_ pages: PageSet, from image: CheckpointImage, held: PageSet, _ run: Run) throws -> PageSet {
        let chain = try image.chain()
        let copied = try copy(pages, run, tolerant: true)
        let pageSize = Int(PagemapFile.pageSize)
        var same = PageSet()
        for range in copied.intersection(held).ranges {
            for piece in try run.staging.pieces(of: range) {
                let old = try chain.read(address: piece.address, length: piece.buffer.count)
                old.withUnsafeBytes { old in
                    for offset in stride(from: 0, to: piece.buffer.count, by: pageSize)
                    where memcmp(piece.buffer.baseAddress! + offset, old.baseAddress! + offset, pageSize) == 0 {
                        same.insert(start: piece.address + UInt64(offset), end: piece.address + UInt64(offset + pageSize))
                    }
                }
            }
        }
        run.inheritable = same
        run.staged = copied.subtracting(same)
        return PageSet()
    }

    /// Pages an image holds bytes for (stored in it or inherited from its parents).
    package static func heldPages(of manifest: CheckpointManifest) -> PageSet {
        PageSet(manifest.mappings.flatMap { mapping in
            mapping.pages.filter { $0.state == .stored || $0.state == .inherited }.map { PageSet.Range(start: $0.start, end: $0.end) }
        })
    }

    /// The manifest's view of each mapping: where every page is kept.
    package static func describe(_ map: ProcessPageMap, stored: PageSet, inherited: PageSet) -> [CheckpointMapping] {
        map.mappings.map { entry in
            let mapping = entry.mapping
            let other: PageState = entry.otherPagesAreFile ? .cleanFile : .neverTouched
            var pieces: [(PageSet.Range, PageState)] = []
            pieces += stored.clamped(start: mapping.start, end: mapping.end).ranges.map { ($0, .stored) }
            pieces += inherited.clamped(start: mapping.start, end: mapping.end).ranges.map { ($0, .inherited) }
            pieces.sort { $0.0.start < $1.0.start }
            var ranges: [PageRange] = []
            var cursor = mapping.start
            for (range, state) in pieces {
                if range.start > cursor { ranges.append(PageRange(start: cursor, end: range.start, state: other)) }
                ranges.append(PageRange(start: range.start, end: range.end, state: state))
                cursor = range.end
            }
            if cursor < mapping.end { ranges.append(PageRange(start: cursor, end: mapping.end, state: other)) }
            return CheckpointMapping(start: mapping.start, end: mapping.end, perms: mapping.perms, offset: mapping.offset,
                                     path: mapping.path, kind: mapping.kind.rawValue, pages: ranges)
        }
    }

    /// `mappings` (described from `map`, one for one) with the identity of the file behind each
    /// mapping that has `clean_file` pages: readers take those pages from that file only.
    private func identifyFiles(_ mappings: [CheckpointMapping], _ map: ProcessPageMap, pageSize: Int) -> [CheckpointMapping] {
        var result = mappings
        for index in result.indices where result[index].pages.contains(where: { $0.state == .cleanFile }) {
            let mapping = map.mappings[index].mapping
            guard let path = mapping.path, !mapping.deleted else { continue }
            let key = "\(mapping.offset):\(mapping.length):\(path)"
            let identity = MappedFileIdentity.capture(path: path, inode: mapping.inode, offset: mapping.offset, length: mapping.length,
                                                      pageSize: pageSize, reuse: fileIdentities[key])
            fileIdentities[key] = identity
            result[index].file = identity
        }
        return result
    }

    /// A vanished target is reported as such, whichever layer noticed.
    package static func translate(_ error: any Error, pid: Int32) -> any Error {
        (error as? MitosisError)?.goneProcess == pid ? MitosisError.targetExited(pid) : error
    }

    package static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds)) / 1_000_000_000
    }
}

extension CheckpointSession {
    /// The pages a manifest records in `state`.
    public static func pages(of manifest: CheckpointManifest, in state: PageState) -> PageSet {
        PageSet(manifest.mappings.flatMap { mapping in
            mapping.pages.filter { $0.state == state }.map { PageSet.Range(start: $0.start, end: $0.end) }
        })
    }
}

/// Runs `body` with a checkpoint session tracking `pid`, and stops the session on every path —
/// success, error, cancellation — so that no tracking is ever left in the target.
public func withCheckpointSession<T: Sendable>(
    pid: Int32, options: CheckpointOptions = CheckpointOptions(),
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CheckpointSession) async throws -> T
) async throws -> T {
    let session = try await CheckpointSession(pid: pid, options: options)
    do {
        let result = try await body(session)
        await session.stop()
        return result
    } catch {
        await session.stop()
        throw error
    }
}

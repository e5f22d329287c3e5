import MitosisCheckpoint
import MitosisImage

/// The last epochs this session sent, oldest first, so that a standby that reconnects at one of
/// them gets only the pages changed since (`CheckpointParent.earlier`) instead of a full base:
/// one that lost its newest epochs, or committed an epoch whose acknowledgement never arrived.
///
/// Bounded by `capacity` epochs (`ProtectOptions.historyEpochs`, 64 by default: three seconds at
/// 20 epochs a second; the standby's reconnection costs no epochs, so the history is not used
/// up while it is away). Each entry holds page ranges and the data files' block hashes (8 bytes
/// per 64 KiB), no page contents: kilobytes per epoch.
struct EpochHistory {
    struct Entry {
        var epoch: CommittedEpoch
        var sequence: Int
        /// The pages the epoch stored.
        var stored: PageSet
        /// The data files as the standby holds them once it committed the epoch.
        var files: [String: DataFiles.Shipped]
    }

    let capacity: Int
    private(set) var entries: [Entry] = []

    init(capacity: Int) { self.capacity = max(0, capacity) }

    /// Records an epoch sent whole (acknowledged or not: the standby may have committed it).
    mutating func append(epoch: CommittedEpoch, manifest: CheckpointManifest, files: [String: DataFiles.Shipped]) {
        guard capacity > 0 else { return }
        entries.append(Entry(epoch: epoch, sequence: manifest.sequence, stored: CheckpointSession.pages(of: manifest, in: .stored), files: files))
        if entries.count > capacity { entries.removeFirst(entries.count - capacity) }
    }

    /// The entry of `epoch` (number and image id), if still kept.
    func entry(_ epoch: CommittedEpoch) -> Entry? {
        entries.last { $0.epoch == epoch }
    }

    /// The pages stored by every epoch sent after `epoch`: with the pages tracked since the
    /// newest, every page written since `epoch`.
    func changed(after epoch: CommittedEpoch) -> PageSet {
        guard let index = entries.lastIndex(where: { $0.epoch == epoch }) else { return PageSet() }
        var pages = PageSet()
        for entry in entries[(index + 1)...] { pages = pages.union(entry.stored) }
        return pages
    }

    /// How many epochs were sent after `epoch`.
    func count(after epoch: CommittedEpoch) -> Int {
        guard let index = entries.lastIndex(where: { $0.epoch == epoch }) else { return 0 }
        return entries.count - index - 1
    }
}

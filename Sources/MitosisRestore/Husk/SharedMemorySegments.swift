import MitosisImage
import MitosisKernel
import MitosisModel

/// SysV shared memory. A segment outlives the processes attached to it and is found by id, which
/// a process keeps in its memory: a restore gives each segment back its id. A segment still here
/// (the restore is on the same host, or its owner never removed it) is attached as it is, and gets
/// the image's content only if no process has it attached; one that is gone is created again
/// with its id (`kernel.shm_next_id`), key, size and mode, filled from the image, and — if the
/// original was marked for removal — marked again once the restored process has attached it.
struct SharedMemorySegments {
    /// Segments whose content the image gives.
    private(set) var filled: Set<Int32> = []
    /// Segments this restore created: removed if it fails.
    private(set) var created: [SysVSharedMemory] = []

    /// Why `segment`, attached at `mapping`, cannot be restored here; nil when it can.
    static func problem(_ segment: SysVSharedMemory?, shmid: Int32, mapping: CheckpointMapping, live: [SysVSharedMemory]) -> String? {
        guard let segment else { return "the image does not hold SysV segment \(shmid) (taken before segments were captured)" }
        let page = UInt64(PagemapFile.pageSize)
        if mapping.offset != 0 || mapping.end - mapping.start != (segment.size + page - 1) / page * page {
            return "segment \(shmid) is attached in part (split by mprotect, or a partial attach): not restorable yet"
        }
        if let here = live.first(where: { $0.shmid == shmid }) {
            if here.key != segment.key || here.size != segment.size {
                return "shmid \(shmid) is taken here by another segment (key 0x\(String(UInt32(bitPattern: here.key), radix: 16)), \(here.size) bytes)"
            }
        } else if segment.key != 0, let other = live.first(where: { $0.key == segment.key }) {
            return "key 0x\(String(UInt32(bitPattern: segment.key), radix: 16)) is taken here by segment \(other.shmid)"
        }
        return nil
    }

    /// Finds or creates every segment of `segments`. On failure, what it created is removed.
    static func prepare(_ segments: [SysVSharedMemory]) throws -> SharedMemorySegments {
        var prepared = SharedMemorySegments()
        do {
            let live = try Kernel.sharedMemorySegments()
            for segment in segments {
                if let here = live.first(where: { $0.shmid == segment.shmid }) {
                    if here.attachCount == 0 { prepared.filled.insert(segment.shmid) }
                    continue
                }
                _ = try Kernel.createSharedMemorySegment(id: segment.shmid, key: segment.key, size: segment.size, mode: segment.perms)
                prepared.created.append(segment)
                prepared.filled.insert(segment.shmid)
            }
        } catch {
            prepared.removeCreated()
            throw StepFailure(step: "creating the SysV shared memory segments again", detail: "\(error)")
        }
        return prepared
    }

    /// Marks the created segments whose originals were marked for removal: with the restored
    /// process attached, they now go when it detaches, as the originals would have. Returns a
    /// note for each one that could not be marked (it then stays until removed by hand).
    func markRemoved() -> [String] {
        created.filter { $0.perms & Kernel.sharedMemoryDestroyed != 0 }.compactMap { segment in
            do { try Kernel.removeSharedMemorySegment(segment.shmid) } catch {
                return "SysV segment \(segment.shmid) could not be marked for removal again: \(error)"
            }
            return nil
        }
    }

    func removeCreated() {
        for segment in created { try? Kernel.removeSharedMemorySegment(segment.shmid) }
    }
}

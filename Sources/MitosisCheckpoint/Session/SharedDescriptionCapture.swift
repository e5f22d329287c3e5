import MitosisKernel
import MitosisModel

/// Finds the descriptors that share one open file description (two fds after `dup`, or one
/// inherited twice): `kcmp(KCMP_FILE)` on the candidates only, descriptors of the same object
/// (inode and device), so that a process with thousands of files costs no more than a few calls.
/// Each is recorded against the lowest fd of its description, which restore `dup`s.
enum SharedDescriptionCapture {
    static func capture(pid: Int32, descriptors: [OpenDescriptor]) throws -> [RestoreRecord.SharedDescription] {
        struct Object: Hashable {
            var inode: UInt64
            var device: DeviceNumber?
            var target: String
        }
        var shared: [RestoreRecord.SharedDescription] = []
        let task = Kernel.procEntry(pid)  // a live thread, should the leader have exited
        let groups = Dictionary(grouping: descriptors, by: { Object(inode: $0.inode, device: $0.device, target: $0.target) })
        for group in groups.values where group.count > 1 {
            var firsts: [Int32] = []  // the lowest fd of each description seen so far
            for descriptor in group.sorted(by: { $0.fd < $1.fd }) {
                if let first = try firsts.first(where: { try Kernel.kcmpEqual(task, task, .file, Int($0), Int(descriptor.fd)) }) {
                    shared.append(RestoreRecord.SharedDescription(fd: descriptor.fd, sameAs: first))
                } else {
                    firsts.append(descriptor.fd)
                }
            }
        }
        return shared.sorted { $0.fd < $1.fd }
    }
}

import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 0 of a tree: husks created top-down, each child from inside its parent's husk, with
/// their sessions and process groups. A session can only be entered by being born into it, so
/// a member that led its session calls `setsid` before its children exist; groups are joined
/// once every husk exists (a group's leader may come after a member of it).
extension Tracer {
    /// `setsid` for a member that led its session (its children, created after, inherit it).
    func restoreSession(_ member: TreeManifest.Member) throws {
        if member.session == member.pid {
            try huskCall("leading a new session (setsid) in process \(member.pid)", SyscallNumber.setsid, [])
        }
    }

    /// Joins the member's process group: its own (`setpgid(0, 0)`), another member's, or one
    /// outside the tree if it still exists in this session. Returns a note when it could not.
    func restoreGroup(_ member: TreeManifest.Member, inTree: Bool) throws -> [String] {
        let mine = ownGroupAndSession()
        var notes: [String] = []
        if mine?.group != member.processGroup {
            if member.processGroup == member.pid {
                try huskCall("leading a new process group (setpgid) in process \(member.pid)", SyscallNumber.setpgid, [0, 0])
            } else if inTree {
                try huskCall("joining process group \(member.processGroup) in process \(member.pid)", SyscallNumber.setpgid, [0, UInt64(member.processGroup)])
            } else {
                do { try performSyscall(SyscallNumber.setpgid, [0, UInt64(member.processGroup)]) } catch {
                    notes.append("process \(member.pid): process group \(member.processGroup) could not be joined (\(error)); it is in group \(mine.map { "\($0.group)" } ?? "?")")
                }
            }
        }
        if let session = ownGroupAndSession()?.session, session != member.session {
            notes.append("process \(member.pid): session \(member.session) is not the restorer's; it is in session \(session)")
        }
        return notes
    }

    /// The husk's process group and session as it sees them (`getpgid`, `getsid` injected):
    /// inside a new pid namespace they are the namespace's ids, as the image's are.
    private func ownGroupAndSession() -> (group: Int32, session: Int32)? {
        guard let group = try? performSyscall(SyscallNumber.getpgid, [0]), let session = try? performSyscall(SyscallNumber.getsid, [0]) else { return nil }
        return (Int32(truncatingIfNeeded: group), Int32(truncatingIfNeeded: session))
    }
}

import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 5, continued: session, process group, personality, transparent huge pages.
extension Tracer {
    /// A process that led its session leads a new one (`setsid`); one that led its process
    /// group leads a new group in the restorer's session; one that belonged to another group
    /// joins it again if that group still exists in the restorer's session (`setpgid`).
    /// Otherwise it stays in the restorer's group, and a note says so: a group in another
    /// session cannot be joined. Returns such notes.
    func restoreProcessAttributes(_ plan: RestorePlan) throws -> [String] {
        var notes: [String] = []
        // A tree's members got their session and group as their husks were created (`Husk/Tree.swift`).
        if plan.tree == nil, let identity = plan.manifest.process?.identity {
            // The image's ids: inside a new pid namespace the husk's own pid is the image's.
            let own = plan.manifest.pid
            if identity.session == own {
                try huskCall("leading a new session (setsid)", SyscallNumber.setsid, [])
            } else if identity.processGroup == own {
                try huskCall("leading a new process group (setpgid)", SyscallNumber.setpgid, [0, 0])
            } else if plan.newPidNamespace {
                notes.append("process group \(identity.processGroup) and session \(identity.session) are outside the new pid namespace; the process is in its restorer's")
            } else {
                let mine = try? Kernel.processGroupAndSession(pid)
                if mine?.group != identity.processGroup {
                    do {
                        try performSyscall(SyscallNumber.setpgid, [0, UInt64(identity.processGroup)])
                    } catch {
                        notes.append("process group \(identity.processGroup) (session \(identity.session)) could not be joined (\(error)); the process is in the restorer's group \(mine.map { "\($0.group)" } ?? "?")")
                    }
                }
                if let session = try? Kernel.processGroupAndSession(pid).session, session != identity.session {
                    notes.append("session \(identity.session) is not the restorer's; the process is in session \(session)")
                }
            }
        }
        guard let state = plan.record.processState else { return notes }
        try huskCall("setting the personality 0x\(String(state.personality, radix: 16))", SyscallNumber.personality, [UInt64(state.personality)])
        if state.thpDisable != 0 {
            try huskCall("disabling transparent huge pages", SyscallNumber.prctl,
                         [PrctlOption.setTHPDisable, 1, UInt64(state.thpDisable & ~1), 0, 0])
        }
        if let signal = state.threads.first(where: { $0.parentDeathSignal != 0 }) {
            notes.append("thread \(signal.tid) had parent-death signal \(signal.parentDeathSignal); not armed (the restored process's parent is its restorer, which exits)")
        }
        return notes
    }
}

import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Phase 5, last: credentials, in every thread (the kernel keeps them per thread), in CRIU's
/// order: what needs privilege first — supplementary groups, the bounding set, securebits
/// with `SECURE_NO_SETUID_FIXUP` so that capabilities survive the change of uid — then uids and
/// gids, the recorded securebits, the capability sets (`capset`), ambient capabilities,
/// no_new_privs; then the dumpable flag, which a change of uid resets.
extension Tracer {
    func restoreCredentials(_ plan: RestorePlan, area: WorkArea) throws {
        guard let identity = plan.manifest.process?.identity else { return }
        let state = plan.record.processState
        let groups = identity.groups
        guard groups.count * 4 <= Int(WorkArea.page) * (WorkArea.scratchPages - 1) else {
            throw StepFailure(step: "passing \(groups.count) supplementary groups", detail: "more than the scratch pages hold")
        }
        let sets = identity.capabilities.map { caps in
            [caps.effective, caps.permitted, caps.inheritable, caps.bounding, caps.ambient].map { UInt64($0, radix: 16) ?? 0 }
        }
        // Every thread was cloned from the husk's main thread, which holds Mitosis's credentials:
        // when those are the image's already (root restoring a process of root), setting them
        // again in every thread would only cost round trips.
        if try huskHoldsCredentials(identity, state: state) { return try restoreDumpable(state) }
        let lastCapability = (try? Kernel.readFile("/proc/sys/kernel/cap_last_cap"))
            .flatMap { Int(String(decoding: $0, as: UTF8.self).split(whereSeparator: \.isWhitespace).first ?? "") } ?? 40
        for thread in plan.manifest.threads.map(\.tid) {
            func call(_ step: String, _ number: Int, _ arguments: [UInt64]) throws {
                try huskCall("\(step) in thread \(thread)", number, arguments, in: plan.host(thread))
            }
            try groups.withUnsafeBytes { try huskWrite("passing the supplementary groups", area.scratch + WorkArea.text, $0) }
            try call("setting \(groups.count) supplementary groups", SyscallNumber.setgroups, [UInt64(groups.count), area.scratch + WorkArea.text])
            if let sets {
                for capability in 0...lastCapability where sets[3] & (1 << UInt64(capability)) == 0 {
                    try call("dropping capability \(capability) from the bounding set", SyscallNumber.prctl,
                             [PrctlOption.capabilityBoundingSetDrop, UInt64(capability), 0, 0, 0])
                }
            }
            try call("keeping capabilities across the change of uid", SyscallNumber.prctl, [PrctlOption.setSecurebits, securebitNoSetuidFixup, 0, 0, 0])
            try call("setting gids \(identity.gid.real)/\(identity.gid.effective)/\(identity.gid.saved)", SyscallNumber.setresgid,
                     [UInt64(identity.gid.real), UInt64(identity.gid.effective), UInt64(identity.gid.saved)])
            try call("setting uids \(identity.uid.real)/\(identity.uid.effective)/\(identity.uid.saved)", SyscallNumber.setresuid,
                     [UInt64(identity.uid.real), UInt64(identity.uid.effective), UInt64(identity.uid.saved)])
            // setfsuid/setfsgid return the previous id, never an error.
            _ = try? performSyscall(SyscallNumber.setfsgid, [UInt64(identity.gid.filesystem)], in: plan.host(thread))
            _ = try? performSyscall(SyscallNumber.setfsuid, [UInt64(identity.uid.filesystem)], in: plan.host(thread))
            try call("setting securebits 0x\(String(state?.securebits ?? 0, radix: 16))", SyscallNumber.prctl,
                     [PrctlOption.setSecurebits, UInt64(state?.securebits ?? 0), 0, 0, 0])
            if let sets {
                // cap_user_header {version, pid 0}, then two cap_user_data {effective, permitted, inheritable}.
                let words: [UInt32] = [capabilityVersion3, 0,
                                       UInt32(truncatingIfNeeded: sets[0]), UInt32(truncatingIfNeeded: sets[1]), UInt32(truncatingIfNeeded: sets[2]),
                                       UInt32(truncatingIfNeeded: sets[0] >> 32), UInt32(truncatingIfNeeded: sets[1] >> 32), UInt32(truncatingIfNeeded: sets[2] >> 32)]
                try words.withUnsafeBytes { try huskWrite("passing the capability sets", area.scratch + WorkArea.capabilities, $0) }
                try call("setting the capability sets (capset)", SyscallNumber.capset,
                         [area.scratch + WorkArea.capabilities, area.scratch + WorkArea.capabilities + 8])
                for capability in 0...lastCapability where sets[4] & (1 << UInt64(capability)) != 0 {
                    try call("raising ambient capability \(capability)", SyscallNumber.prctl,
                             [PrctlOption.ambientCapability, PrctlOption.ambientRaise, UInt64(capability), 0, 0])
                }
            }
            if state?.noNewPrivileges == true {
                try call("setting no_new_privs", SyscallNumber.prctl, [PrctlOption.setNoNewPrivileges, 1, 0, 0, 0])
            }
        }
        try restoreDumpable(state)
    }

    private func restoreDumpable(_ state: RestoreRecord.ProcessState?) throws {
        if let dumpable = state?.dumpable, dumpable == 0 || dumpable == 1 {
            try huskCall("setting the dumpable flag to \(dumpable)", SyscallNumber.prctl, [PrctlOption.setDumpable, UInt64(dumpable), 0, 0, 0])
        }
    }

    /// Whether the husk's main thread holds exactly the image's uids, gids, groups,
    /// capability sets, no_new_privs and securebits.
    private func huskHoldsCredentials(_ identity: ProcessIdentity, state: RestoreRecord.ProcessState?) throws -> Bool {
        guard let text = try? Kernel.readFile("/proc/\(pid)/status") else { return false }
        let status = ProcStatus(parsing: String(decoding: text, as: UTF8.self))
        guard identity.capabilities != nil, status.capabilities == identity.capabilities,
              status.credentials("Uid") == identity.uid, status.credentials("Gid") == identity.gid,
              status.groups.sorted() == identity.groups.sorted(),
              (status["NoNewPrivs"] == "1") == (state?.noNewPrivileges == true)
        else { return false }
        let securebits = try huskCall("reading the husk's securebits", SyscallNumber.prctl, [27 /* PR_GET_SECUREBITS */, 0, 0, 0, 0])
        return securebits == UInt64(state?.securebits ?? 0)
    }
}

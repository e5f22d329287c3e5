import SystemPackage
import MitosisInspect
import MitosisKernel
import MitosisTrace

/// The probes of `KernelFeatures`, each trying its feature for real.
extension KernelProbe {
    /// Freezing: seize and interrupt every thread, then detach.
    public static let ptraceSeize = KernelProbe("ptrace-seize") { child in
        let count = try await withFrozenProcess(child.pid) { await $0.threads.count }
        return "PTRACE_SEIZE and PTRACE_INTERRUPT stopped \(count) thread(s) of a child; PTRACE_DETACH released them"
    }

    /// Reading memory without stopping the target.
    public static let processVMReadv = KernelProbe("process-vm-readv") { child in
        var bytes = [UInt8](repeating: 0, count: child.marker.count)
        let count = try bytes.withUnsafeMutableBytes { buffer throws(Errno) in
            try Kernel.readMemory(pid: child.pid, address: child.markerAddress, into: buffer)
        }
        guard count == bytes.count, bytes == child.marker else {
            throw ProbeFailure("process_vm_readv read \(count) bytes that differ from the child's memory")
        }
        return "process_vm_readv read \(count) known bytes of a child's memory"
    }

    /// Duplicating a target's descriptor (sockets, pipes, userfaultfd).
    public static let pidfdGetfd = KernelProbe("pidfd-getfd") { child in
        let pidfd = try Kernel.pidfdOpen(child.pid)
        defer { try? pidfd.close() }
        let copy = try Kernel.pidfdGetfd(pidfd, child.sharedFD)
        defer { try? copy.close() }
        let mine = try Kernel.readLink("/proc/self/fd/\(copy.rawValue)")
        let theirs = try Kernel.readLink("/proc/\(child.pid)/fd/\(child.sharedFD)")
        guard mine == theirs else { throw ProbeFailure("pidfd_getfd gave \(mine), the child holds \(theirs)") }
        return "pidfd_open + pidfd_getfd copied a child's descriptor \(child.sharedFD) (\(theirs))"
    }

    /// Telling shared kernel objects apart (files, address spaces, fd tables).
    public static let kcmp = KernelProbe("kcmp") { child in
        let sameFile = try Kernel.kcmpEqual(Kernel.currentProcessID(), child.pid, .file, Int(child.sharedFD), Int(child.sharedFD))
        let sameMemory = try Kernel.kcmpEqual(Kernel.currentProcessID(), child.pid, .addressSpace)
        guard sameFile, !sameMemory else {
            throw ProbeFailure("kcmp answered file shared: \(sameFile), address space shared: \(sameMemory); expected true, false")
        }
        return "kcmp saw an inherited open file as shared and the forked address space as distinct"
    }

    /// Running system calls inside a frozen target (userfaultfd creation, parasite calls).
    public static let syscallInjection = KernelProbe("syscall-injection") { child in
        let result = try await withFrozenProcess(child.pid) { try await $0.injectSyscall(SyscallNumber.getpid) }
        guard result == Int64(child.pid) else { throw ProbeFailure("an injected getpid returned \(result), not \(child.pid)") }
        return "getpid injected into a frozen child (run to its syscall-exit stop) returned its pid"
    }

    /// Listing TCP sockets with their inodes and addresses.
    public static let sockDiagInet = KernelProbe("sock-diag-inet") { _ in
        let table = try SockDiag().table()
        guard !table.unavailable.contains("tcp/ipv4") else {
            throw ProbeFailure("NETLINK_SOCK_DIAG has no handler for TCP over IPv4 (inet_diag and tcp_diag not loaded)")
        }
        let count = table.inet.filter { $0.protocol == .tcp && $0.family == .ipv4 }.count
        return "NETLINK_SOCK_DIAG dump of IPv4 TCP sockets listed \(count)"
    }

    /// Listing UNIX sockets with their inodes, names and peers.
    public static let sockDiagUnix = KernelProbe("sock-diag-unix") { _ in
        let table = try SockDiag().table()
        guard !table.unavailable.contains("unix") else {
            throw ProbeFailure("NETLINK_SOCK_DIAG has no handler for UNIX sockets (unix_diag not loaded)")
        }
        return "NETLINK_SOCK_DIAG dump of UNIX sockets listed \(table.unix.count)"
    }

    /// Dirty-page tracking through soft-dirty bits (`clear_refs` 4, pagemap bit 55).
    public static let softDirty = KernelProbe("soft-dirty") { child in
        try checkSoftDirty(pid: child.pid, page: child.pageAddress)
    }

    /// Clears the soft-dirty bits of `pid`, writes one byte at `page` and expects the page's
    /// pagemap bit 55. Also run on Mitosis itself (`TrackingStrategy.isSupported`).
    package static func checkSoftDirty(pid: Int32, page: UInt64) throws -> String {
        try Kernel.clearRefs(pid: pid, .softDirty)
        let byte: [UInt8] = [0xa5]
        _ = try byte.withUnsafeBytes { buffer throws(Errno) in
            try Kernel.writeMemory(pid: pid, address: page, from: buffer)
        }
        let pagemap = try PagemapFile(pid: pid)
        defer { pagemap.close() }
        guard let entry = try pagemap.entries(at: page, count: 1).first, entry.isSoftDirty else {
            throw ProbeFailure("/proc/PID/clear_refs accepted 4, but a page written afterwards never shows pagemap bit 55 (kernel without CONFIG_MEM_SOFT_DIRTY)")
        }
        return "a page written after clear_refs 4 shows pagemap bit 55"
    }

    /// Listing written pages in one walk (`PAGEMAP_SCAN`, Linux 6.7+).
    public static let pagemapScan = KernelProbe("pagemap-scan") { child in
        try checkPagemapScan(page: child.pageAddress)
    }

    /// One `PAGEMAP_SCAN` of Mitosis's own pagemap over `page` (any address works).
    package static func checkPagemapScan(page: UInt64) throws -> String {
        let pagemap = try PagemapFile(pid: Kernel.currentProcessID())
        defer { pagemap.close() }
        var request = PagemapFile.ScanRequest(start: page, end: page + PagemapFile.pageSize)
        request.anyOf = .present
        request.returned = .present
        let regions: [PageRegion]
        do {
            regions = try pagemap.scan(request)
        } catch .inappropriateIOCTLForDevice {
            throw ProbeFailure("ioctl PAGEMAP_SCAN on /proc/self/pagemap: ENOTTY (needs Linux 6.7)")
        } catch {
            throw error
        }
        return "ioctl PAGEMAP_SCAN on /proc/self/pagemap listed \(regions.count) present region(s)"
    }

    /// Exact dirty tracking: userfaultfd write-protection resolved by the kernel (Linux 6.7+).
    public static let uffdWriteProtectAsync = KernelProbe("uffd-wp-async") { _ in
        try checkUserfaultfdWriteProtectAsync()
    }

    /// A userfaultfd of Mitosis's own that accepts asynchronous write-protection of unpopulated pages.
    package static func checkUserfaultfdWriteProtectAsync() throws -> String {
        let descriptor = try Kernel.userfaultfd(flags: Kernel.trackingUserfaultfdFlags)
        let uffd = Userfaultfd(descriptor: descriptor)
        defer { uffd.close() }
        let wanted: Userfaultfd.Features = [.writeProtectAsync, .writeProtectUnpopulated]
        let offered: Userfaultfd.Features
        do { offered = try uffd.enable(wanted) } catch .invalidArgument {
            throw ProbeFailure("UFFDIO_API refused UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED (EINVAL: needs Linux 6.7)")
        }
        guard offered.isSuperset(of: wanted) else { throw ProbeFailure("UFFDIO_API does not offer WP_ASYNC and WP_UNPOPULATED") }
        return "userfaultfd (user-mode only) + UFFDIO_API enabled UFFD_FEATURE_WP_ASYNC and UFFD_FEATURE_WP_UNPOPULATED"
    }
}

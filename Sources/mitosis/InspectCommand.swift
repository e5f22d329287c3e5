import ArgumentParser
import Foundation
import Mitosis

/// Shows everything `/proc` tells about a process — identity, threads, mappings, descriptors,
/// IPC — without stopping it. `--json` prints the `ProcessModel` (schema: Docs/inspect-json.md).
struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show a process's identity, threads, memory mappings, descriptors and IPC, without stopping it.")

    @Argument(help: "The process id.") var pid: String
    @Flag(help: "Print the whole model as JSON (schema: Docs/inspect-json.md).") var json = false
    @Flag(help: "Read /proc/PID/maps only: no per-mapping sizes or VmFlags (faster for huge processes).")
    var noSmaps = false

    func run() throws {
        let pid = targetPID(pid, forTracing: false)
        do {
            let model = try Introspector.inspect(pid: pid, detailedMemory: !noSmaps)
            print(json ? try JSONOutput.string(model) : InspectReport(model).text, terminator: json ? "\n" : "")
        } catch {
            fail(error)
        }
    }
}

/// The readable form of a `ProcessModel`: a summary, then tables like `ps -L`, `pmap` and `lsof`.
struct InspectReport {
    let model: ProcessModel
    init(_ model: ProcessModel) { self.model = model }

    var text: String {
        var out = ""
        summary(&out)
        threads(&out)
        maps(&out)
        fds(&out)
        ipc(&out)
        return out
    }

    private func summary(_ out: inout String) {
        let id = model.identity
        out += "process \(model.pid) (\(visible(id.comm)))  state \(id.state)  ppid \(id.ppid)  pgrp \(id.processGroup)  session \(id.session)\n"
        out += "  exe         \(id.exe.map(visible) ?? "?")\n"
        out += "  cmdline     \(id.cmdline.map(visible).joined(separator: " "))\n"
        out += "  cwd         \(id.cwd.map(visible) ?? "?")    root \(id.root.map(visible) ?? "?")\n"
        out += "  uid         \(ids(id.uid))    gid \(ids(id.gid))    groups \(id.groups.map(String.init).joined(separator: ","))\n"
        if let caps = id.capabilities {
            out += "  caps        eff \(caps.effective)  prm \(caps.permitted)  inh \(caps.inheritable)  bnd \(caps.bounding)  amb \(caps.ambient)\n"
        }
        out += "  environ     \(id.environ.map { "\($0.count) variables" } ?? "unreadable")\n"
        out += "  namespaces  \(model.namespaces.map { "\($0.type):\($0.inode)" }.joined(separator: " "))\n"
        out += "  cgroups     \(model.cgroups.map { "\($0.hierarchy):\($0.controllers.joined(separator: ",")):\($0.path)" }.joined(separator: " "))\n"
        let nofile = model.limits.first { $0.name == "Max open files" }
        let rss = model.maps.reduce(UInt64(0)) { $0 + ($1.sizes?.rss ?? 0) }
        out += "  totals      \(model.threads.count) threads, \(model.maps.count) mappings (rss \(bytes(rss))), "
            + "\(model.fds.count) descriptors (limit \(limit(nofile?.soft))/\(limit(nofile?.hard)))\n"
    }

    private func threads(_ out: inout String) {
        out += "\nTHREADS\n"
        table(&out, [["TID", "STATE", "NAME"]] + model.threads.map { [String($0.tid), $0.state, visible($0.name)] })
    }

    private func maps(_ out: inout String) {
        out += "\nMAPS\n"
        table(&out, [["START", "END", "PERMS", "OFFSET", "DEVICE", "INODE", "KIND", "RSS", "PATH"]] + model.maps.map { m in
            [hex(m.start), hex(m.end), m.perms, hex(m.offset), m.device.description, String(m.inode), m.kind.rawValue,
             m.sizes.map { bytes($0.rss) } ?? "-", (m.path.map(visible) ?? "") + (m.deleted ? " (deleted)" : "")]
        })
    }

    private func fds(_ out: inout String) {
        out += "\nFDS\n"
        table(&out, [["FD", "KIND", "FLAGS", "POS", "INODE", "NAME"]] + model.fds.map { d in
            [String(d.fd), d.kind.rawValue, d.flagNames.filter { $0 != "O_LARGEFILE" }.joined(separator: "|"),
             String(d.position), String(d.inode), name(d)]
        })
    }

    private func ipc(_ out: inout String) {
        let ipc = model.ipc
        guard !ipc.sharedMemory.isEmpty || !ipc.semaphores.isEmpty || !ipc.messageQueues.isEmpty
                || !ipc.posixMessageQueues.isEmpty || !ipc.sysvVisible else { return }
        out += "\nIPC\n"
        if !ipc.sysvVisible { out += "  (another IPC namespace: SysV objects not visible)\n" }
        for s in ipc.sharedMemory {
            out += "  shm  shmid \(s.shmid) key \(s.key) size \(s.size) nattch \(s.attachCount) cpid \(s.creatorPid) lpid \(s.lastPid)"
                + " attached at \(s.attachedAt.map(hex).joined(separator: ","))\n"
        }
        for s in ipc.semaphores {
            out += "  sem  semid \(s.semid) key \(s.key) nsems \(s.count) last semop pids \(s.lastOperationPids.map(String.init).joined(separator: ","))\n"
        }
        for q in ipc.messageQueues {
            out += "  msg  msqid \(q.msqid) key \(q.key) \(q.messages) messages, \(q.bytes) bytes, lspid \(q.lastSendPid) lrpid \(q.lastReceivePid)\n"
        }
        for q in ipc.posixMessageQueues { out += "  mq   fd \(q.fd) \(visible(q.name))\n" }
    }

    /// What lsof's NAME column would say, plus the kind-specific state.
    private func name(_ d: OpenDescriptor) -> String {
        var name = d.path.map(visible) ?? d.target
        if d.deleted { name += " (deleted)" }
        if let e = d.eventfd { name += "  counter=\(e.counter)" }
        if let watches = d.epoll {
            name += "  " + watches.map { "fd \($0.fd) \($0.eventNames.joined(separator: "|")) data=0x\(String($0.data, radix: 16))" }
                .joined(separator: "; ")
        }
        if let s = d.signalfd { name += "  signals=\(s.signals.map(String.init).joined(separator: ","))" }
        if let t = d.timerfd {
            name += "  clock=\(t.clockId) value=\(t.value.seconds).\(nanos(t.value)) interval=\(t.interval.seconds).\(nanos(t.interval)) ticks=\(t.ticks)"
        }
        if let watches = d.inotify {
            name += "  " + watches.map { "wd \($0.wd) ino \($0.inode) dev \($0.device) mask=0x\(String($0.mask, radix: 16))" }.joined(separator: "; ")
        }
        if let f = d.fanotify { name += "  \(f.marks.count) marks" }
        if let p = d.pidfd { name += "  pid=\(p.pid)" }
        return name
    }

    private func nanos(_ time: TimeSpec) -> String {
        let digits = String(time.nanoseconds)
        return String(repeating: "0", count: max(0, 9 - digits.count)) + digits
    }

    private func table(_ out: inout String, _ rows: [[String]]) {
        guard let columns = rows.first?.count else { return }
        let widths = (0..<columns).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            // Padded in Swift: Foundation's `padding(toLength:)` bridged every cell through NSString
            // (a quarter of `inspect`'s time with 10,000 descriptors).
            let cells = row.enumerated().map { index, cell in
                index == columns - 1 ? cell : cell + String(repeating: " ", count: max(0, widths[index] - cell.count))
            }
            out += "  " + cells.joined(separator: "  ") + "\n"
        }
    }

    private func ids(_ c: Credentials) -> String { "\(c.real)/\(c.effective)/\(c.saved)/\(c.filesystem)" }
    private func hex(_ value: UInt64) -> String { String(value, radix: 16) }
    private func limit(_ value: UInt64?) -> String { value.map(String.init) ?? "unlimited" }
    /// Control characters (a newline in a path) shown escaped, so each entry stays one line.
    private func visible(_ text: String) -> String {
        text.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f }
            ? text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? "\\x" + String(format: "%02x", $0.value) : String($0) }.joined()
            : text
    }

    private func bytes(_ count: UInt64) -> String {
        if count < 1024 { return "\(count) B" }
        if count < 1024 * 1024 { return "\(count / 1024) KiB" }
        return String(format: "%.1f MiB", Double(count) / 1_048_576)
    }
}

/// `/proc/PID/fdinfo/N`: `pos:`, `flags:` (octal), `mnt_id:`, `ino:`, then lines that depend on
/// the kind of file — eventfd counter (hex), epoll `tfd:` lines, signalfd `sigmask:` (hex),
/// timerfd clock and times, `inotify` and `fanotify` marks (hex fields), pidfd `Pid:`.
public struct ProcFdinfo: Equatable, Sendable {
    public var position: UInt64
    public var flags: UInt32
    public var mountId: Int
    /// `ino:` (kernels since 5.14); nil when absent.
    public var inode: UInt64?
    public var eventfd: EventfdState?
    /// The epoll watches, ascending by watched fd.
    public var epoll: [EpollWatch] = []
    public var signalfd: SignalfdState?
    public var timerfd: TimerfdState?
    public var inotify: [InotifyWatch] = []
    public var fanotify: FanotifyState?
    public var pidfd: PidfdState?

    /// Parses the file's text; nil when `pos:` or `flags:` is missing or malformed (a truncated
    /// read, or not fdinfo at all). Malformed kind-specific lines are skipped.
    /// What fdinfo said that belongs to a descriptor of `kind`: the state of that kind, if any.
    public func state(of kind: OpenDescriptor.Kind) -> OpenDescriptor.State? {
        switch kind {
        case .eventfd: return eventfd.map { .eventfd($0) }
        case .epoll: return .epoll(epoll)
        case .signalfd: return signalfd.map { .signalfd($0) }
        case .timerfd: return timerfd.map { .timerfd($0) }
        case .inotify: return .inotify(inotify)
        case .fanotify: return fanotify.map { .fanotify($0) }
        case .pidfd: return pidfd.map { .pidfd($0) }
        default: return nil
        }
    }

    public init?(parsing text: String) {
        var position: UInt64?, flags: UInt32?, mountId = 0
        var fanotify: FanotifyState?
        // Kind-specific single-value lines, combined once every line is read.
        var counter: UInt64?, eventfdId: Int?, semaphore: Bool?, sigmask: UInt64?
        var clock: Int32?, ticks: UInt64?, settime: UInt32?, value: TimeSpec?, interval: TimeSpec?
        var pid: Int32?, namespacePids: [Int32] = []
        // Split on UTF-8 bytes: this runs once per descriptor, and Character-level scanning dominated.
        for bytes in text.utf8.split(separator: UInt8(ascii: "\n")) {
            let line = Substring(bytes)
            if line.hasPrefix("tfd:") {
                if let watch = Self.epollWatch(ProcFields(line)) { epoll.append(watch) }
            } else if line.hasPrefix("inotify ") {
                if let watch = Self.inotifyWatch(ProcFields(line)) { inotify.append(watch) }
            } else if line.hasPrefix("fanotify ") {
                Self.addFanotify(ProcFields(line), to: &fanotify)
            } else if let colon = line.utf8.firstIndex(of: UInt8(ascii: ":")) {
                let field = line[line.utf8.index(after: colon)...].trimmingSpaces
                switch line[..<colon] {
                case "pos": position = UInt64(field)
                case "flags": flags = UInt32(field, radix: 8)
                case "mnt_id": mountId = Int(field) ?? 0
                case "ino": inode = UInt64(field)
                case "eventfd-count": counter = UInt64(field, radix: 16)
                case "eventfd-id": eventfdId = Int(field)
                case "eventfd-semaphore": semaphore = Int(field).map { $0 != 0 }
                case "sigmask": sigmask = UInt64(field, radix: 16)
                case "clockid": clock = Int32(field)
                case "ticks": ticks = UInt64(field)
                case "settime flags": settime = UInt32(field, radix: 8)
                case "it_value": value = Self.timeSpec(field)
                case "it_interval": interval = Self.timeSpec(field)
                case "Pid": pid = Int32(field)
                case "NSpid": namespacePids = field.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Int32($0) }
                default: break
                }
            }
        }
        guard let position, let flags else { return nil }
        self.position = position
        self.flags = flags
        self.mountId = mountId
        self.fanotify = fanotify
        // The kernel walks its red-black tree of watches (ordered by file address): sort by fd.
        epoll.sort { ($0.fd, $0.data) < ($1.fd, $1.data) }
        if let counter { eventfd = EventfdState(counter: counter, id: eventfdId, semaphore: semaphore) }
        if let sigmask { signalfd = SignalfdState(mask: sigmask) }
        if let clock, let ticks, let settime, let value, let interval {
            timerfd = TimerfdState(clockId: clock, ticks: ticks, settimeFlags: settime, value: value, interval: interval)
        }
        if let pid { pidfd = PidfdState(pid: pid, namespacePids: namespacePids) }
    }

    /// `(9, 999989724)` → 9 s 999989724 ns.
    package static func timeSpec(_ text: Substring) -> TimeSpec? {
        guard text.hasPrefix("("), text.hasSuffix(")") else { return nil }
        let parts = text.dropFirst().dropLast().split(separator: ",").map(\.trimmingSpaces)
        guard parts.count == 2, let seconds = Int64(parts[0]), let nanoseconds = Int64(parts[1]) else { return nil }
        return TimeSpec(seconds: seconds, nanoseconds: nanoseconds)
    }

    /// `tfd:        4 events: 80000019 data:             1234  pos:0 ino:117a0 sdev:f`
    package static func epollWatch(_ fields: ProcFields) -> EpollWatch? {
        guard let fd = fields.decimal("tfd").flatMap({ Int32(exactly: $0) }),
              let events = fields.hex("events").flatMap({ UInt32(exactly: $0) }),
              let data = fields.hex("data")
        else { return nil }
        return EpollWatch(fd: fd, events: events, eventNames: EpollWatch.names(events), data: data,
                          position: fields.decimal("pos"), inode: fields.hex("ino"),
                          device: fields.hex("sdev").map { DeviceNumber(kernel: $0) })
    }

    /// `inotify wd:1 ino:3df9d sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 …` (all hex).
    package static func inotifyWatch(_ fields: ProcFields) -> InotifyWatch? {
        guard let wd = fields.hex("wd").flatMap({ Int32(exactly: $0) }), let inode = fields.hex("ino"),
              let device = fields.hex("sdev"), let mask = fields.hex("mask").flatMap({ UInt32(exactly: $0) })
        else { return nil }
        return InotifyWatch(wd: wd, inode: inode, device: DeviceNumber(kernel: device), mask: mask,
                            ignoredMask: fields.hex("ignored_mask").flatMap { UInt32(exactly: $0) } ?? 0)
    }

    /// `fanotify flags:0 event-flags:8000` (the group), then one line per mark: on an inode
    /// (`ino:… sdev:…`), a mount (`mnt_id:…`) or a filesystem (`sdev:…` alone). All hex.
    private static func addFanotify(_ fields: ProcFields, to fanotify: inout FanotifyState?) {
        if let flags = fields.hex("flags"), let eventFlags = fields.hex("event-flags") {
            let marks = fanotify?.marks ?? []
            fanotify = FanotifyState(flags: UInt32(truncatingIfNeeded: flags),
                                     eventFlags: UInt32(truncatingIfNeeded: eventFlags), marks: marks)
            return
        }
        guard let markFlags = fields.hex("mflags"), let mask = fields.hex("mask") else { return }
        let target: FanotifyMark.Target
        if fields.hex("ino") != nil { target = .inode }
        else if fields.hex("mnt_id") != nil { target = .mount }
        else if fields.hex("sdev") != nil { target = .filesystem }
        else { return }
        let mark = FanotifyMark(target: target, inode: fields.hex("ino"), device: fields.hex("sdev").map { DeviceNumber(kernel: $0) },
                                mountId: fields.hex("mnt_id").flatMap { Int(exactly: $0) },
                                markFlags: UInt32(truncatingIfNeeded: markFlags), mask: mask,
                                ignoredMask: fields.hex("ignored_mask") ?? 0)
        if fanotify == nil { fanotify = FanotifyState(flags: 0, eventFlags: 0, marks: []) }
        fanotify?.marks.append(mark)
    }
}

/// The `key:value` tokens of one fdinfo line, where a value may also follow `key:` after spaces
/// (`tfd:        4 events: 80000019`). Tokens without a colon (`inotify`) are ignored.
package struct ProcFields {
    private var values: [Substring: Substring] = [:]

    package init(_ line: Substring) {
        var pendingKey: Substring?
        for token in line.split(whereSeparator: { $0 == " " || $0 == "\t" }) {
            if let key = pendingKey {
                values[key] = token
                pendingKey = nil
            } else if let colon = token.firstIndex(of: ":") {
                let key = token[..<colon], value = token[token.index(after: colon)...]
                if value.isEmpty { pendingKey = key } else { values[key] = value }
            }
        }
    }

    package func hex(_ key: Substring) -> UInt64? { values[key].flatMap { UInt64($0, radix: 16) } }
    package func decimal(_ key: Substring) -> UInt64? { values[key].flatMap { UInt64($0) } }
    /// A value of hex digit pairs (`f_handle:a1b2…`) as bytes; nil when absent or malformed.
    package func bytes(_ key: Substring) -> [UInt8]? {
        guard let value = values[key], value.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var index = value.startIndex
        while index < value.endIndex {
            let next = value.index(index, offsetBy: 2)
            guard let byte = UInt8(value[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return bytes
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs.
    package var trimmingSpaces: Substring {
        let isBlank = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let first = utf8.firstIndex(where: { !isBlank($0) }), let last = utf8.lastIndex(where: { !isBlank($0) })
        else { return self[endIndex...] }
        return self[first...last]  // ASCII blanks: these are character boundaries
    }
}

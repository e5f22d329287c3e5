import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// TCP and UDP sockets over IPv4 and IPv6: listening, bound, and connected UDP. Each is created
/// in the husk (its network namespace and credentials), given the options that differ from a
/// fresh socket's through a copy of it, then bound, made to listen with its backlog, or
/// connected, by injection. Established TCP connections are rebuilt by TCP repair (TcpConnections.swift).
extension Tracer {
    func createInetSocket(_ descriptor: OpenDescriptor, _ state: SocketRestoreState, area: WorkArea) throws -> UInt64 {
        let name = "the \(state.typeName) socket of fd \(descriptor.fd)"
        let fd = try createSocket(descriptor, state, name: name)
        try setOptions(fd, state, name: name)
        // A connection that ended has given its port back: not bound (RestorePlan).
        if let local = state.local, state.endedPeer == nil {
            try connectOrBind(fd, to: local, state, name: name, call: SyscallNumber.bind, area: area)
        }
        if state.listening {
            try huskCall("listening on \(name) (backlog \(state.backlog ?? 0))", SyscallNumber.listen, [fd, UInt64(state.backlog ?? 0)])
        }
        if let peer = state.peer, state.type == Linux.SOCK_DGRAM {
            try connectOrBind(fd, to: peer, state, name: name, call: SyscallNumber.connect, area: area)
        }
        return fd
    }

    /// `socket(domain, type | SOCK_NONBLOCK? | SOCK_CLOEXEC?, protocol)` in the husk (the
    /// socket may land on its own number, with no move to carry close-on-exec).
    func createSocket(_ descriptor: OpenDescriptor, _ state: SocketRestoreState, name: String) throws -> UInt64 {
        // SOCK_NONBLOCK and SOCK_CLOEXEC are O_NONBLOCK and O_CLOEXEC.
        let flags = descriptor.flags & UInt32(Linux.O_NONBLOCK | Linux.O_CLOEXEC)
        return try huskCall("creating \(name)", SyscallNumber.socket,
                            [UInt64(state.domain), UInt64(UInt32(state.type) | flags), UInt64(state.protocol)])
    }

    /// Sets each recorded option whose value differs from the one the new socket has: a
    /// default left alone stays a default (a buffer size set explicitly turns off the kernel's
    /// autotuning, so setting it needlessly would change the socket's behaviour).
    func setOptions(_ fd: UInt64, _ state: SocketRestoreState, name: String) throws {
        guard !state.options.isEmpty else { return }
        try withCopy(of: fd, step: "setting the options of \(name)") { copy throws(Errno) in
            for recorded in state.options {
                guard let option = RestorableSocketOption.named(level: recorded.level, name: recorded.name) else { continue }
                guard try Kernel.socketOption(copy, level: option.level, name: option.name) != recorded.value else { continue }
                let setting = option.setting(recorded.value)
                try Kernel.setSocketOption(copy, level: option.level, name: setting.name, value: setting.value)
            }
        }
    }

    /// `bind` or `connect` by injection, the address passed in the scratch area: a unix path is
    /// resolved against the husk's working directory, as the original's was.
    func connectOrBind(_ fd: UInt64, to address: SocketAddress, _ state: SocketRestoreState, name: String, call: Int,
                       area: WorkArea) throws {
        let verb = call == SyscallNumber.bind ? "binding" : "connecting"
        guard let bytes = Kernel.encodeAddress(address, domain: state.domain) else {
            throw StepFailure(step: "\(verb) \(name) to \(address)", detail: "not an address of its family")
        }
        try bytes.withUnsafeBytes { try huskWrite("passing the address \(address)", area.scratch + WorkArea.text, $0) }
        try huskCall("\(verb) \(name) to \(address)", call, [fd, area.scratch + WorkArea.text, UInt64(bytes.count)])
    }

    /// Runs `body` on a copy of the husk's descriptor `fd` (`pidfd_getfd`): the same open file.
    func withCopy(of fd: UInt64, step: String, _ body: (FileDescriptor) throws(Errno) -> Void) throws {
        do {
            let pidfd = try Kernel.pidfdOpen(pid)
            defer { try? pidfd.close() }
            let copy = try Kernel.pidfdGetfd(pidfd, Int32(fd))
            defer { try? copy.close() }
            try body(copy)
        } catch {
            throw StepFailure(step: step, detail: "\(error)")
        }
    }
}

extension RestorePlan {
    /// Why an inet socket cannot be restored, or nil. Listening and never-connected TCP sockets,
    /// and UDP sockets bound or connected, can.
    static func inetSocketProblem(_ state: SocketRestoreState) -> String? {
        if let problem = optionProblem(state) { return problem }
        for address in [state.local, state.peer].compactMap({ $0 }) where Kernel.encodeAddress(address, domain: state.domain) == nil {
            return "its address \(address) is not one of its family"
        }
        // Only TCP and UDP: the image names the protocol, and a hostile one must not make the
        // husk open another kind of socket.
        guard (state.type == Linux.SOCK_STREAM && [0, 6].contains(state.protocol))
                || (state.type == Linux.SOCK_DGRAM && [0, 17].contains(state.protocol)) else {
            return "inet sockets of type \(state.type), protocol \(state.protocol) (raw, SCTP, ICMP…) are not restorable"
        }
        switch state.type {
        case Linux.SOCK_STREAM:
            let tcpState = state.tcpState.map { SocketState.name($0, connectionOriented: true) } ?? "unknown"
            if state.listening, state.tcpState == 10 { return nil }
            // Never connected (bound or not), or a connection that ended (`endedPeer`): a new
            // socket in CLOSE; the application's next read or write fails, as it would have.
            if !state.listening, state.tcpState == 7, state.peer == nil { return nil }
            let between = [state.local, state.peer].map { $0?.description ?? "*" }.joined(separator: " → ")
            return "a TCP connection \(between) (\(tcpState)) whose repair state the image does not hold (only ESTABLISHED and CLOSE-WAIT connections are captured, by images of this version)"
        default:
            return nil
        }
    }

    /// Options restore does not know would be set blindly into a husk: refused.
    static func optionProblem(_ state: SocketRestoreState) -> String? {
        for option in state.options where RestorableSocketOption.named(level: option.level, name: option.name) == nil {
            return "socket option \(option.label) (level \(option.level), \(option.name)) is not one restore sets"
        }
        return nil
    }
}

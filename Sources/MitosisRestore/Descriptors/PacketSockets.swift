import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Packet sockets (`AF_PACKET`) where simple: type, protocol, the interface bound to — by name,
/// so that another host's numbering is used — and the options of `RestorableSocketOption.all`
/// (`PACKET_VERSION`, `PACKET_AUXDATA`…). A socket with a ring (its frames live in memory
/// mapped from the socket) or in a fanout group (shared with other sockets) is refused.
extension Tracer {
    func createPacketSocket(_ descriptor: OpenDescriptor, _ state: SocketRestoreState, area: WorkArea) throws -> UInt64 {
        let name = "the packet socket of fd \(descriptor.fd)"
        // Created for the protocol it receives (`SO_PROTOCOL` reads 0 for packet sockets; the
        // bound one is `sll_protocol`): an unbound socket is then hooked to every interface for
        // it, as the original was.
        var made = state
        made.protocol = Int32(state.packet?.protocolNumber ?? 0)
        let fd = try createSocket(descriptor, made, name: name)
        try setOptions(fd, state, name: name)
        guard let binding = state.packet, let interface = binding.interface else { return fd }
        // The index of the interface with that name where the socket now lives (the husk's
        // network namespace), asked through the new socket itself.
        var index: Int32 = 0
        try withCopy(of: fd, step: "finding the interface \(interface) for \(name)") { copy throws(Errno) in
            index = try Kernel.interfaceIndex(copy, name: interface)
        }
        let bytes = Kernel.packetAddress(protocolNumber: binding.protocolNumber, interfaceIndex: index)
        try bytes.withUnsafeBytes { try huskWrite("passing the address of \(interface)", area.scratch + WorkArea.text, $0) }
        try huskCall("binding \(name) to \(interface) (index \(index) here, \(binding.interfaceIndex) at the checkpoint)",
                     SyscallNumber.bind, [fd, area.scratch + WorkArea.text, UInt64(bytes.count)])
        return fd
    }
}

extension RestorePlan {
    /// Why a packet socket cannot be restored, or nil.
    static func packetSocketProblem(_ state: SocketRestoreState) -> String? {
        if let problem = optionProblem(state) { return problem }
        guard state.type == Linux.SOCK_RAW || state.type == Linux.SOCK_DGRAM else {
            return "packet sockets of type \(state.type) are not restorable"
        }
        guard let binding = state.packet else { return "the image does not hold the packet socket's binding (taken before packet sockets were captured)" }
        if binding.ring {
            return "it has a PACKET_RX_RING/PACKET_TX_RING ring (frames in memory mapped from the socket); packet rings are not restorable"
        }
        if binding.fanout != 0 {
            return "it is in PACKET_FANOUT group \(binding.fanout & 0xffff) (type \(binding.fanout >> 16 & 0xff)); fanout groups are not restorable"
        }
        if binding.interfaceIndex != 0, binding.interface == nil {
            return "it is bound to interface \(binding.interfaceIndex), whose name the checkpoint could not read"
        }
        if let name = binding.interface, name.isEmpty || name.utf8.count >= 16 || name.contains("/") {
            return "its interface name \(name) is not one an interface can have"
        }
        return nil
    }
}

import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace

/// Signalfds: their mask and flags. (Signals they would read are pending signals of the
/// process or thread, which the thaw queues again.)
extension Tracer {
    func createSignalfd(_ descriptor: OpenDescriptor, _ state: SignalfdState, area: WorkArea) throws -> UInt64 {
        try huskWrite("passing the signal mask of fd \(descriptor.fd)", area.scratch + WorkArea.text, value: state.mask)
        let flags = descriptor.flags & UInt32(Linux.O_NONBLOCK | Linux.O_CLOEXEC)  // SFD_NONBLOCK, SFD_CLOEXEC
        return try huskCall("creating the signalfd of fd \(descriptor.fd)", SyscallNumber.signalfd4,
                            [UInt64.max /* -1: a new one */, area.scratch + WorkArea.text, 8, UInt64(flags)])
    }
}

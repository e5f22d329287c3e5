import MitosisImage
import MitosisKernel
import MitosisModel
import MitosisTrace
import SystemPackage

/// Eventfds, with their counter.
extension Tracer {
    /// An eventfd with its flags and counter. `eventfd2` takes only 32 bits of initial value,
    /// so the counter is added by a write of the full 64-bit value.
    func createEventfd(_ descriptor: OpenDescriptor, area: WorkArea) throws -> UInt64 {
        guard let state = descriptor.eventfd else { throw StepFailure(step: "restoring fd \(descriptor.fd)", detail: "no eventfd state") }
        let flags = (descriptor.flags & UInt32(Linux.O_CLOEXEC | Linux.O_NONBLOCK)) | (state.semaphore == true ? 1 /* EFD_SEMAPHORE */ : 0)
        let fd = try huskCall("creating the eventfd of fd \(descriptor.fd)", SyscallNumber.eventfd2, [0, UInt64(flags)])
        if state.counter > 0 {
            try huskWrite("passing the eventfd counter", area.scratch + WorkArea.text, value: state.counter)
            try huskCall("setting the counter of fd \(descriptor.fd)", SyscallNumber.write, [fd, area.scratch + WorkArea.text, 8])
        }
        return fd
    }
}

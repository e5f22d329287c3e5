import MitosisKernel

/// The system call numbers `Tracer.injectSyscall` takes, defined by the kernel layer from the C
/// headers and offered here so that clients of `import Mitosis` need not import that layer.
public typealias SyscallNumber = MitosisKernel.SyscallNumber

import CMitosis
import Foundation
import Glibc
import MitosisModel
import SystemPackage

/// One message peeked from a unix socket's receive queue, with what came with it.
package struct PeekedUnixMessage {
    package var bytes: Data
    /// The descriptors it carries, installed in this process by the peek (close-on-exec): the
    /// caller owns and closes them.
    package var rights: [FileDescriptor]
    package var credentials: UnixCredentials?
}

extension Kernel {
    /// Every message waiting in a unix socket's receive queue, left in place, with its
    /// descriptors (`SCM_RIGHTS`, installed in *this* process, never in the socket's owner) and
    /// credentials. Nil when the queue holds more than `limit` bytes.
    ///
    /// The queue is walked with `SO_PEEK_OFF`: the head with the offset off (a zero-length head
    /// datagram is found even when something peeked it before), the rest from the bytes seen so
    /// far. `SO_PASSCRED` is on for the walk, so every message comes with credentials (a
    /// zero-length datagram is told from the end of the queue by them); the socket's own peek
    /// offset and `SO_PASSCRED` are put back. A byte stream's reads never go past a message
    /// with descriptors, nor glue messages with different credentials: each element is such a
    /// run. Limits (the kernel's): where a run glued a writer's messages before the one carrying
    /// descriptors, no peek shows where that one starts (a peek ending anywhere before it still
    /// brings its descriptors); and a zero-length datagram behind the head that anything peeked
    /// before is skipped by every peek at an offset, and so not seen.
    /// The corresponding system call is `recvmsg(MSG_PEEK)`.
    package static func peekMessages(_ fd: FileDescriptor, stream: Bool, limit: Int) throws(Errno) -> [PeekedUnixMessage]? {
        let savedOffset = try socketOption(fd, level: SOL_SOCKET, name: SO_PEEK_OFF)
        let savedPasscred = try socketOption(fd, level: SOL_SOCKET, name: SO_PASSCRED)
        if savedPasscred == 0 { try setSocketOption(fd, level: SOL_SOCKET, name: SO_PASSCRED, value: 1) }
        defer {
            if savedPasscred == 0 { try? setSocketOption(fd, level: SOL_SOCKET, name: SO_PASSCRED, value: 0) }
            try? setSocketOption(fd, level: SOL_SOCKET, name: SO_PEEK_OFF, value: savedOffset)
        }
        var messages: [PeekedUnixMessage] = []
        var complete = false
        defer { if !complete { for message in messages { for right in message.rights { try? right.close() } } } }
        // A stream peek that runs out of buffer before a message carrying descriptors still
        // brings them (the kernel looks past the end for them): the buffer holds the whole
        // queue (`SIOCINQ`). A datagram's full length comes back with `MSG_TRUNC`: the buffer
        // grows for a longer one.
        let queued = try queuedBytes(fd)
        if stream, queued > limit { return nil }
        var buffer = [UInt8](repeating: 0, count: stream ? queued + 1 : 64 << 10)
        var total = 0
        // Bounded: a peer outside the frozen process may keep writing (a buffer that must grow
        // again and again); the queue is then not kept (nil) rather than the freeze never ending.
        var peeks = 0
        while true {
            peeks += 1
            if peeks > 4096 { return nil }
            try setSocketOption(fd, level: SOL_SOCKET, name: SO_PEEK_OFF, value: messages.isEmpty ? -1 : Int32(total))
            let (count, peeked) = try peek(fd, into: &buffer, size: buffer.count, stream: stream)
            guard var message = peeked else { break }
            if count > limit - total {
                for right in message.rights { try? right.close() }
                return nil
            }
            if count >= buffer.count {
                // A datagram longer than the buffer: peeked again whole.
                for right in message.rights { try? right.close() }
                buffer = [UInt8](repeating: 0, count: count + 1)
                continue
            }
            message.bytes = Data(buffer[..<count])
            messages.append(message)
            total += count
        }
        complete = true
        return messages
    }

    /// The bytes queued (a datagram socket: its first datagram's). The corresponding call is `ioctl(SIOCINQ)`.
    private static func queuedBytes(_ fd: FileDescriptor) throws(Errno) -> Int {
        var count: Int32 = 0
        try check { ioctl(fd.rawValue, UInt(MITOSIS_SIOCINQ), &count) }
        return Int(count)
    }

    /// One peek at the socket's current peek offset: the byte count and what came, or nil at
    /// the end of the queue (`EAGAIN`, or no message: a datagram socket's end gives 0 bytes and
    /// no credentials, a zero-length datagram gives credentials; a stream's end gives 0 bytes).
    /// A datagram's full length is asked for (`MSG_TRUNC`).
    private static func peek(_ fd: FileDescriptor, into buffer: inout [UInt8], size: Int, stream: Bool) throws(Errno) -> (Int, PeekedUnixMessage?) {
        var ancillary = mitosis_unix_ancillary()
        let count = buffer.withUnsafeMutableBytes {
            mitosis_unix_peek(fd.rawValue, $0.baseAddress, size, stream ? 0 : Int32(MSG_TRUNC), &ancillary)
        }
        let rights = withUnsafeBytes(of: ancillary.rights) { raw in
            (0..<Int(ancillary.rights_count)).map { FileDescriptor(rawValue: raw.load(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
        if count == -Int(EAGAIN) { return (0, nil) }
        if count < 0 { throw Errno(rawValue: Int32(-count)) }
        if ancillary.flags & Int32(MSG_CTRUNC) != 0 {
            // Descriptors this process could not take (its own limit): the queue cannot be kept whole.
            for right in rights { try? right.close() }
            throw .tooManyOpenFiles
        }
        // A byte stream has no zero-length messages: 0 is its end, and a stream whose peer has
        // closed answers 0 *with* credentials (SO_PASSCRED: the kernel attaches empty ones),
        // which a walk taking it for a message would peek again for ever.
        if count == 0 && (stream || ancillary.has_credentials == 0) && rights.isEmpty { return (0, nil) }
        let credentials = ancillary.has_credentials != 0
            ? UnixCredentials(pid: ancillary.pid, uid: ancillary.uid, gid: ancillary.gid) : nil
        return (count, PeekedUnixMessage(bytes: Data(), rights: rights, credentials: credentials))
    }

    /// Sends one message on a unix socket, with descriptors (`SCM_RIGHTS`) and credentials
    /// (`SCM_CREDENTIALS`; a pid other than this process's needs `CAP_SYS_ADMIN`, other ids
    /// `CAP_SETUID`/`CAP_SETGID`). Never waits: a full queue is `EAGAIN`. A byte stream's bytes
    /// may go in several calls; the descriptors go with the first. With `rightsOnLastByte` (a
    /// byte stream's run, whose carrying message's start no peek shows), the bytes before the
    /// last go first without them: a read of the run's leading part brings no descriptor, a read
    /// reaching its end brings them, as with the message the application most likely sent.
    /// The corresponding system call is `sendmsg`.
    package static func sendMessage(_ fd: FileDescriptor, _ bytes: Data, rights: [FileDescriptor],
                                    credentials: UnixCredentials?, rightsOnLastByte: Bool = false) throws(Errno) {
        if rightsOnLastByte, !rights.isEmpty, bytes.count > 1 {
            try sendMessage(fd, bytes.prefix(bytes.count - 1), rights: [], credentials: credentials)
            try sendMessage(fd, bytes.suffix(1), rights: rights, credentials: credentials)
            return
        }
        var offset = 0
        var first = true
        let numbers = rights.map(\.rawValue)
        repeat {
            let sent = bytes.withUnsafeBytes { raw in
                numbers.withUnsafeBufferPointer { list in
                    mitosis_unix_send(fd.rawValue, raw.baseAddress.map { $0 + offset }, raw.count - offset,
                                      first ? list.baseAddress : nil, first ? Int32(list.count) : 0,
                                      credentials == nil ? 0 : 1, credentials?.pid ?? 0, credentials?.uid ?? 0, credentials?.gid ?? 0)
                }
            }
            if sent < 0 { throw Errno(rawValue: Int32(-sent)) }
            offset += sent
            first = false
        } while offset < bytes.count
    }
}

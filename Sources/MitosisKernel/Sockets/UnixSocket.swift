import CMitosis
import MitosisModel

/// UNIX sockets (`unix_diag`): names, peers, pending connections, queues.
extension SockDiag {
    static let unixDump = Dump(name: "unix", request: mitosis_sockdiag_unix_request, decoder: mitosis_decode_unix,
                               list: \.unix, convert: unixSocket)

    package static func unixSocket(_ raw: mitosis_unix_socket) -> UnixSocket {
        var raw = raw
        var name: String?
        var abstract = false
        if raw.name_length > 0 {
            let bytes = withUnsafeBytes(of: &raw.name) { Array($0.prefix(Int(raw.name_length))) }
            if bytes[0] == 0 {
                abstract = true
                name = "@" + String(decoding: bytes.dropFirst(), as: UTF8.self)
            } else {
                name = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        let pending = raw.pending.map { Array(UnsafeBufferPointer(start: $0, count: Int(raw.pending_count))).map(UInt64.init) } ?? []
        return UnixSocket(
            type: socketTypeName(raw.type),
            state: SocketState.name(raw.state, connectionOriented: false),
            inode: UInt64(raw.inode), cookie: raw.cookie, name: name, abstract: abstract,
            peerInode: raw.has_peer != 0 ? UInt64(raw.peer) : nil, pendingConnections: pending,
            receiveQueue: raw.receive_queue < 0 ? nil : UInt32(raw.receive_queue),
            sendQueue: raw.send_queue < 0 ? nil : UInt32(raw.send_queue),
            shutdown: SocketShutdown(mask: max(raw.shutdown, 0)),
            uid: raw.uid < 0 ? nil : UInt32(raw.uid))
    }
}

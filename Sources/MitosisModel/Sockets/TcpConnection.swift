import Foundation

/// An established TCP connection as TCP repair mode reads it: enough to rebuild the same
/// connection in another socket (another process, another host) without a handshake, so that
/// the peer never notices. Captured while the owner is frozen (`TcpRepair.capture` in
/// MitosisKernel), restored by `TcpRepair.restore`, in the way CRIU's soccr does.
///
/// An image is hostile input: `problems()` lists everything a restore must refuse (unknown
/// family, an address that does not parse, port 0, queues longer than any kernel would hold,
/// window scales above 14…), and `TcpRepair.restore` refuses a connection with any.
public struct TcpConnection: Codable, Sendable, Equatable {
    public var family: InetFamily
    /// This end (the process's socket) and the peer, addresses as text (`127.0.0.1`, `::1`).
    public var local: SocketEndpoint
    public var remote: SocketEndpoint
    /// `TCP_QUEUE_SEQ` of the send queue: the sequence number after the last byte written
    /// (`write_seq`). The send queue's first byte is `sendSequence - sendQueue.count`.
    public var sendSequence: UInt32
    /// `TCP_QUEUE_SEQ` of the receive queue: the next sequence number expected from the peer
    /// (`rcv_nxt`). The receive queue's first byte is `receiveSequence - receiveQueue.count`.
    public var receiveSequence: UInt32
    /// Every byte written and not yet acknowledged by the peer, oldest first: the part sent
    /// (restored in repair mode, as if on the wire already) followed by `unsentCount` bytes never
    /// sent (written after repair mode is off, as the application would have).
    public var sendQueue: Data
    public var unsentCount: UInt32
    /// Bytes received and acknowledged to the peer, not yet read by the application.
    public var receiveQueue: Data
    public var options: Options
    /// `TCP_TIMESTAMP`: the socket's timestamp clock, when timestamps are on.
    public var timestamp: UInt32?
    /// `TCP_REPAIR_WINDOW` (Linux 4.8+); nil when the kernel could not say.
    public var window: Window?
    public var socketOptions: SocketOptions
    /// `O_NONBLOCK` of the open file.
    public var nonBlocking: Bool
    /// The peer has closed its side (its FIN received: CLOSE-WAIT), or the application shut its
    /// receiving side: reads give end of file once `receiveQueue` is read. The restore rebuilds
    /// the connection ESTABLISHED with the FIN acknowledged (`receiveSequence` counts it) and
    /// shuts its receiving side, which is all the application can tell of CLOSE-WAIT. nil (older
    /// images) is false.
    public var peerClosed: Bool?

    public init(family: InetFamily, local: SocketEndpoint, remote: SocketEndpoint, sendSequence: UInt32, receiveSequence: UInt32,
                sendQueue: Data, unsentCount: UInt32, receiveQueue: Data, options: Options, timestamp: UInt32?,
                window: Window?, socketOptions: SocketOptions, nonBlocking: Bool, peerClosed: Bool? = nil) {
        self.peerClosed = peerClosed
        self.family = family
        self.local = local
        self.remote = remote
        self.sendSequence = sendSequence
        self.receiveSequence = receiveSequence
        self.sendQueue = sendQueue
        self.unsentCount = unsentCount
        self.receiveQueue = receiveQueue
        self.options = options
        self.timestamp = timestamp
        self.window = window
        self.socketOptions = socketOptions
        self.nonBlocking = nonBlocking
    }

    /// What the two ends negotiated at the handshake (`TCP_REPAIR_OPTIONS` puts them back).
    public struct Options: Codable, Sendable, Equatable {
        /// The MSS clamp (`TCP_MAXSEG` read in repair mode).
        public var maxSegmentSize: UInt32
        /// Window scaling shifts (0…14) of this end's sends and receives, nil when not negotiated.
        public var sendWindowScale: UInt8?
        public var receiveWindowScale: UInt8?
        public var selectiveAcknowledgments: Bool
        public var timestamps: Bool

        public init(maxSegmentSize: UInt32, sendWindowScale: UInt8?, receiveWindowScale: UInt8?,
                    selectiveAcknowledgments: Bool, timestamps: Bool) {
            self.maxSegmentSize = maxSegmentSize
            self.sendWindowScale = sendWindowScale
            self.receiveWindowScale = receiveWindowScale
            self.selectiveAcknowledgments = selectiveAcknowledgments
            self.timestamps = timestamps
        }
    }

    /// The kernel's `struct tcp_repair_window`.
    public struct Window: Codable, Sendable, Equatable {
        public var sendWl1: UInt32
        public var sendWindow: UInt32
        public var maxWindow: UInt32
        public var receiveWindow: UInt32
        public var receiveWup: UInt32

        public init(sendWl1: UInt32, sendWindow: UInt32, maxWindow: UInt32, receiveWindow: UInt32, receiveWup: UInt32) {
            self.sendWl1 = sendWl1
            self.sendWindow = sendWindow
            self.maxWindow = maxWindow
            self.receiveWindow = receiveWindow
            self.receiveWup = receiveWup
        }
    }

    /// The socket options an application sets on a connection and notices when they are gone.
    public struct SocketOptions: Codable, Sendable, Equatable {
        public var noDelay: Bool
        public var cork: Bool
        public var keepAlive: Bool
        /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL` (seconds) and `TCP_KEEPCNT`.
        public var keepIdle: Int32
        public var keepInterval: Int32
        public var keepCount: Int32
        /// `SO_REUSEADDR` as the application set it (repair mode overrides it while on).
        public var reuseAddress: Bool
        /// `SO_SNDBUF` and `SO_RCVBUF` as the kernel reports them (twice what was asked): the
        /// restored queues must fit, and a fresh socket starts with small buffers.
        public var sendBuffer: Int32
        public var receiveBuffer: Int32

        public init(noDelay: Bool, cork: Bool, keepAlive: Bool, keepIdle: Int32, keepInterval: Int32, keepCount: Int32,
                    reuseAddress: Bool, sendBuffer: Int32, receiveBuffer: Int32) {
            self.noDelay = noDelay
            self.cork = cork
            self.keepAlive = keepAlive
            self.keepIdle = keepIdle
            self.keepInterval = keepInterval
            self.keepCount = keepCount
            self.reuseAddress = reuseAddress
            self.sendBuffer = sendBuffer
            self.receiveBuffer = receiveBuffer
        }
    }

    /// The most a queue may hold in an image: far above the kernel's largest socket buffers
    /// (`tcp_wmem`/`tcp_rmem` maxima are 4–6 MiB by default), far below memory trouble.
    public static let maximumQueueBytes = 64 << 20

    /// `local → remote`, as `ss` prints a connection.
    public var name: String { "\(local) → \(remote)" }

    /// Everything that makes this connection impossible to rebuild, one phrase each; empty when
    /// it is sound. Checked before any socket is touched.
    public func problems() -> [String] {
        var found: [String] = []
        for (role, endpoint) in [("local", local), ("remote", remote)] {
            if InetAddress.bytes(endpoint.address, family: family) == nil {
                found.append("\(role) address '\(endpoint.address.prefix(64))' is not an \(family) address")
            }
            if endpoint.port == 0 { found.append("\(role) port is 0") }
        }
        if sendQueue.count > Self.maximumQueueBytes { found.append("send queue of \(sendQueue.count) bytes exceeds \(Self.maximumQueueBytes)") }
        if receiveQueue.count > Self.maximumQueueBytes { found.append("receive queue of \(receiveQueue.count) bytes exceeds \(Self.maximumQueueBytes)") }
        if Int(unsentCount) > sendQueue.count { found.append("\(unsentCount) unsent bytes but a send queue of \(sendQueue.count)") }
        if options.maxSegmentSize == 0 || options.maxSegmentSize > 65535 { found.append("MSS \(options.maxSegmentSize) is out of 1…65535") }
        for scale in [options.sendWindowScale, options.receiveWindowScale].compactMap({ $0 }) where scale > 14 {
            found.append("window scale \(scale) is above 14")
        }
        if (options.sendWindowScale == nil) != (options.receiveWindowScale == nil) { found.append("only one window scale is set") }
        if options.timestamps != (timestamp != nil) { found.append("timestamps option and timestamp value disagree") }
        for (name, size) in [("send", socketOptions.sendBuffer), ("receive", socketOptions.receiveBuffer)]
        where size < 0 || Int(size) > 2 * Self.maximumQueueBytes {
            found.append("\(name) buffer of \(size) bytes is out of 0…\(2 * Self.maximumQueueBytes)")
        }
        return found
    }
}

/// Internet addresses as text, parsed without libc (the model makes no system calls).
public enum InetAddress {
    /// The 4 (IPv4) or 16 (IPv6) bytes of `text` in network order, nil when it is not a valid
    /// address of `family`. IPv6 accepts `::` compression and a trailing dotted IPv4 part.
    public static func bytes(_ text: String, family: InetFamily) -> [UInt8]? {
        switch family {
        case .ipv4: return ipv4(Substring(text))
        case .ipv6: return ipv6(text)
        }
    }

    private static func ipv4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            // As inet_pton: 1–3 decimal digits, no leading zero.
            guard (1...3).contains(part.count), part.allSatisfy({ ("0"..."9").contains($0) }),
                  part.count == 1 || part.first != "0", let value = UInt8(part) else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    private static func ipv6(_ text: String) -> [UInt8]? {
        guard text.count <= 45, text.allSatisfy({ $0.isASCII }) else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String, allowIPv4: Bool) -> [UInt8]? {
            if part.isEmpty { return [] }
            var bytes: [UInt8] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if allowIPv4 && index == pieces.count - 1 && piece.contains(".") {
                    guard let v4 = ipv4(piece) else { return nil }
                    bytes += v4
                } else {
                    guard (1...4).contains(piece.count), let value = UInt16(piece, radix: 16) else { return nil }
                    bytes += [UInt8(value >> 8), UInt8(value & 0xff)]
                }
            }
            return bytes
        }
        if halves.count == 1 {
            guard let all = groups(text, allowIPv4: true), all.count == 16 else { return nil }
            return all
        }
        guard let head = groups(halves[0], allowIPv4: false), let tail = groups(halves[1], allowIPv4: true),
              head.count + tail.count <= 14 else { return nil }
        return head + [UInt8](repeating: 0, count: 16 - head.count - tail.count) + tail
    }
}

/// An established connection of a checkpointed process: the socket (by inode, as in
/// `socket:[N]`; every descriptor of it is restored from this one record) and its state.
public struct CapturedConnection: Codable, Sendable, Equatable {
    public var inode: UInt64
    public var connection: TcpConnection

    public init(inode: UInt64, connection: TcpConnection) {
        self.inode = inode
        self.connection = connection
    }
}

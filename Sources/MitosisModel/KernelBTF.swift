/// The running kernel's type information (`/sys/kernel/btf/vmlinux`, in the BTF format): where a
/// member lies inside a kernel struct, and the id of a kernel function. A BPF program assembled
/// at run time reads kernel structs at these offsets, so it fits whatever kernel it runs on.
///
/// Only what those look-ups need is kept: each type's kind, name and where its record starts.
/// Malformed input gives nil (from `init`) or nil look-ups, never a read outside the bytes.
public struct KernelBTF: Sendable {
    private let bytes: [UInt8]
    /// Start of the string section.
    private let strings: Int
    private let stringsEnd: Int
    /// Per type id (index; id 0 is `void`): kind, name offset, record start.
    private var kinds: [UInt8] = [0]
    private var names: [UInt32] = [0]
    private var records: [Int] = [0]
    /// The ids of the structs: what `member` looks names up among (a few thousand of the
    /// ~150,000 types, looked up a few dozen times per program load).
    private var structures: [Int] = []

    private enum Kind: UInt8 {
        case integer = 1, pointer, array, structure, union, enumeration, forward, typedef, volatile, constant, restrict
        case function, functionPrototype, variable, dataSection, float, declarationTag, typeTag, enumeration64
    }

    public init?(_ bytes: [UInt8]) {
        self.bytes = bytes
        func u32(_ at: Int) -> UInt32? {
            guard at >= 0, at + 4 <= bytes.count else { return nil }
            return UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        // Header: magic 0xeb9f (little-endian), version, flags, hdr_len, type_off, type_len, str_off, str_len.
        guard bytes.count >= 24, bytes[0] == 0x9f, bytes[1] == 0xeb, let headerLength = u32(4),
              let typeOffset = u32(8), let typeLength = u32(12), let stringOffset = u32(16), let stringLength = u32(20)
        else { return nil }
        let typesStart = Int(headerLength) + Int(typeOffset), typesEnd = typesStart + Int(typeLength)
        strings = Int(headerLength) + Int(stringOffset)
        stringsEnd = strings + Int(stringLength)
        guard typesEnd <= bytes.count, stringsEnd <= bytes.count else { return nil }
        var at = typesStart
        while at < typesEnd {
            guard let name = u32(at), let info = u32(at + 4), let kind = Kind(rawValue: UInt8((info >> 24) & 0x1f)) else { return nil }
            let count = Int(info & 0xffff)
            if kind == .structure { structures.append(kinds.count) }
            kinds.append(kind.rawValue)
            names.append(name)
            records.append(at)
            at += 12
            switch kind {
            case .integer, .variable, .declarationTag: at += 4
            case .array: at += 12
            case .structure, .union, .dataSection, .enumeration64: at += 12 * count
            case .enumeration, .functionPrototype: at += 8 * count
            default: break
            }
        }
        guard at == typesEnd else { return nil }
    }

    /// The id of the kernel function `name` (a BPF tracing program attaches by it).
    public func functionID(_ name: String) -> UInt32? {
        typeID(named: name, kind: .function).map(UInt32.init)
    }

    /// Byte offset and size of the member at `path` (through anonymous structs and unions, and
    /// through embedded structs for a path of several names) inside struct `name`; nil when
    /// absent or a bit field.
    public func member(_ name: String, _ path: String...) -> (offset: Int, size: Int)? {
        guard var type = typeID(named: name, kind: .structure) else { return nil }
        var offset = 0
        for member in path {
            guard let (memberType, bits) = find(member, in: type), bits % 8 == 0 else { return nil }
            offset += bits / 8
            type = resolve(memberType)
        }
        guard let size = size(of: type) else { return nil }
        return (offset, size)
    }

    private func u32(_ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    private func nameEquals(_ offset: UInt32, _ name: [UInt8]) -> Bool {
        let start = strings + Int(offset)
        guard start + name.count < stringsEnd else { return false }
        for index in name.indices where bytes[start + index] != name[index] { return false }
        return bytes[start + name.count] == 0
    }

    private func typeID(named name: String, kind: Kind) -> Int? {
        let wanted = Array(name.utf8)
        if kind == .structure { return structures.first { nameEquals(names[$0], wanted) } }
        return kinds.indices.first { kinds[$0] == kind.rawValue && nameEquals(names[$0], wanted) }
    }

    /// Type id and bit offset of member `name` of struct or union `type`, looking inside anonymous members.
    private func find(_ name: String, in type: Int) -> (type: Int, bits: Int)? {
        guard kinds[type] == Kind.structure.rawValue || kinds[type] == Kind.union.rawValue else { return nil }
        let wanted = Array(name.utf8)
        let info = u32(records[type] + 4)
        let bitfields = info >> 31 == 1
        for index in 0..<Int(info & 0xffff) {
            let at = records[type] + 12 + 12 * index
            let memberName = u32(at), memberType = Int(u32(at + 4)), rawOffset = u32(at + 8)
            guard memberType < kinds.count else { return nil }
            if bitfields && rawOffset >> 24 != 0 { continue }  // a bit field
            let bits = Int(bitfields ? rawOffset & 0xffffff : rawOffset)
            if memberName == 0, let inner = find(name, in: resolve(memberType)) { return (inner.type, bits + inner.bits) }
            if memberName != 0, nameEquals(memberName, wanted) { return (memberType, bits) }
        }
        return nil
    }

    /// Through typedefs and qualifiers to the type itself.
    private func resolve(_ type: Int) -> Int {
        var type = type, steps = 0
        while steps < 32, let kind = Kind(rawValue: kinds[type]), [.typedef, .volatile, .constant, .restrict, .typeTag].contains(kind) {
            let next = Int(u32(records[type] + 8))
            guard next < kinds.count else { return 0 }
            type = next
            steps += 1
        }
        return type
    }

    private func size(of type: Int) -> Int? {
        switch Kind(rawValue: kinds[type]) {
        case .pointer: return 8
        case .integer, .structure, .union, .enumeration, .enumeration64, .float: return Int(u32(records[type] + 8))
        default: return nil
        }
    }
}

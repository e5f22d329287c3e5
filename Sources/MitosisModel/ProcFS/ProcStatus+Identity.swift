extension ProcStatus {
    /// `Uid:` or `Gid:`: real, effective, saved and filesystem ids; nil when absent or malformed.
    public func credentials(_ key: String) -> Credentials? {
        guard let ids = self[key]?.split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap({ UInt32($0) }),
              ids.count == 4
        else { return nil }
        return Credentials(real: ids[0], effective: ids[1], saved: ids[2], filesystem: ids[3])
    }

    /// `Groups:`: the supplementary group ids (empty when none, or when the line is missing).
    public var groups: [UInt32] {
        self["Groups"]?.split(whereSeparator: { $0 == "\t" || $0 == " " }).compactMap { UInt32($0) } ?? []
    }

    /// `CapInh:` … `CapAmb:` verbatim; nil when one is missing.
    public var capabilities: Capabilities? {
        guard let inheritable = self["CapInh"], let permitted = self["CapPrm"], let effective = self["CapEff"],
              let bounding = self["CapBnd"], let ambient = self["CapAmb"]
        else { return nil }
        return Capabilities(inheritable: inheritable, permitted: permitted, effective: effective,
                            bounding: bounding, ambient: ambient)
    }
}

/// `/proc/sysvipc/shm`, `/proc/sysvipc/sem` and `/proc/sysvipc/msg`: a header line naming the
/// columns, then one row per object. Columns are found by name, so kernels that add columns
/// (shm's `rss` and `swap`) parse the same. Keys print as signed decimal, `perms` as octal.
public enum ProcSysvIPC {
    /// Shared memory segments; `attachedAt` is left empty (it comes from a process's maps).
    public static func sharedMemory(_ text: String) -> [SysVSharedMemory] {
        rows(text).compactMap { row in
            guard let key = row.int32("key"), let id = row.int32("shmid"), let perms = row.octal("perms"),
                  let size = row.uint64("size"), let cpid = row.int32("cpid"), let lpid = row.int32("lpid"),
                  let nattch = row.uint64("nattch"), let uid = row.uint32("uid"), let gid = row.uint32("gid")
            else { return nil }
            return SysVSharedMemory(key: key, shmid: id, perms: perms, size: size, creatorPid: cpid, lastPid: lpid,
                                    attachCount: nattch, uid: uid, gid: gid, attachedAt: [])
        }
    }

    /// Semaphore sets; `lastOperationPids` is left empty (it comes from `semctl(GETPID)`).
    public static func semaphores(_ text: String) -> [SysVSemaphoreSet] {
        rows(text).compactMap { row in
            guard let key = row.int32("key"), let id = row.int32("semid"), let perms = row.octal("perms"),
                  let count = row.uint64("nsems").flatMap({ Int(exactly: $0) }),
                  let uid = row.uint32("uid"), let gid = row.uint32("gid")
            else { return nil }
            return SysVSemaphoreSet(key: key, semid: id, perms: perms, count: count, uid: uid, gid: gid, lastOperationPids: [])
        }
    }

    public static func messageQueues(_ text: String) -> [SysVMessageQueue] {
        rows(text).compactMap { row in
            guard let key = row.int32("key"), let id = row.int32("msqid"), let perms = row.octal("perms"),
                  let bytes = row.uint64("cbytes"), let messages = row.uint64("qnum"),
                  let lspid = row.int32("lspid"), let lrpid = row.int32("lrpid"),
                  let uid = row.uint32("uid"), let gid = row.uint32("gid")
            else { return nil }
            return SysVMessageQueue(key: key, msqid: id, perms: perms, bytes: bytes, messages: messages,
                                    lastSendPid: lspid, lastReceivePid: lrpid, uid: uid, gid: gid)
        }
    }

    /// One row: its words under the header's column names.
    package struct Row {
        package let columns: [Substring: Substring]
        package func int32(_ name: Substring) -> Int32? { columns[name].flatMap { Int32($0) } }
        package func uint32(_ name: Substring) -> UInt32? { columns[name].flatMap { UInt32($0) } }
        package func uint64(_ name: Substring) -> UInt64? { columns[name].flatMap { UInt64($0) } }
        package func octal(_ name: Substring) -> UInt32? { columns[name].flatMap { UInt32($0, radix: 8) } }
    }

    /// The rows whose word count matches the header's.
    package static func rows(_ text: String) -> [Row] {
        let lines = text.split(separator: "\n")
        guard let header = lines.first?.split(separator: " ") else { return [] }
        return lines.dropFirst().compactMap { line in
            let words = line.split(separator: " ")
            guard words.count == header.count else { return nil }
            return Row(columns: Dictionary(zip(header, words), uniquingKeysWith: { first, _ in first }))
        }
    }
}

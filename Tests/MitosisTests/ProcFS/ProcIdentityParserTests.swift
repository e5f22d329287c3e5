import Testing
@testable import MitosisModel

@Suite("identity, limits, cgroup and SysV IPC parsers")
struct ProcIdentityParserTests {
    static let statTail = "S 1 1234 1234 34816 1234 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 200"

    @Test("stat: a comm with spaces and parentheses ends at the last ')'")
    func statComm() throws {
        let stat = try #require(ProcStat(parsing: "4321 (a) (b) \(Self.statTail)\n"))
        #expect(stat.pid == 4321 && stat.comm == "a) (b" && stat.state == "S" && stat.ppid == 1)
        #expect(stat.threadCount == 3 && stat.startTime == 98765)
        #expect(try #require(ProcStat(parsing: "7 ()) \(Self.statTail)")).comm == ")")
        #expect(try #require(ProcStat(parsing: "7 ( ) ) \(Self.statTail)")).comm == " ) ")
    }

    @Test("stat: truncated or garbage text is nil")
    func statHostile() {
        for text in ["", "4321", "4321 (cat", "4321 (cat) S 1", "x (cat) \(Self.statTail)",
                     "4321 (cat) S x 1234 1234 34816 1234 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765",
                     "4321 (cat) S 1 1234 1234 34816 1234 4194560 100 0 0 0 1 2 0 0 20 0 99999999999999999999 0 98765 1 2"] {
            #expect(ProcStat(parsing: text) == nil, "\(text)")
        }
    }

    @Test("status: credentials, groups, capabilities")
    func status() throws {
        let status = ProcStatus(parsing: """
        Name:\ta) (b
        Umask:\t0027
        Uid:\t1000\t1001\t1002\t1003
        Gid:\t100\t101\t102\t103
        Groups:\t4 24 27 
        CapInh:\t0000000000000000
        CapPrm:\t000001fffeffffff
        CapEff:\t000001fffeffffff
        CapBnd:\t000001ffffffffff
        CapAmb:\t0000000000000000
        """)
        #expect(status.credentials("Uid") == Credentials(real: 1000, effective: 1001, saved: 1002, filesystem: 1003))
        #expect(status.credentials("Gid") == Credentials(real: 100, effective: 101, saved: 102, filesystem: 103))
        #expect(status.groups == [4, 24, 27])
        #expect(status["Name"] == "a) (b" && status["Umask"] == "0027")
        #expect(status.capabilities == Capabilities(inheritable: "0000000000000000", permitted: "000001fffeffffff",
                                                    effective: "000001fffeffffff", bounding: "000001ffffffffff",
                                                    ambient: "0000000000000000"))
        let hostile = ProcStatus(parsing: "Uid:\t1\t2\nGid:\tx\ty\tz\tw\nGroups:\t\nCapInh:\t0\n")
        #expect(hostile.credentials("Uid") == nil && hostile.credentials("Gid") == nil)
        #expect(hostile.groups == [] && hostile.capabilities == nil)
        // Keys as written, values without the spaces and tabs around them, lines without a colon skipped.
        let odd = ProcStatus(parsing: "\n\nno colon\n A : \t b c \t\n:empty key\nx:\ny:a:b\nSeccomp:\t0")
        #expect(odd.fields.map(\.key) == [" A ", "", "x", "y", "Seccomp"])
        #expect(odd.fields.map(\.value) == ["b c", "empty key", "", "a:b", "0"])
    }

    @Test("cmdline and environ: NUL-separated, with or without the final NUL")
    func nulLists() {
        #expect(ProcNulList.parse(Array("/bin/sleep\u{0}10\u{0}".utf8)) == ["/bin/sleep", "10"])
        #expect(ProcNulList.parse(Array("a b\u{0}\u{0}c".utf8)) == ["a b", "", "c"])
        #expect(ProcNulList.parse(Array("nginx: worker process".utf8)) == ["nginx: worker process"])
        #expect(ProcNulList.parse([]) == [])
        #expect(ProcNulList.parse([0]) == [""])
        #expect(ProcNulList.parse([0xff, 0xfe, 0]) == ["\u{FFFD}\u{FFFD}"])
    }

    @Test("limits: unlimited, units, names with spaces; junk skipped")
    func limits() {
        let text = """
        Limit                     Soft Limit           Hard Limit           Units     
        Max cpu time              unlimited            unlimited            seconds   
        Max open files            1024                 524288               files     
        Max nice priority         0                    0                    
        Max realtime timeout      unlimited            unlimited            us        
        Max junk                  many                 more                 things
        Max overflow              99999999999999999999 1                    bytes
        12                        1
        """
        #expect(ProcLimits.parse(text) == [
            ResourceLimit(name: "Max cpu time", soft: nil, hard: nil, units: "seconds"),
            ResourceLimit(name: "Max open files", soft: 1024, hard: 524288, units: "files"),
            ResourceLimit(name: "Max nice priority", soft: 0, hard: 0, units: nil),
            ResourceLimit(name: "Max realtime timeout", soft: nil, hard: nil, units: "us"),
        ])
    }

    @Test("cgroup: v1 controller lists, v2 line, colons in paths")
    func cgroup() {
        let text = "12:cpu,cpuacct:/user.slice\n1:name=systemd:/a:b\n0::/\nbroken\nx:y:z\n"
        #expect(ProcCgroup.parse(text) == [
            CgroupEntry(hierarchy: 12, controllers: ["cpu", "cpuacct"], path: "/user.slice"),
            CgroupEntry(hierarchy: 1, controllers: ["name=systemd"], path: "/a:b"),
            CgroupEntry(hierarchy: 0, controllers: [], path: "/"),
        ])
    }

    @Test("namespace links")
    func namespaces() {
        #expect(ProcNamespace.parse(type: "net", link: "net:[4026531833]") == NamespaceInfo(type: "net", inode: 4026531833))
        #expect(ProcNamespace.parse(type: "pid_for_children", link: "pid:[4026531836]") == nil)
        #expect(ProcNamespace.parse(type: "net", link: "net:[x]") == nil)
        #expect(ProcNamespace.parse(type: "net", link: "") == nil)
    }

    @Test("sysvipc tables: columns by header name, octal perms, negative keys; bad rows skipped")
    func sysvipc() {
        let shm = """
               key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
                 0          5  1600                16384  4242  4243      1     0     0     0     0 1700000000          0 1700000000                  4096                     0
        -559038737         6   644                 4096     1     1      0  1000  1000  1000  1000          0          0 1700000000                     0                     0
                 0          7   600
                 x          8   600                 4096     1     1      0  1000  1000  1000  1000          0          0 1700000000                     0                     0
        """
        #expect(ProcSysvIPC.sharedMemory(shm) == [
            SysVSharedMemory(key: 0, shmid: 5, perms: 0o1600, size: 16384, creatorPid: 4242, lastPid: 4243,
                             attachCount: 1, uid: 0, gid: 0, attachedAt: []),
            SysVSharedMemory(key: -559038737, shmid: 6, perms: 0o644, size: 4096, creatorPid: 1, lastPid: 1,
                             attachCount: 0, uid: 1000, gid: 1000, attachedAt: []),
        ])
        let sem = """
               key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime
                 0          3   600          2     0     0     0     0 1700000000 1700000000
        """
        #expect(ProcSysvIPC.semaphores(sem) == [
            SysVSemaphoreSet(key: 0, semid: 3, perms: 0o600, count: 2, uid: 0, gid: 0, lastOperationPids: []),
        ])
        let msg = """
               key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime
                 0          2   600           5          1  4242     0     0     0     0     0 1700000000          0 1700000000
        """
        #expect(ProcSysvIPC.messageQueues(msg) == [
            SysVMessageQueue(key: 0, msqid: 2, perms: 0o600, bytes: 5, messages: 1, lastSendPid: 4242, lastReceivePid: 0, uid: 0, gid: 0),
        ])
        #expect(ProcSysvIPC.sharedMemory("").isEmpty && ProcSysvIPC.semaphores("garbage\n1 2 3").isEmpty)
        #expect(ProcSysvIPC.messageQueues(String(repeating: "x ", count: 50_000)).isEmpty)
    }
}

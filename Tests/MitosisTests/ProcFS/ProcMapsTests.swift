import Testing
@testable import MitosisModel

@Suite("ProcMaps parser")
struct ProcMapsTests {
    // Real lines, padded by the kernel to column 73.
    static let maps = """
    5579965f7000-5579965f9000 r--p 00000000 fe:00 253911                     /usr/bin/cat
    557a9c9f2000-557a9c9fd000 rw-p 00000000 00:00 0 
    557a9d000000-557a9d021000 rw-p 00000000 00:00 0                          [heap]
    7f0c40000000-7f0c40001000 rw-s 00000000 00:01 1034                       /dev/zero (deleted)
    7f0c40001000-7f0c40002000 rw-s 00000000 00:01 65551                      /SYSV0000abcd (deleted)
    7f0c40002000-7f0c40003000 rw-s 00000000 00:01 2051                       /memfd:scratch (deleted)
    7f0c40003000-7f0c40004000 r--s 00001000 fe:01 777                        /tmp/a file with spaces
    7f0c40004000-7f0c40005000 r--p 00000000 fe:01 778                        /tmp/line\\012break (deleted)
    7f0c40005000-7f0c40006000 rw-p 00000000 00:00 0                          [anon:arena one]
    7f0c40006000-7f0c40007000 r--p 00000000 00:00 0                          [vvar]
    7f2c7fd24000-7f2c7fd26000 r-xp 00000000 00:00 0                          [vdso]
    7f2c7fd26000-7f2c7fd27000 r--p 00000000 00:00 0                          [uprobes]
    7fff091fc000-7fff0921d000 rw-p 00000000 00:00 0                          [stack]
    ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
    """

    @Test("every field of every line, and the kind of each")
    func fields() {
        let mappings = ProcMaps.parse(Self.maps)
        #expect(mappings.count == 14)
        #expect(mappings[0] == MemoryMapping(
            start: 0x5579965f7000, end: 0x5579965f9000, perms: "r--p", offset: 0,
            device: DeviceNumber(major: 0xfe, minor: 0), inode: 253911, path: "/usr/bin/cat", kind: .file, deleted: false))
        #expect(mappings[0].length == 0x2000)
        #expect(mappings[1].path == nil)
        #expect(mappings[1].kind == .anonymous)
        #expect(mappings[1].isReadable && mappings[1].isWritable && !mappings[1].isExecutable && !mappings[1].isShared)
        #expect(mappings.map(\.kind) == [
            .file, .anonymous, .heap, .sharedAnonymous, .sysvSharedMemory, .file, .file, .file,
            .anonymous, .vvar, .vdso, .special, .stack, .vsyscall,
        ])
        #expect(mappings[3].deleted && mappings[3].path == "/dev/zero" && mappings[3].isShared)
        #expect(mappings[4].inode == 65551 && mappings[4].path == "/SYSV0000abcd")
        #expect(mappings[5].path == "/memfd:scratch" && mappings[5].deleted)
        #expect(mappings[6].path == "/tmp/a file with spaces" && !mappings[6].deleted && mappings[6].offset == 0x1000)
        #expect(mappings[6].device == DeviceNumber(major: 254, minor: 1))
        #expect(mappings[7].path == "/tmp/line\nbreak" && mappings[7].deleted)
        #expect(mappings[8].path == "[anon:arena one]")
        #expect(mappings[11].path == "[uprobes]")
        #expect(mappings[13].start == 0xffffffffff600000 && mappings[13].perms == "--xp")
        #expect(mappings.allSatisfy { $0.sizes == nil && $0.vmFlags == nil })
    }

    @Test("spaces beyond the kernel's padding belong to the path; long prefixes get one space")
    func paddingAndLeadingSpaces() {
        // Path "  two leading spaces": padding to column 72, one space, then the path.
        let padded = "7f0c40003000-7f0c40004000 r--p 00000000 fe:01 777" + String(repeating: " ", count: 24) + "  two"
        #expect(ProcMaps.parse(padded).first?.path == "  two")
        // A huge inode pushes the prefix past the padding: exactly two spaces separate it from the path.
        let long = "7f0c40003000-7f0c40004000 r--p 00000000 fe:01 18446744073709551615123456 /x"
        #expect(ProcMaps.parse(long).isEmpty)  // inode overflows UInt64: skipped, not crashed
        let wide = "ffffffffff600000-ffffffffff601000 r--p 0000000000000000 fe:01 18446744073709551615  /x y"
        #expect(ProcMaps.parse(wide).first?.path == "/x y")
        // Hand-written fixtures with a single space still parse.
        #expect(ProcMaps.parse("1000-2000 r--p 00000000 08:01 5 /lib/a.so").first?.path == "/lib/a.so")
    }

    @Test("smaps sizes and VmFlags attach to the header before them")
    func smaps() throws {
        let text = """
        55ba5751a000-55ba5751c000 r--p 00000000 fe:00 253911                     /usr/bin/cat
        Size:                  8 kB
        KernelPageSize:        4 kB
        MMUPageSize:           4 kB
        Rss:                   8 kB
        Pss:                   6 kB
        Pss_Dirty:             0 kB
        Shared_Clean:          4 kB
        Shared_Dirty:          0 kB
        Private_Clean:         4 kB
        Private_Dirty:         0 kB
        Referenced:            8 kB
        Anonymous:             0 kB
        KSM:                   0 kB
        LazyFree:              0 kB
        AnonHugePages:         0 kB
        ShmemPmdMapped:        0 kB
        FilePmdMapped:         0 kB
        Shared_Hugetlb:        0 kB
        Private_Hugetlb:       0 kB
        Swap:                 12 kB
        SwapPss:               0 kB
        Locked:                0 kB
        FutureThing:           3 kB
        THPeligible:           0
        VmFlags: rd mr mw me 
        7fff091fc000-7fff0921d000 rw-p 00000000 00:00 0                          [stack]
        Size:                132 kB
        Anonymous:            16 kB
        VmFlags: rd wr mr mw me gd ac 
        """
        let mappings = ProcMaps.parse(text)
        #expect(mappings.count == 2)
        let sizes = try #require(mappings[0].sizes)
        #expect(sizes.size == 8192 && sizes.kernelPageSize == 4096 && sizes.rss == 8192 && sizes.pss == 6144)
        #expect(sizes.sharedClean == 4096 && sizes.privateClean == 4096 && sizes.swap == 12288)
        #expect(sizes.other == [NamedSize(name: "FutureThing", bytes: 3072)])
        #expect(mappings[0].vmFlags == ["rd", "mr", "mw", "me"])
        #expect(mappings[1].sizes?.size == 132 * 1024 && mappings[1].sizes?.anonymous == 16 * 1024)
        #expect(mappings[1].vmFlags == ["rd", "wr", "mr", "mw", "me", "gd", "ac"])
    }

    @Test("hostile input: garbage, truncation, overflow, orphan detail lines never crash")
    func hostile() {
        let text = """
        Rss: 4 kB
        zzzz-2000 r--p 00000000 fe:00 1 /bad/start
        1000-2000 rwzp 00000000 fe:00 1 /bad/perms
        1000-2000 r--p 0000000g fe:00 1 /bad/offset
        1000-2000 r--p 00000000 fe00 1 /bad/device
        1000-2000 r--p 00000000 fe:00 -1 /bad/inode
        1000-2000 r--p 00000000 fe:00
        Size: 4 kB
        1000-2000 r--p 00000000 fe:00 7 /good
        Size: 99999999999999999999 kB
        Rss: 18446744073709551615 kB
        Pss: x kB
        Swap: 4 MB
        VmFlags:
        3000-
        """
        let mappings = ProcMaps.parse(text)
        #expect(mappings.count == 1)
        #expect(mappings.first?.path == "/good")
        #expect(mappings.first?.sizes == nil)  // every size line was malformed
        #expect(mappings.first?.vmFlags == [])
        #expect(ProcMaps.parse("").isEmpty)
        #expect(ProcMaps.parse("\n\n\n").isEmpty)
        let longPath = "/" + String(repeating: "d", count: 100_000)
        #expect(ProcMaps.parse("1000-2000 r--p 00000000 fe:00 7 \(longPath)").first?.path == longPath)
        #expect(ProcMaps.parse("1000-2000 r--p 00000000 00:00 0 [SYSV").first?.kind == .special)
        #expect(ProcMaps.parse("1000-2000 rw-s 00000000 00:01 1 /SYSVzzzzzzzz (deleted)").first?.kind == .file)
    }

    @Test("device numbers decode like glibc major()/minor()")
    func deviceNumbers() {
        #expect(DeviceNumber(encoded: 0xfe01) == DeviceNumber(major: 254, minor: 1))
        #expect(DeviceNumber(encoded: 0x10_882c) == DeviceNumber(major: 136, minor: 300))
        #expect(DeviceNumber(encoded: (259 << 8) | 5) == DeviceNumber(major: 259, minor: 5))
    }
}

// mitosis-image-fuzz: a mutational fuzzer for the checkpoint image reader.
//
// It checkpoints a real child (a shell) into a three-image seed chain with the library, then,
// batch after batch, writes copies of the chain with one hostile mutation each (bytes, lengths,
// file types, JSON leaves and index fields resealed behind valid checksums, clean_file paths to
// a secret file, a FIFO, /proc, devices) and runs the reader entry points on them — open (what
// `images show` does), the chain, `verifyChain`, and reads of every page state — in a worker
// process. A worker that dies of a signal is a crash, one silent for `--case-timeout` seconds a
// hang, a read returning the secret file's bytes a read outside the image, a case that raises
// the worker's peak RSS past 512 MiB a huge allocation, a case that leaves a descriptor open a
// leak. Offending cases are copied to `--corpus`. Deterministic for a given `--seed-number`.
//
//   mitosis-image-fuzz [--seconds N] [--mutations N] [--seed-number S] [--corpus DIR] [--work DIR] [--compressed]
//                                        (--compressed: the seed chain's page data is zstd frames, and
//                                        flipped frame bytes are resealed half the time so that they
//                                        reach the decompressor behind valid file checksums)
//   mitosis-image-fuzz --replay DIR…      runs the reader on kept cases (chains as the fuzzer wrote them)
//   mitosis-image-fuzz --corpus-replay DIR  applies each `*.json` entry of DIR (a hostile edit, see
//                                           `CorpusEntry`) to a fresh seed chain and checks the outcome
import Foundation
import Glibc
import Mitosis
import MitosisModel

// MARK: Options

struct Options {
    var seconds = 30.0
    var mutations = Int.max
    var seed: UInt64 = 1
    var corpus: String?
    /// Thousands of small files per batch: tmpfs (/dev/shm) where there is one.
    var work = (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/" : NSTemporaryDirectory()) + "mitosis-image-fuzz-\(getpid())"
    var batch = 100
    var caseTimeout = 10.0
    var worker: String?
    var replay: [String] = []
    var corpusReplay: String?
    var compressed = false

    init(_ arguments: [String]) {
        var rest = arguments[...]
        func value() -> String {
            guard let next = rest.popFirst() else { fatal("missing value") }
            return next
        }
        while let argument = rest.popFirst() {
            switch argument {
            case "--seconds": seconds = Double(value()) ?? seconds
            case "--mutations": mutations = Int(value()) ?? mutations
            case "--seed-number": seed = UInt64(value()) ?? seed
            case "--corpus": corpus = value()
            case "--work": work = value()
            case "--batch": batch = max(1, Int(value()) ?? batch)
            case "--case-timeout": caseTimeout = Double(value()) ?? caseTimeout
            case "--worker": worker = value()
            case "--replay": replay = Array(rest); rest = []
            case "--corpus-replay": corpusReplay = value()
            case "--compressed": compressed = true
            default: fatal("unknown argument \(argument)")
            }
        }
    }
}

func fatal(_ message: String) -> Never {
    FileHandle.standardError.write(Data("mitosis-image-fuzz: \(message)\n".utf8))
    exit(2)
}

extension SplitMix64 {
    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(next() % UInt64(n)) }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

// MARK: Images as bytes

typealias Image = [String: [UInt8]]
let files = ["COMMIT", "manifest.json", "pages.index", "pages.data"]

func hex(_ bytes: [UInt8]) -> String { Checksum.hex(Checksum.xxh64(bytes)) }

/// Recomputes what an honest writer would have: the index trailer (when asked), the manifest's
/// file digests and the commit record. The reader's own checks are then all that stands between
/// a hostile manifest or index and the code that uses it.
func reseal(_ image: inout Image, manifest: Any? = nil, index: Bool = false) {
    if index, var bytes = image["pages.index"], bytes.count >= 8 {
        bytes.removeLast(8)
        withUnsafeBytes(of: Checksum.xxh64(bytes).littleEndian) { bytes.append(contentsOf: $0) }
        image["pages.index"] = bytes
    }
    let indexBytes = image["pages.index"] ?? [], data = image["pages.data"] ?? []
    var object = manifest ?? (try? JSONSerialization.jsonObject(with: Data(image["manifest.json"] ?? [])))
    if var dictionary = object as? [String: Any] {
        dictionary["files"] = ["pages.index": ["size": indexBytes.count, "xxh64": hex(indexBytes)],
                               "pages.data": ["size": data.count, "xxh64": hex(data)]]
        object = dictionary
    }
    if let object, let json = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed]) {
        image["manifest.json"] = [UInt8](json) + [0x0A]
    }
    let id = ((object as? [String: Any])?["id"] as? String) ?? "x"
    var text = "mitosis-checkpoint 1\nid \(id)\n"
    for name in ["manifest.json", "pages.index", "pages.data"] {
        let bytes = image[name] ?? []
        text += "file \(name) \(bytes.count) \(hex(bytes))\n"
    }
    image["COMMIT"] = Array(text.utf8) + Array("end \(hex(Array(text.utf8)))\n".utf8)
}

// MARK: Mutations

/// A mutated chain, written as a directory of images named like the seed's.
struct Case {
    var images: [Image]
    /// Special files to create instead of regular ones: (image, name, kind).
    var specials: [(Int, String, String)] = []
    /// A sparse length for an image's pages.data (written with ftruncate, not bytes).
    var sparseData: (Int, Int)?
    var label = ""
}

struct Mutator {
    var random: SplitMix64
    let seed: [Image]
    let secret: String
    let fifo: String
    var compressed = false

    var hostilePaths: [String] { [secret, fifo, "/etc/shadow", "/proc/version", "/proc/self/mem", "/dev/zero", "/dev/urandom", "/", "", "relative", "../1", "."] }

    mutating func hostileValue() -> Any {
        let values: [Any] = [
            -1, 0, 1, 4095, 4096, Int.max, Int.min, 1 << 62, Int64.max - 4095, UInt64(1) << 63, UInt64.max, UInt64.max - 4095, 1e308, -0.5,
            "", String(repeating: "A", count: 5000), NSNull(), [Any](), [String: Any](), "stored", "inherited", "clean_file",
            "never_touched", "full", "incremental", "\u{0}", "é\u{FFFF}", true,
        ] + hostilePaths
        return random.pick(values)
    }

    mutating func make() -> Case {
        var c = Case(images: seed)
        let image = random.below(4) == 0 ? random.below(seed.count) : seed.count - 1
        let kind = random.below(100)
        switch kind {
        case 0..<14: flip(&c, image)
        case 14..<20: truncate(&c, image)
        case 20..<24: extend(&c, image)
        case 24..<30: special(&c, image)
        case 30..<58: jsonLeaves(&c, image)
        case 58..<72: mapping(&c, image)
        case 72..<84: indexField(&c, image)
        case 84..<92: commitText(&c, image)
        case 92..<97: chain(&c)
        default: sparse(&c, image)
        }
        return c
    }

    mutating func flip(_ c: inout Case, _ image: Int) {
        let file = random.pick(files)
        guard var bytes = c.images[image][file], !bytes.isEmpty else { return }
        for _ in 0...random.below(3) {
            let at = random.below(bytes.count)
            bytes[at] = random.below(2) == 0 ? bytes[at] ^ UInt8(1 + random.below(255)) : random.pick([0, 0xFF, 0x7F, 0x80, 0x0A, 0x20, 0x39, 0x22, 0x7B])
        }
        c.images[image][file] = bytes
        c.label = "flip \(file) of \(image)"
        if compressed, file == "pages.data", random.below(2) == 0 {
            reseal(&c.images[image])
            c.label += ", resealed"
        }
    }

    mutating func truncate(_ c: inout Case, _ image: Int) {
        let file = random.pick(files)
        let bytes = c.images[image][file] ?? []
        let length = random.below(bytes.count + 1)
        c.images[image][file] = Array(bytes.prefix(length))
        c.label = "truncate \(file) of \(image) at \(length)"
    }

    mutating func extend(_ c: inout Case, _ image: Int) {
        let file = random.pick(files)
        let count = random.pick([1, 7, 4096])
        c.images[image][file, default: []] += (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        c.label = "extend \(file) of \(image) by \(count)"
    }

    mutating func special(_ c: inout Case, _ image: Int) {
        let name = random.pick(files + ["INCOMPLETE"])
        let kind = random.pick(["fifo", "directory", "symlink-zero", "symlink-passwd", "symlink-dangling", "missing", "empty"])
        c.specials.append((image, name, kind))
        c.label = "\(name) of \(image) as \(kind)"
    }

    mutating func manifest(_ c: Case, _ image: Int) -> Any? {
        try? JSONSerialization.jsonObject(with: Data(c.images[image]["manifest.json"] ?? []))
    }

    /// Every leaf of a JSON value, as a key path.
    func leaves(_ value: Any, _ path: [Any] = []) -> [[Any]] {
        if let dictionary = value as? [String: Any] { return dictionary.keys.sorted().flatMap { leaves(dictionary[$0]!, path + [$0]) } }
        if let array = value as? [Any] { return array.indices.flatMap { leaves(array[$0], path + [$0]) } }
        return [path]
    }

    func setting(_ root: Any, _ path: ArraySlice<Any>, _ value: Any) -> Any {
        guard let key = path.first else { return value }
        if var dictionary = root as? [String: Any], let key = key as? String {
            dictionary[key] = setting(dictionary[key] as Any, path.dropFirst(), value)
            return dictionary
        }
        if var array = root as? [Any], let index = key as? Int, array.indices.contains(index) {
            array[index] = setting(array[index], path.dropFirst(), value)
            return array
        }
        return root
    }

    mutating func jsonLeaves(_ c: inout Case, _ image: Int) {
        guard var root = manifest(c, image) else { return }
        // Thread states and the process model are large and never trusted for reading; aim at the rest.
        let all = leaves(root).filter { ($0.first as? String).map { !["threads", "process", "descriptors"].contains($0) } ?? true }
        guard !all.isEmpty else { return }
        var labels: [String] = []
        for _ in 0...random.below(3) {
            let path = random.pick(all)
            root = setting(root, path[...], hostileValue())
            labels.append(path.map { "\($0)" }.joined(separator: "."))
        }
        reseal(&c.images[image], manifest: root)
        c.label = "json \(labels.joined(separator: ",")) of \(image)"
    }

    /// Whole-mapping edits: every range one state, a hostile path, the identity of the secret
    /// file forged (everything but the content checksum), a huge or overlapping mapping.
    mutating func mapping(_ c: inout Case, _ image: Int) {
        guard var root = manifest(c, image) as? [String: Any], var mappings = root["mappings"] as? [[String: Any]], !mappings.isEmpty else { return }
        let number = random.below(mappings.count)
        var mapping = mappings[number]
        let start = (mapping["start"] as? NSNumber)?.uint64Value ?? 0, end = (mapping["end"] as? NSNumber)?.uint64Value ?? 0
        let action = random.below(6)
        switch action {
        case 0:
            mapping["pages"] = [["start": start, "end": end, "state": random.pick(["stored", "inherited", "clean_file", "never_touched"])]]
        case 1, 2:
            let path = random.pick(hostilePaths)
            mapping["path"] = path
            mapping["offset"] = random.pick([0, 4096, 1 << 40])
            mapping["pages"] = [["start": start, "end": end, "state": "clean_file"]]
            var st = stat()
            if action == 2, stat(path, &st) == 0 {
                let chunks = max(0, (Int(st.st_size) + (1 << 20) - 1) >> 20)
                mapping["file"] = ["device": st.st_dev, "inode": st.st_ino, "size": st.st_size,
                                   "mtime_ns": Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec),
                                   "chunk_xxh64": (0..<min(chunks, 64)).map { _ in Checksum.hex(random.next()) }]
            }
        case 3:
            mapping["end"] = random.pick([start + (1 << 46), UInt64.max - 4095, start])
        case 4:
            mappings.append(mapping)
        default:
            mapping.removeValue(forKey: random.pick(["file", "path", "pages", "offset", "start"]))
        }
        mappings[number] = mapping
        root["mappings"] = mappings
        reseal(&c.images[image], manifest: root)
        c.label = "mapping \(number) action \(action) of \(image)"
    }

    mutating func indexField(_ c: inout Case, _ image: Int) {
        guard var bytes = c.images[image]["pages.index"], bytes.count >= 40 else { return }
        let fields = (bytes.count - 8) / 8
        let field = random.below(fields)
        let values: [UInt64] = [0, 1, 4095, 4096, 4096 * 256, 4096 * 257, 1 << 31, 1 << 63, UInt64.max, UInt64.max - 4095,
                                UInt64(image == 0 ? 0 : 1), UInt64((c.images[image]["pages.data"] ?? []).count), random.next()]
        let value = random.pick(values)
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange((field * 8)..<(field * 8 + 8), with: $0) }
        c.images[image]["pages.index"] = bytes
        reseal(&c.images[image], index: true)
        c.label = "index field \(field) = \(value) of \(image)"
    }

    mutating func commitText(_ c: inout Case, _ image: Int) {
        guard let bytes = c.images[image]["COMMIT"], let end = bytes.dropLast().lastIndex(of: 0x0A) else { return }
        var text = Array(bytes[...end])
        let at = random.below(text.count)
        switch random.below(4) {
        case 0: text[at] = random.pick([0x20, 0x0A, 0x30, 0x46, 0x66, 0x2D, 0x00, 0xFF, 0xC3])
        case 1: text.insert(contentsOf: Array(random.pick(["file pages.data 0 0000000000000000\n", "id x\n", "\r", "\n", "end 0\n"]).utf8), at: at)
        case 2: text.remove(at: at)
        default: text += text.prefix(random.below(text.count))
        }
        c.images[image]["COMMIT"] = text + Array("end \(hex(text))\n".utf8)
        c.label = "commit text at \(at) of \(image)"
    }

    /// Parent links: cycles, self-links, missing or swapped ancestors.
    mutating func chain(_ c: inout Case) {
        let newest = c.images.count - 1
        switch random.below(4) {
        case 0:
            guard var root = manifest(c, newest) as? [String: Any], var parent = root["parent"] as? [String: Any] else { return }
            parent["path"] = random.pick([".", "..", "../\(newest + 1)", "/", "../missing"] + hostilePaths)
            root["parent"] = parent
            reseal(&c.images[newest], manifest: root)
        case 1:
            // A full image pointing at the newest: parent ids forged so the cycle links.
            guard var root = manifest(c, 0) as? [String: Any], let newestRoot = manifest(c, newest) as? [String: Any] else { return }
            root["kind"] = "incremental"
            root["sequence"] = 3
            root["parent"] = ["path": "../\(newest + 1)", "id": newestRoot["id"] ?? ""]
            reseal(&c.images[0], manifest: root)
        case 2:
            c.images[newest - 1] = c.images[newest]
        default:
            c.specials.append((newest - 1, "", "missing-image"))
        }
        c.label = "chain edit"
    }

    /// F5's shape: a sparse pages.data and runs claiming it, resealed by hand.
    mutating func sparse(_ c: inout Case, _ image: Int, length: UInt64? = nil) {
        guard var root = manifest(c, image) as? [String: Any], var index = c.images[image]["pages.index"], index.count >= 72 else { return }
        let length = length ?? UInt64(random.pick([1 << 31, 1 << 20 + 4096, 1 << 40]))
        withUnsafeBytes(of: UInt64(1).littleEndian) { index.replaceSubrange(16..<24, with: $0) }
        index = Array(index[0..<64]) + [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: length.littleEndian) { index.replaceSubrange(40..<48, with: $0) }
        withUnsafeBytes(of: UInt64(0).littleEndian) { index.replaceSubrange(48..<56, with: $0) }
        c.images[image]["pages.index"] = index
        reseal(&c.images[image], index: true)
        root["page_index"] = ["runs": 1, "pages": Int(length / 4096), "bytes": length]
        let indexBytes = c.images[image]["pages.index"]!
        root["files"] = ["pages.index": ["size": indexBytes.count, "xxh64": hex(indexBytes)], "pages.data": ["size": length, "xxh64": "0000000000000000"]]
        // One mapping, all stored, over the one run.
        let start = index[32..<40].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        root["mappings"] = [["start": start, "end": start &+ length, "perms": "rw-p", "offset": 0, "kind": "anonymous",
                             "pages": [["start": start, "end": start &+ length, "state": "stored"]]]]
        let json: [UInt8] = (try? JSONSerialization.data(withJSONObject: root, options: [.sortedKeys])).map { [UInt8]($0) + [0x0A] } ?? []
        c.images[image]["manifest.json"] = json
        c.images[image]["pages.data"] = []
        c.sparseData = (image, Int(length))
        var text = "mitosis-checkpoint 1\nid \((root["id"] as? String) ?? "x")\n"
        text += "file manifest.json \(json.count) \(hex(json))\nfile pages.index \(indexBytes.count) \(hex(indexBytes))\n"
        text += "file pages.data \(length) 0000000000000000\n"
        c.images[image]["COMMIT"] = Array(text.utf8) + Array("end \(hex(Array(text.utf8)))\n".utf8)
        c.label = "sparse run of \(length) bytes in \(image)"
    }
}

// MARK: Writing cases

func write(_ c: Case, to directory: String) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for (number, image) in c.images.enumerated() {
        let path = directory + "/\(number + 1)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for (name, bytes) in image { try Data(bytes).write(to: URL(fileURLWithPath: path + "/" + name)) }
    }
    if let (image, length) = c.sparseData { _ = truncate(directory + "/\(image + 1)/pages.data", off_t(length)) }
    for (image, name, kind) in c.specials {
        let path = directory + "/\(image + 1)" + (name.isEmpty ? "" : "/" + name)
        try? FileManager.default.removeItem(atPath: path)
        switch kind {
        case "fifo": mkfifo(path, 0o600)
        case "directory": mkdir(path, 0o700)
        case "symlink-zero": symlink("/dev/zero", path)
        case "symlink-passwd": symlink("/etc/passwd", path)
        case "symlink-dangling": symlink("/nonexistent", path)
        case "empty": _ = FileManager.default.createFile(atPath: path, contents: Data())
        default: break
        }
    }
}

// MARK: Worker

/// Runs the reader on one case: open (as `images show` does), the chain, verify, and reads of
/// the first page of every range of the newest image. Returns an outcome class.
func exercise(_ directory: String, images: Int, secret: [UInt8]) -> String {
    let newest = directory + "/\(images)"
    let verified = CheckpointImage.verifyChain(newest)
    var outcome = verified.first.map { "refused: " + kind(of: $0) } ?? "verified"
    guard let image = try? CheckpointImage.open(newest) else { return outcome }
    _ = try? JSONOutput.string(image.manifest)
    guard let chain = try? image.chain() else { return outcome }
    var addresses: [UInt64] = []
    for mapping in image.manifest.mappings.prefix(64) {
        for range in mapping.pages.prefix(8) { addresses.append(range.start) }
    }
    var read = 0
    for address in addresses.prefix(256) {
        guard let bytes = try? chain.read(address: address, length: 4096) else { continue }
        if contains(bytes, secret) { return "OUTSIDE READ at 0x\(String(address, radix: 16))" }
        read += 1
    }
    if !verified.isEmpty, read > 0 { outcome += ", pages still read" }
    return outcome
}

/// An error's case name and the image file it names: `malformed manifest.json`.
func kind(of error: ImageError) -> String {
    guard let child = Mirror(reflecting: error).children.first else { return "\(error)" }
    let file = Mirror(reflecting: child.value).children.first { $0.label == "file" }?.value
    return (child.label ?? "?") + (file.map { " \($0)" } ?? "")
}

func contains(_ bytes: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, bytes.count >= needle.count else { return false }
    return (0...(bytes.count - needle.count)).contains { at in bytes[at] == needle[0] && bytes[at..<(at + needle.count)].elementsEqual(needle) }
}

func openDescriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0 }

func peakResidentKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return 0 }
    return Int(line.split(separator: " ")[1]) ?? 0
}

/// Worker mode: runs every case of a batch directory in order, printing one line per case
/// before (`start N`) and after (`done N outcome`), so that the parent can tell which case a
/// crash or hang belongs to.
func runWorker(_ batch: String) -> Never {
    let listing = (try? String(contentsOfFile: batch + "/cases", encoding: .utf8)) ?? ""
    let secret = Array(((try? String(contentsOfFile: batch + "/secret-marker", encoding: .utf8)) ?? "").utf8)
    for line in listing.split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard fields.count == 3, let images = Int(fields[2]) else { continue }
        say("start \(fields[0])")
        let descriptors = openDescriptors()
        // Reset the peak RSS so that it measures this case alone.
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
        var outcome = exercise(String(fields[1]), images: images, secret: secret)
        if peakResidentKiB() > 512 << 10 { outcome = "HUGE ALLOCATION \(peakResidentKiB()) KiB: " + outcome }
        if openDescriptors() != descriptors { outcome = "DESCRIPTOR LEAK: " + outcome }
        say("done \(fields[0]) \(outcome)")
    }
    exit(0)
}

/// One unbuffered line to the parent.
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

// MARK: Parent

/// A worker process over one batch; lines are read with a deadline.
final class Worker {
    let pid: pid_t
    private let output: Int32
    private var buffer: [UInt8] = []

    init(batch: String) throws {
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else { throw POSIXError(.EMFILE) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipe[0])
        // A crash is told by the signal; Swift's backtracer would take seconds per crash.
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let words: [String] = [executable, "--worker", batch]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let environment: [UnsafeMutablePointer<CChar>?] = [strdup("SWIFT_BACKTRACE=enable=no"), nil]
        defer { environment.forEach { free($0) } }
        let rc = posix_spawn(&child, executable, &actions, nil, argv, environment)
        close(pipe[1])
        guard rc == 0 else { close(pipe[0]); throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EINVAL) }
        pid = child
        output = pipe[0]
    }

    enum Output { case line(String), end, silent }

    /// The next line; `.end` when the worker closed its output (exited or died), `.silent`
    /// after `timeout` seconds without one.
    func next(timeout: Double) -> Output {
        while true {
            if let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return .line(line)
            }
            var poller = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(timeout * 1000))
            if ready == -1, errno == EINTR { continue }
            guard ready == 1 else { return .silent }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(output, &chunk, chunk.count)
            guard n > 0 else { return .end }
            buffer += chunk[..<n]
        }
    }

    /// Kills (if asked) and reaps the worker; returns its wait status and peak RSS in KiB.
    func finish(kill: Bool) -> (status: Int32, maxRSS: Int) {
        if kill { Glibc.kill(pid, SIGKILL) }
        close(output)
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) == -1 && errno == EINTR {}
        return (status, usage.ru_maxrss)
    }
}

/// Checkpoints a real child (a shell waiting on its stdin) into a three-image chain.
func makeSeed(in directory: String, compressed: Bool = false) async throws -> [Image] {
    let target = try LaunchedTarget(executable: "/bin/sh", arguments: ["-c", "echo READY; while read line; do :; done"])
    defer { target.stop() }
    try DirectorySink.createDirectories(directory)
    let session = try await CheckpointSession(pid: target.pid)
    for number in 1...3 {
        _ = try await session.checkpoint(to: DirectorySink(directory: directory + "/\(number)", compression: compressed ? .zstd : nil),
                                         parent: number == 1 ? nil : .previous(path: "../\(number - 1)"))
    }
    await session.stop()
    return try (1...3).map { number in
        var image: Image = [:]
        for file in files { image[file] = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory + "/\(number)/" + file))) }
        return image
    }
}

func describe(status: Int32) -> String {
    let signal = status & 0x7F
    return signal == 0 ? "exit \((status >> 8) & 0xFF)" : "signal \(signal)"
}

/// Returns whether it found nothing.
func runFuzzer(_ options: Options) async throws -> Bool {
    let fileManager = FileManager.default
    try? fileManager.removeItem(atPath: options.work)
    try fileManager.createDirectory(atPath: options.work, withIntermediateDirectories: true)
    defer { try? fileManager.removeItem(atPath: options.work) }
    if let corpus = options.corpus { try fileManager.createDirectory(atPath: corpus, withIntermediateDirectories: true) }
    let seed = try await makeSeed(in: options.work + "/seed", compressed: options.compressed)
    // A file no image may ever disclose, and a FIFO that would hang a careless reader.
    let marker = "MITOSIS-FUZZ-SECRET-\(options.seed)"
    let secret = options.work + "/secret"
    try Data(Array(repeating: marker, count: 200).joined().utf8).write(to: URL(fileURLWithPath: secret))
    let fifo = options.work + "/fifo"
    mkfifo(fifo, 0o600)
    var mutator = Mutator(random: SplitMix64(seed: options.seed), seed: seed, secret: secret, fifo: fifo, compressed: options.compressed)

    let clock = ContinuousClock()
    let started = clock.now
    var done = 0, batches = 0, maxRSS = 0
    var outcomes: [String: Int] = [:]
    var findings: [(kind: String, label: String)] = []
    while done < options.mutations, clock.now - started < .seconds(options.seconds) {
        let batch = options.work + "/batch"
        try? fileManager.removeItem(atPath: batch)
        try fileManager.createDirectory(atPath: batch, withIntermediateDirectories: true)
        try Data(marker.utf8).write(to: URL(fileURLWithPath: batch + "/secret-marker"))
        var cases: [(dir: String, label: String)] = []
        for number in 0..<min(options.batch, options.mutations - done) {
            let mutation = mutator.make()
            let dir = batch + "/case-\(number)"
            try write(mutation, to: dir)
            cases.append((dir, mutation.label))
        }
        var next = 0
        while next < cases.count {
            let listing = cases[next...].enumerated().map { "\(next + $0.offset) \($0.element.dir) \(seed.count)" }.joined(separator: "\n")
            try Data((listing + "\n").utf8).write(to: URL(fileURLWithPath: batch + "/cases"))
            let worker = try Worker(batch: batch)
            var current: Int?
            var hung = false
            reading: while true {
                let line: String
                switch worker.next(timeout: options.caseTimeout) {
                case .line(let text): line = text
                case .end: break reading
                case .silent: hung = true; break reading
                }
                let fields = line.split(separator: " ", maxSplits: 2)
                if fields.first == "start" { current = Int(fields[1]) }
                if fields.first == "done", let number = Int(fields[1]) {
                    let outcome = fields.count > 2 ? String(fields[2]) : ""
                    if outcome.hasPrefix("OUTSIDE") || outcome.hasPrefix("HUGE") || outcome.hasPrefix("DESCRIPTOR") {
                        findings.append((outcome, cases[number].label))
                        keep(cases[number].dir, options.corpus, name: "finding-\(options.seed)-\(done + number)")
                    }
                    outcomes[String(outcome.prefix(60)), default: 0] += 1
                    current = nil
                    next = number + 1
                }
            }
            let (status, rss) = worker.finish(kill: true)
            maxRSS = max(maxRSS, rss)
            if let current {
                let kind = hung ? "HANG" : "CRASH (\(describe(status: status)))"
                findings.append((kind, cases[current].label))
                keep(cases[current].dir, options.corpus, name: "\(hung ? "hang" : "crash")-\(options.seed)-\(done + current)")
                next = current + 1
            } else if next < cases.count {
                fatal("worker ended before case \(next): \(describe(status: status))")
            }
        }
        done += cases.count
        batches += 1
    }
    let elapsed = clock.now - started
    let crashes = findings.filter { $0.kind.hasPrefix("CRASH") }.count, hangs = findings.filter { $0.kind == "HANG" }.count
    let outside = findings.filter { $0.kind.hasPrefix("OUTSIDE") }.count
    print("mutations \(done) in \(batches) batches, \(elapsed.formatted(.units(allowed: [.seconds], fractionalPart: .show(length: 1)))), seed \(options.seed)")
    print("crashes \(crashes), hangs \(hangs), reads outside the image \(outside), other findings \(findings.count - crashes - hangs - outside)")
    print("worker peak RSS \(maxRSS / 1024) MiB")
    print("outcomes:")
    for (outcome, count) in outcomes.sorted(by: { $0.value > $1.value }).prefix(25) { print("  \(String(count).padding(toLength: 7, withPad: " ", startingAt: 0)) \(outcome)") }
    for finding in findings.prefix(50) { print("FINDING \(finding.kind): \(finding.label)") }
    return findings.isEmpty
}

func keep(_ directory: String, _ corpus: String?, name: String) {
    guard let corpus else { return }
    try? FileManager.default.copyItem(atPath: directory, toPath: corpus + "/" + name)
}

/// Replays kept cases (each a directory holding a chain `1`, `2`, …) in worker processes.
func replay(_ directories: [String], caseTimeout: Double) throws -> Bool {
    let batch = NSTemporaryDirectory() + "mitosis-image-fuzz-replay-\(getpid())"
    try FileManager.default.createDirectory(atPath: batch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: batch) }
    try Data("MITOSIS-FUZZ-SECRET".utf8).write(to: URL(fileURLWithPath: batch + "/secret-marker"))
    var failures = 0
    for (number, directory) in directories.enumerated() {
        let images = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).compactMap(Int.init).max() ?? 1
        try Data("\(number) \(directory) \(images)\n".utf8).write(to: URL(fileURLWithPath: batch + "/cases"))
        let worker = try Worker(batch: batch)
        var text: String?
        while case .line(let line) = worker.next(timeout: caseTimeout) {
            if line.hasPrefix("done") { text = String(line.split(separator: " ", maxSplits: 2).dropFirst(2).first ?? "") }
        }
        let (status, _) = worker.finish(kill: true)
        let bad = text == nil || text!.hasPrefix("OUTSIDE") || text!.hasPrefix("HUGE") || text!.hasPrefix("DESCRIPTOR")
        if bad { failures += 1 }
        print("\(bad ? "FAIL" : "ok  ") \(directory): \(text ?? "no result (\(describe(status: status)) or hang)")")
    }
    return failures == 0
}

// MARK: Regression corpus

/// One hostile image of the regression corpus (Tests/MitosisTests/Image/Corpus/*.json), as an
/// edit of one image (`image`, 1-based; the newest when absent) of a fresh seed chain, so that it stays small and independent of the
/// seed's ids and addresses. Applied in this order: `set` (manifest leaves), `mapping`, `sparse`,
/// resealed if any of those ran; then `replace` (raw file bytes, no resealing) and `special`.
struct CorpusEntry: Decodable {
    struct Leaf: Decodable { var path: [PathItem]; var value: JSONValue }
    /// Edits the first mapping that has a range in state `having` (and a recorded file when
    /// `withFile`): sets its keys, then turns its ranges in state `from` (every range when nil)
    /// into `to`.
    struct MappingEdit: Decodable {
        var having: String
        var withFile: Bool?
        var set: [String: JSONValue]?
        var from: String?
        var to: String?
    }
    var finding: String
    /// The outcome the worker must report (a prefix), e.g. `refused: malformed COMMIT`.
    var expect: String
    var image: Int?
    var set: [Leaf]?
    var mapping: MappingEdit?
    var sparse: UInt64?
    var replace: [String: String]?
    var special: [[String]]?
}

enum PathItem: Decodable {
    case key(String), index(Int)
    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let index = try? container.decode(Int.self) { self = .index(index) } else { self = .key(try container.decode(String.self)) }
    }
    var value: Any { switch self { case .key(let key): key; case .index(let index): index } }
}

/// Any JSON value, kept as Foundation objects for `JSONSerialization`.
struct JSONValue: Decodable {
    let value: Any
    init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { value = NSNull() }
        else if let int = try? container.decode(Int.self) { value = int }
        else if let unsigned = try? container.decode(UInt64.self) { value = unsigned }
        else if let double = try? container.decode(Double.self) { value = double }
        else if let string = try? container.decode(String.self) { value = string }
        else if let bool = try? container.decode(Bool.self) { value = bool }
        else if let array = try? container.decode([JSONValue].self) { value = array.map(\.value) }
        else { value = try container.decode([String: JSONValue].self).mapValues(\.value) }
    }
}

extension Mutator {
    /// The seed with `entry` applied to one of its images.
    mutating func apply(_ entry: CorpusEntry) -> Case {
        var c = Case(images: seed)
        let newest = min(max((entry.image ?? seed.count) - 1, 0), seed.count - 1)
        var root = manifest(c, newest) as? [String: Any] ?? [:]
        var edited = false
        for leaf in entry.set ?? [] {
            root = setting(root, leaf.path.map(\.value)[...], leaf.value.value) as? [String: Any] ?? root
            edited = true
        }
        if let edit = entry.mapping, var mappings = root["mappings"] as? [[String: Any]] {
            let states = { (mapping: [String: Any]) in ((mapping["pages"] as? [[String: Any]]) ?? []).compactMap { $0["state"] as? String } }
            if let number = mappings.firstIndex(where: { states($0).contains(edit.having) && (edit.withFile != true || $0["file"] != nil) }) {
                var mapping = mappings[number]
                for (key, value) in edit.set ?? [:] { mapping[key] = value.value }
                if let to = edit.to, var ranges = mapping["pages"] as? [[String: Any]] {
                    for index in ranges.indices where edit.from == nil || ranges[index]["state"] as? String == edit.from { ranges[index]["state"] = to }
                    mapping["pages"] = ranges
                }
                mappings[number] = mapping
                root["mappings"] = mappings
                edited = true
            }
        }
        if edited { reseal(&c.images[newest], manifest: root) }
        if let length = entry.sparse {
            var random = SplitMix64(seed: 0)
            swap(&random, &self.random)
            sparse(&c, newest, length: length)
            swap(&random, &self.random)
        }
        for (file, text) in entry.replace ?? [:] {
            c.images[newest][file] = Array(text.utf8).map { $0 == UInt8(ascii: "~") ? 0xFF : $0 }
        }
        for item in entry.special ?? [] where item.count == 2 { c.specials.append((newest, item[0], item[1])) }
        c.label = entry.finding
        return c
    }
}

/// Applies every corpus entry to a fresh seed and runs each in a worker: each must end with its
/// expected outcome, within the timeout, without a crash or a read outside the image.
/// Returns whether every entry ended as expected.
func replayCorpus(_ directory: String, options: Options) async throws -> Bool {
    let work = options.work
    try? FileManager.default.removeItem(atPath: work)
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: work) }
    let seed = try await makeSeed(in: work + "/seed")
    let secret = work + "/secret", fifo = work + "/fifo"
    try Data(Array(repeating: "MITOSIS-FUZZ-SECRET", count: 200).joined().utf8).write(to: URL(fileURLWithPath: secret))
    mkfifo(fifo, 0o600)
    var mutator = Mutator(random: SplitMix64(seed: options.seed), seed: seed, secret: secret, fifo: fifo)
    let names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }.sorted()
    var failures = 0
    for name in names {
        let text = try String(contentsOfFile: directory + "/" + name, encoding: .utf8)
            .replacingOccurrences(of: "$SECRET", with: secret).replacingOccurrences(of: "$FIFO", with: fifo)
        let entry = try JSONOutput.decoder().decode(CorpusEntry.self, from: Data(text.utf8))
        let dir = work + "/" + name
        try write(mutator.apply(entry), to: dir)
        try Data("0 \(dir) \(seed.count)\n".utf8).write(to: URL(fileURLWithPath: work + "/cases"))
        try Data("MITOSIS-FUZZ-SECRET".utf8).write(to: URL(fileURLWithPath: work + "/secret-marker"))
        let worker = try Worker(batch: work)
        var outcome: String?
        var hung = false
        reading: while true {
            switch worker.next(timeout: options.caseTimeout) {
            case .line(let line): if line.hasPrefix("done") { outcome = String(line.split(separator: " ", maxSplits: 2).dropFirst(2).first ?? "") }
            case .end: break reading
            case .silent: hung = true; break reading
            }
        }
        let (status, _) = worker.finish(kill: true)
        let ok = outcome?.hasPrefix(entry.expect) == true
        if !ok { failures += 1 }
        print("\(ok ? "ok  " : "FAIL") \(name) (\(entry.finding)): \(outcome ?? (hung ? "HANG" : "CRASH (\(describe(status: status)))"))"
              + (ok ? "" : ", expected \(entry.expect)"))
    }
    print("\(names.count - failures) of \(names.count) corpus entries as expected")
    return failures == 0
}

let options = Options(Array(CommandLine.arguments.dropFirst()))
// Exit codes are decided here, once the work directories are removed.
if let directory = options.corpusReplay {
    exit(try await replayCorpus(directory, options: options) ? 0 : 1)
}
if let batch = options.worker { runWorker(batch) }
if !options.replay.isEmpty {
    exit(try replay(options.replay, caseTimeout: options.caseTimeout) ? 0 : 1)
}
exit(try await runFuzzer(options) ? 0 : 1)

import Foundation
import MitosisImage
import MitosisKernel
import SystemPackage

/// The data files as of the epoch a warm clone holds, as files on the standby's disk
/// (`DIR/warm-files/N`), brought forward with each epoch's `files.log` together with the husk's
/// memory: an append costs its bytes, a changed block its block. Promotion then renames them
/// into place (`install`) instead of replaying the chain's logs and writing every file whole,
/// and makes that durable (`sync`) while the husk is finished.
///
/// Each epoch's writes start their writeback at once (`sync_file_range`, which does not wait),
/// so the `fdatasync` at promotion finds little left to write. A class, not a value: it owns
/// descriptors, and the warm clone uses it one operation at a time.
final class DataFileCopies: @unchecked Sendable {
    private struct Copy {
        var name: String
        var fd: FileDescriptor?
        var length: UInt64
        var mode: UInt32
        var removed: Bool
    }

    let directory: String
    private var copies: [String: Copy] = [:]
    private var names = 0
    /// What `install` did, for `sync`.
    private var installed: [FileDescriptor] = []
    private var changedDirectories: Set<String> = []

    /// Replaces whatever `directory` held with `files` (the chain's data files, materialized).
    init(directory: String, files: [String: MaterializedFile]) throws {
        self.directory = directory
        Self.remove(directory)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o700])
            for (path, file) in files {
                if file.removed {
                    copies[path] = Copy(name: "", fd: nil, length: 0, mode: 0, removed: true)
                    continue
                }
                var copy = try create(mode: file.mode)
                try Kernel.writeAll(copy.fd!, file.content, at: 0)
                copy.length = UInt64(file.content.count)
                try Kernel.startWriteback(copy.fd!)
                copies[path] = copy
            }
        } catch {
            close()
            Self.remove(directory)
            throw error
        }
    }

    /// How many files the copies name (removed ones included).
    var count: Int { copies.count }

    /// Applies one epoch's `files.log` (the copies are as of its parent).
    func apply(imageDirectory: String) throws {
        var touched: Set<String> = []
        for (delta, bytes) in try FileDeltaLog.read(imageDirectory: imageDirectory) {
            try apply(delta, bytes)
            touched.insert(delta.path)
        }
        for path in touched { if let fd = copies[path]?.fd { try Kernel.startWriteback(fd) } }
    }

    /// Renames every copy over its path (a copy on another file system is written there
    /// instead, synced) and removes the files removed: no data is written here, the copies
    /// already hold it. Returns how many files were put in place. `sync` makes it durable.
    func install() throws -> Int {
        var written = 0
        for (path, copy) in copies.sorted(by: { $0.key < $1.key }) {
            let parent = Self.parent(of: path)
            guard !copy.removed, let fd = copy.fd else {
                if (try? Kernel.unlinkAt(nil, path)) != nil { changedDirectories.insert(parent) }
                continue
            }
            do {
                try DirectorySink.createDirectories(parent)
                switch Result(catching: { () throws(Errno) in try Kernel.rename(nil, directory + "/" + copy.name, path) }) {
                case .success: installed.append(fd)
                case .failure(.improperLink): try writeWhole(fd, length: copy.length, mode: copy.mode, to: path)
                case .failure(let error): throw error
                }
            } catch {
                throw ReplicationError.promotion("installing the data file \(path): \(error)")
            }
            changedDirectories.insert(parent)
            written += 1
        }
        return written
    }

    /// After `install`: syncs the files renamed into place (their writeback started epoch by
    /// epoch), then the directories changed. The copies are gone afterwards.
    func sync() throws {
        defer { discard() }
        for fd in installed { try Kernel.dataSync(fd) }
        for parent in changedDirectories.sorted() {
            do {
                let fd = try Kernel.openDirectory(parent)
                defer { try? fd.close() }
                try Kernel.sync(fd)
            } catch {
                throw ReplicationError.promotion("syncing the directory \(parent): \(error)")
            }
        }
    }

    /// Closes and removes the copies.
    func discard() {
        close()
        Self.remove(directory)
    }

    // MARK: -

    /// `FileDeltaLog.apply` on a file instead of an array.
    private func apply(_ delta: FileDelta, _ bytes: [UInt8]) throws {
        if delta.kind == .removed {
            if let fd = copies[delta.path]?.fd {
                try? fd.close()
                try? Kernel.unlinkAt(nil, directory + "/" + copies[delta.path]!.name)
            }
            copies[delta.path] = Copy(name: "", fd: nil, length: 0, mode: 0, removed: true)
            return
        }
        var copy: Copy
        if delta.kind == .whole || copies[delta.path]?.fd == nil {
            if let old = copies[delta.path], let fd = old.fd {
                try? fd.close()
                try? Kernel.unlinkAt(nil, directory + "/" + old.name)
            }
            copy = try create(mode: delta.mode)
        } else {
            copy = copies[delta.path]!
        }
        copies[delta.path] = copy
        let fd = copy.fd!
        if copy.mode != delta.mode {
            try Kernel.changeMode(fd, mode_t(delta.mode & 0o7777))
            copy.mode = delta.mode
        }
        if !bytes.isEmpty {
            try Kernel.writeAll(fd, bytes, at: delta.offset)
            copy.length = max(copy.length, delta.offset + UInt64(bytes.count))
        }
        if copy.length != delta.size {
            try Kernel.truncate(fd, to: Int(delta.size))
            copy.length = delta.size
        }
        copies[delta.path] = copy
    }

    private func create(mode: UInt32) throws -> Copy {
        names += 1
        let name = String(names)
        let fd = try Kernel.openAt(nil, directory + "/" + name, options: [.readWrite, .create, .exclusive, .noFollow], mode: 0o600)
        do { try Kernel.changeMode(fd, mode_t(mode & 0o7777)) } catch {
            try? fd.close()
            throw error
        }
        return Copy(name: name, fd: fd, length: 0, mode: mode, removed: false)
    }

    /// The cross-device case: a temporary file beside `path`, synced, renamed over it.
    private func writeWhole(_ source: FileDescriptor, length: UInt64, mode: UInt32, to path: String) throws {
        let content = try Kernel.readAt(source, offset: 0, count: Int(length))
        _ = try Promotion.installDataFiles([path: MaterializedFile(content: content, mode: mode, removed: false)])
    }

    private func close() {
        for copy in copies.values { try? copy.fd?.close() }
        copies = [:]
    }

    private static func parent(of path: String) -> String {
        let slash = path.lastIndex(of: "/")!
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    private static func remove(_ directory: String) {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

import ArgumentParser
import Foundation
import Mitosis

/// Looks into checkpoint images (Docs/image-format.md) without trusting them.
struct ImagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "images",
        abstract: "Show, verify and read checkpoint images.",
        subcommands: [Show.self, Verify.self, Read.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show what a checkpoint image holds and the chain it belongs to.")

        @Argument(help: "The image directory.") var directory: String
        @Flag(help: "Print the manifest and chain as JSON; \"pages\" counts the pages stored in this image itself.")
        var json = false

        func run() throws {
            do {
                let report = try ImageReport(try CheckpointImage.open(directory))
                print(json ? try JSONOutput.string(report) : report.text, terminator: json ? "\n" : "")
            } catch {
                fail(error)
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every checksum and parent link of an image and its ancestors; exit 1 on any damage.")

        @Argument(help: "The image directory.") var directory: String

        func run() throws {
            let problems = CheckpointImage.verifyChain(directory)
            guard problems.isEmpty else {
                for problem in problems { FileHandle.standardError.write(Data("mitosis: \(problem)\n".utf8)) }
                throw ExitCode.failure
            }
            do {
                let chain = try CheckpointImage.open(directory).chain()
                let pages = chain.images.reduce(0) { $0 + $1.storedPages }
                print("ok: \(directory): \(chain.images.count) image(s), \(pages) page(s) verified")
            } catch {
                fail(error)
            }
        }
    }

    struct Read: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the bytes at an address, as the image chain reconstructs them, to standard output.")

        @Argument(help: "The image directory.") var directory: String
        @Option(help: "The first address (hexadecimal with 0x, or decimal).") var addr: String
        @Option(help: "How many bytes.") var len: Int

        func validate() throws {
            guard parseAddress(addr) != nil else { throw ValidationError("'\(addr)' is not an address") }
            guard len > 0 else { throw ValidationError("--len must be positive") }
        }

        func run() throws {
            let start = parseAddress(addr)!
            do {
                let chain = try CheckpointImage.open(directory).chain()
                var done = 0
                while done < len {
                    let count = min(len - done, 1 << 20)
                    let bytes = try chain.read(address: start + UInt64(done), length: count)
                    FileHandle.standardOutput.write(Data(bytes))
                    done += count
                }
            } catch {
                fail(error)
            }
        }

        private func parseAddress(_ text: String) -> UInt64? {
            text.lowercased().hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
        }
    }
}

/// What `images show` prints: the manifest, the number of pages stored in this image, and the chain.
struct ImageReport: Encodable {
    struct Link: Encodable {
        let path: String
        let id: String
        let sequence: Int
        let kind: CheckpointKind
        let pages: Int
    }

    let path: String
    /// Pages stored in this image itself, parents excluded.
    let pages: Int
    /// How the page data is compressed; absent when it is not.
    let compression: PageCompression?
    let manifest: CheckpointManifest
    /// Newest first; empty when the chain is broken (see `chainError`).
    let chain: [Link]
    let chainError: String?

    init(_ image: CheckpointImage) throws {
        path = image.path
        pages = image.storedPages
        compression = image.compression
        manifest = image.manifest
        do {
            chain = try image.chain().images.map {
                Link(path: $0.path, id: $0.manifest.id, sequence: $0.manifest.sequence, kind: $0.manifest.kind, pages: $0.storedPages)
            }
            chainError = nil
        } catch {
            chain = []
            chainError = "\(error)"
        }
    }

    var text: String {
        let m = manifest
        var out = "image \(path)\n"
        out += "  id          \(m.id)\n"
        out += "  kind        \(m.kind.rawValue), sequence \(m.sequence)"
            + (m.parent.map { ", parent \($0.path) (\($0.id))" } ?? "") + "\n"
        out += "  process     \(m.pid)" + (m.process.map { " (\($0.identity.comm))" } ?? "")
            + ", \(m.threads.count) thread state(s), \(m.mappings.count) mapping(s)\n"
        out += "  created     \(m.created)    tracking \(m.tracking)    page size \(m.pageSize)\n"
        out += "  pages       \(pages) stored here in \(m.pageIndex.runs) run(s), \(m.pageIndex.bytes) bytes"
            + (compression.map { " (\($0.rawValue)-compressed, \(pages * m.pageSize) bytes of pages)" } ?? "") + "\n"
        out += "  stats       frozen \(milliseconds(m.stats.frozenNanoseconds)), total \(milliseconds(m.stats.durationNanoseconds)), "
            + "\(m.stats.pagesScanned) pages scanned, \(m.stats.pagesWritten) written\n"
        if let chainError {
            out += "  chain       broken: \(chainError)\n"
        } else {
            out += "  chain       " + chain.map { "\($0.sequence):\($0.pages)" }.joined(separator: " <- ")
                + "  (sequence:pages, newest first; \(chain.reduce(0) { $0 + $1.pages }) pages in all)\n"
        }
        out += "  mappings\n"
        for mapping in m.mappings {
            var counts: [PageState: UInt64] = [:]
            for range in mapping.pages { counts[range.state, default: 0] += (range.end - range.start) / UInt64(m.pageSize) }
            let states = [PageState.stored, .inherited, .cleanFile, .neverTouched].compactMap { state in
                counts[state].map { "\(state.rawValue) \($0)" }
            }
            out += "    \(hex(mapping.start))-\(hex(mapping.end)) \(mapping.perms) \(mapping.kind.padding(toLength: 10, withPad: " ", startingAt: 0)) "
                + states.joined(separator: ", ") + (mapping.path.map { "  \($0)" } ?? "") + "\n"
        }
        return out
    }

    private func hex(_ value: UInt64) -> String { String(value, radix: 16) }

    private func milliseconds(_ nanoseconds: UInt64) -> String {
        String(format: "%.3f ms", Double(nanoseconds) / 1e6)
    }
}

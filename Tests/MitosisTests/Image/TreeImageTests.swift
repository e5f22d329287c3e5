import Foundation
import Testing
@testable import MitosisImage
@testable import MitosisModel

/// `tree.json` is hostile input: every inconsistency is named, and `TreeImage.open` fails with
/// one line naming the file before any member image is read.
@Suite("Tree images")
struct TreeImageTests {
    static func member(_ pid: Int32, parent: Int32, image: String? = nil) -> TreeManifest.Member {
        TreeManifest.Member(pid: pid, parent: parent, session: 10, processGroup: 10, image: image ?? String(pid), imageId: "id-\(pid)")
    }

    static let good = TreeManifest(root: 10, members: [member(10, parent: 1), member(11, parent: 10), member(12, parent: 11)],
                                   sharedFiles: [.init(pid: 11, fd: 3, owner: 10, ownerFd: 3)],
                                   sharedMemory: [.init(pid: 12, start: 0x1000, owner: 10, ownerStart: 0x1000)])

    @Test("a consistent tree has no problems")
    func consistent() {
        #expect(Self.good.problems().isEmpty)
    }

    @Test("every inconsistency is named")
    func problems() {
        let cases: [((inout TreeManifest) -> Void, String)] = [
            ({ $0.format = "other" }, "format 'other', expected 'mitosis-tree'"),
            ({ $0.formatVersion = 2 }, "format version 2, this mitosis reads 1"),
            ({ $0.root = 11 }, "the root 11 is not the first member"),
            ({ $0.members[2].image = "../10" }, "member 12 names image '../10'"),
            ({ $0.members[2].parent = 99 }, "member 12's parent 99 is not a member before it"),
            ({ $0.members.append(Self.member(11, parent: 10)) }, "member 11 listed twice"),
            ({ $0.members[1].pid = -4; $0.members[1].image = "-4" }, "member pid -4"),
            ({ $0.sharedFiles[0].owner = 12 }, "shared file fd 3 of 11: owner 12 is not a member before it"),
            ({ $0.sharedMemory[0].owner = 77 }, "shared memory 0x1000 of 12: owner 77 is not a member before it"),
        ]
        for (change, problem) in cases {
            var manifest = Self.good
            change(&manifest)
            #expect(manifest.problems().contains(problem), "\(manifest.problems())")
        }
    }

    @Test("open refuses a hostile tree.json with one line naming it")
    func openRefuses() throws {
        let directory = NSTemporaryDirectory() + "mitosis-tree-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Data("{\"format\": 1}".utf8).write(to: URL(fileURLWithPath: directory + "/tree.json"))
        #expect(TreeImage.isTree(directory))
        #expect(throws: ImageError.self) { _ = try TreeImage.open(directory) }
        var hostile = Self.good
        hostile.members[1].image = "../../etc"
        try Data(try JSONOutput.bytes(hostile)).write(to: URL(fileURLWithPath: directory + "/tree.json"))
        do {
            _ = try TreeImage.open(directory)
            Issue.record("opened")
        } catch {
            #expect("\(error)" == "\(directory): malformed tree.json: member 11 names image '../../etc'")
        }
        // A member image that is missing: the member's own error.
        try Data(try JSONOutput.bytes(Self.good)).write(to: URL(fileURLWithPath: directory + "/tree.json"))
        #expect(throws: ImageError.self) { _ = try TreeImage.open(directory) }
    }
}

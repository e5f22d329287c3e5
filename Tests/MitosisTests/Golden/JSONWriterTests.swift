import Foundation
import Testing
@testable import MitosisInspect
@testable import MitosisModel

/// `JSONWriter` (what `JSONOutput.string` and so `inspect --json` and `graph --format json` use)
/// must write exactly the bytes Foundation's `JSONEncoder` wrote with `JSONOutput.encoder()`
/// before it: compared on real models of real scenario processes, on the CLI's own output, and
/// on a fixed synthetic model pinned in `synthetic.json`.
/// `MITOSIS_RECORD_GOLDEN=1 swift test --filter JSONWriter` rewrites the golden file (from Foundation).
@Suite("Golden JSON: JSONWriter")
struct JSONWriterTests {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("synthetic.json")

    /// Both encoders, pretty and compact, byte for byte.
    static func expectSameBytes<T: Encodable>(_ value: T, _ comment: Comment? = nil,
                                              sourceLocation: SourceLocation = #_sourceLocation) throws {
        for pretty in [true, false] {
            let foundation = Array(try JSONOutput.encoder(pretty: pretty).encode(value))
            let writer = try JSONWriter(pretty: pretty).encode(value)
            if foundation != writer {
                let index = zip(foundation, writer).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(foundation.count, writer.count)
                let context = { (bytes: [UInt8]) in String(decoding: bytes[max(0, index - 80)..<min(bytes.count, index + 80)], as: UTF8.self) }
                Issue.record("pretty=\(pretty): first difference at byte \(index) of \(foundation.count)/\(writer.count)\nFoundation: …\(context(foundation))…\nJSONWriter: …\(context(writer))… \(comment.map { "\($0)" } ?? "")",
                             sourceLocation: sourceLocation)
            }
        }
    }

    /// Strings and keys that exercise every escape, Unicode, numbers at their limits, nulls,
    /// empty containers and keys the snake_case conversion splits.
    struct Synthetic: Codable {
        var plain = "a/b\\c\"d"
        var controls = "\u{0}\u{1}\u{8}\u{9}\u{A}\u{B}\u{C}\u{D}\u{1F}\u{7F}"
        var unicode = "ü 日本 🧬 é"
        var emptyString = ""
        var minimum = Int64.min
        var maximum = UInt64.max
        var negative: Int32 = -42
        var double = 1.5
        var wholeDouble = 3.0
        var tinyDouble = 1e-300
        var missing: String? = nil
        var explicitNull: UInt64? = nil
        var emptyArray: [Int] = []
        var emptyObject: [String: Int] = [:]
        var nestedEmpty: [[String]] = [[], ["x"]]
        var dictionary = ["zKey": 1, "aKey": 2, "URLKey": 3, "é": 4]
        var myURLProperty = true
        var aBCDef = false
        var Uppercase = 1
        var with_Underscore = 2
        var number2Go = 3
        var flags: [String] = ["O_RDWR", "O_CLOEXEC"]

        private enum CodingKeys: String, CodingKey {
            case plain, controls, unicode, emptyString, minimum, maximum, negative, double, wholeDouble, tinyDouble
            case missing, explicitNull, emptyArray, emptyObject, nestedEmpty, dictionary, myURLProperty, aBCDef
            case Uppercase, with_Underscore, number2Go, flags
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(plain, forKey: .plain)
            try container.encode(controls, forKey: .controls)
            try container.encode(unicode, forKey: .unicode)
            try container.encode(emptyString, forKey: .emptyString)
            try container.encode(minimum, forKey: .minimum)
            try container.encode(maximum, forKey: .maximum)
            try container.encode(negative, forKey: .negative)
            try container.encode(double, forKey: .double)
            try container.encode(wholeDouble, forKey: .wholeDouble)
            try container.encode(tinyDouble, forKey: .tinyDouble)
            try container.encodeIfPresent(missing, forKey: .missing)
            try container.encode(explicitNull, forKey: .explicitNull)
            try container.encode(emptyArray, forKey: .emptyArray)
            try container.encode(emptyObject, forKey: .emptyObject)
            try container.encode(nestedEmpty, forKey: .nestedEmpty)
            try container.encode(dictionary, forKey: .dictionary)
            try container.encode(myURLProperty, forKey: .myURLProperty)
            try container.encode(aBCDef, forKey: .aBCDef)
            try container.encode(Uppercase, forKey: .Uppercase)
            try container.encode(with_Underscore, forKey: .with_Underscore)
            try container.encode(number2Go, forKey: .number2Go)
            try container.encode(flags, forKey: .flags)
            try container.encode("last value wins", forKey: .plain)
        }
    }

    static var syntheticGraph: ResourceGraph {
        ResourceGraph(nodes: [
            GraphNode(id: "process:1", kind: .process, attributes: ["pid": .int(1), "comm": .string("init \"x\""), "threads": .int(3)]),
            GraphNode(id: "file:8:3:99", kind: .file, attributes: ["path": .string("/tmp/a\nb"), "deleted": .bool(true),
                                                                   "external": .bool(true), "recv_q": .int(-1)]),
            GraphNode(id: "description:1:3", kind: .description, attributes: ["flags": .strings([]), "access": .string("O_RDWR")]),
            GraphNode(id: "socket:5", kind: .socket),
        ], edges: [
            GraphEdge(from: "process:1", to: "description:1:3", kind: .holds, attributes: ["fd": .int(3), "cloexec": .bool(false)]),
            GraphEdge(from: "description:1:3", to: "file:8:3:99", kind: .refersTo),
            GraphEdge(from: "socket:5", to: "socket:5", kind: .connectedTo, attributes: ["events": .strings(["EPOLLIN", "EPOLLET"])]),
        ])
    }

    @Test("a synthetic model with every escape and edge case: as Foundation, and as the golden file")
    func synthetic() throws {
        try Self.expectSameBytes(Synthetic())
        try Self.expectSameBytes(Self.syntheticGraph)
        try Self.expectSameBytes(DescriptorJSONTests.descriptors)
        let foundation = String(decoding: try JSONOutput.encoder().encode(Self.syntheticGraph), as: UTF8.self) + "\n"
            + String(decoding: try JSONOutput.encoder().encode(Synthetic()), as: UTF8.self) + "\n"
        if ProcessInfo.processInfo.environment["MITOSIS_RECORD_GOLDEN"] == "1" {
            try foundation.write(to: Self.golden, atomically: true, encoding: .utf8)
        }
        let written = try JSONOutput.string(Self.syntheticGraph) + "\n" + JSONOutput.string(Synthetic()) + "\n"
        #expect(written == (try String(contentsOf: Self.golden, encoding: .utf8)))
    }

    /// One key, encoded through a keyed container.
    struct KeyProbe: Encodable {
        var key: String
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: AnyKey.self)
            try container.encode(1, forKey: AnyKey(key))
        }
    }

    @Test("snake_case keys as Foundation converts them", arguments: [
        "fd", "flagNames", "myURLProperty", "URLProperty", "aBCDef", "Uid", "number2Go", "ABC", "vmFlags", "_private",
        "x", "sysvVisible", "ID", "already_snake", "trailingCAPS", "a1B2", "ÉtéCase", "straßeGroß", "ǅungla",
    ])
    func snakeCase(key: String) throws {
        let object = try JSONSerialization.jsonObject(with: JSONOutput.encoder().encode(KeyProbe(key: key))) as? [String: Int]
        #expect(object?.keys.first == KeyCache.convertToSnakeCase(key))
        try Self.expectSameBytes(KeyProbe(key: key))
    }

    @Test("inspect models of real scenario processes encode as with Foundation", arguments: ["fds", "sockets", "epoll", "pairs", "threads"])
    func inspectModels(scenario: String) async throws {
        let child = try await ScenarioProcess(scenario)
        defer { child.stop() }
        let model = try Introspector.inspect(pid: child.pid)
        try Self.expectSameBytes(model, "\(scenario)")
    }

    @Test("graphs of real scenario processes encode as with Foundation", arguments: ["fds", "sockets", "epoll", "pairs", "tree"])
    func graphs(scenario: String) async throws {
        let child = try await ScenarioProcess(scenario)
        defer { child.stop() }
        let graph = try GraphBuilder.graph(of: child.pid, options: GraphOptions(includeDescendants: true))
        try Self.expectSameBytes(graph, "\(scenario)")
        try Self.expectSameBytes(graph.closure(of: child.pid), "\(scenario) closure")
    }

    /// The CLI's output, decoded and encoded again by Foundation, gives the CLI's bytes back: what
    /// `mitosis` prints is what `JSONEncoder` would have printed for the same model.
    @Test("mitosis inspect --json and graph --format json print what Foundation would")
    func command() async throws {
        let child = try await ScenarioProcess("fds")
        defer { child.stop() }
        try await child.waitUntilBlocked()
        let inspect = try await ToolRun(ToolRun.mitosis, ["inspect", String(child.pid), "--json"])
        #expect(inspect.status == 0)
        let model = try JSONOutput.decoder().decode(ProcessModel.self, from: Data(inspect.standardOutput.utf8))
        #expect(String(decoding: try JSONOutput.encoder().encode(model), as: UTF8.self) + "\n" == inspect.standardOutput)

        let graphRun = try await ToolRun(ToolRun.mitosis, ["graph", String(child.pid), "--format", "json"])
        #expect(graphRun.status == 0)
        let graph = try JSONOutput.decoder().decode(ResourceGraph.self, from: Data(graphRun.standardOutput.utf8))
        #expect(String(decoding: try JSONOutput.encoder().encode(graph), as: UTF8.self) + "\n" == graphRun.standardOutput)
    }
}

import Foundation
import Glibc
import Testing
@testable import MitosisImage
@testable import MitosisKernel
@testable import MitosisModel
@testable import MitosisRestore

/// Debian's nginx (master + 2 workers) started by the test with its own configuration on a
/// loopback port, `mitosis dump --tree --kill`, restored as a tree: it answers, reloads (new
/// workers) and shuts down cleanly on SIGQUIT.
@Suite("nginx tree restore")
struct NginxRestoreTests {
    static let nginx = "/usr/sbin/nginx"

    /// A running nginx of the test: its directory, configuration and port.
    struct Server {
        let directory: String
        /// The address it listens on (loopback, or a test host's service address).
        let address: String
        let port: UInt16
        var configuration: String { directory + "/nginx.conf" }
        var pidFile: String { directory + "/nginx.pid" }
        var errorLog: String { directory + "/logs/error.log" }
        let body: [UInt8]

        init(directory: String, address: String = "127.0.0.1") throws {
            self.directory = directory
            self.address = address
            port = try Kernel.freeLoopbackPort()
            // The workers run as nobody: the files they serve must be readable by everyone.
            try FileManager.default.createDirectory(atPath: directory + "/html", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: directory + "/logs", withIntermediateDirectories: true)
            chmod(directory, 0o755)
            chmod(directory + "/html", 0o755)
            var generator = SystemRandomNumberGenerator()
            body = (0..<65_536).map { _ in UInt8.random(in: 32...126, using: &generator) }
            _ = FileManager.default.createFile(atPath: directory + "/html/index.html", contents: Data(body), attributes: [.posixPermissions: 0o644])
            let configuration = """
                daemon on;
                master_process on;
                worker_processes 2;
                pid \(directory)/nginx.pid;
                error_log \(directory)/logs/error.log notice;
                events { worker_connections 256; }
                http {
                    access_log \(directory)/logs/access.log;
                    client_body_temp_path \(directory)/body;
                    proxy_temp_path \(directory)/proxy;
                    fastcgi_temp_path \(directory)/fastcgi;
                    uwsgi_temp_path \(directory)/uwsgi;
                    scgi_temp_path \(directory)/scgi;
                    server {
                        listen \(address):\(port);
                        root \(directory)/html;
                    }
                }
                """
            try configuration.write(toFile: directory + "/nginx.conf", atomically: true, encoding: .utf8)
        }

        func master() throws -> Int32 {
            guard let pid = Int32(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw RestoreFailure(description: "no pid in \(pidFile)")
            }
            return pid
        }

        /// `count` GET requests, one connection each (on a thread of their own): how many were
        /// answered 200 with exactly the file's bytes, and the first other answer.
        /// `from`: a test host (network namespace) the client runs in; nil: this process's own.
        func requests(_ count: Int, from host: String? = nil) async throws -> (good: Int, firstBad: String?) {
            let address = self.address, port = self.port, body = self.body
            @Sendable func run() -> (good: Int, firstBad: String?) {
                var good = 0
                var firstBad: String?
                for _ in 0..<count {
                    let answer = Self.get(address: address, port: port)
                    if answer.status == 200 && answer.body == body { good += 1 } else if firstBad == nil {
                        firstBad = "status \(answer.status), \(answer.body.count) bytes\(answer.error.map { ", \($0)" } ?? "")"
                    }
                }
                return (good, firstBad)
            }
            guard let host else { return try await Blocking.run("nginx-client") { run() } }
            return try await Blocking.run("nginx-client") { try Kernel.inNetworkNamespace(named: host) { run() } }
        }

        /// One `GET /` over HTTP/1.0 (the server closes the connection after the answer).
        static func get(address: String = "127.0.0.1", port: UInt16) -> (status: Int, body: [UInt8], error: String?) {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return (0, [], "socket: \(errno)") }
            defer { close(fd) }
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var socketAddress = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: inet_addr(address)), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
            let connected = withUnsafePointer(to: &socketAddress) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else { return (0, [], "connect: \(errno)") }
            let request = Array("GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n".utf8)
            guard write(fd, request, request.count) == request.count else { return (0, [], "write: \(errno)") }
            var response: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n < 0 { return (0, response, "read: \(errno)") }
                if n == 0 { break }
                response += chunk[0..<n]
            }
            let separator = Array("\r\n\r\n".utf8)
            guard let end = (0..<max(0, response.count - 3)).first(where: { Array(response[$0..<$0 + 4]) == separator }) else { return (0, response, "no header end") }
            let head = String(decoding: response[..<end], as: UTF8.self)
            let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
            return (status, Array(response[(end + 4)...]), nil)
        }
    }

    static func children(_ pid: Int32) -> Set<Int32> {
        let text = (try? Kernel.readFile("/proc/\(pid)/task/\(pid)/children")).map { String(decoding: $0, as: UTF8.self) } ?? ""
        return Set(text.split(separator: " ").compactMap { Int32($0) })
    }

    /// The children of `pid` once there are `count` of them (nginx starts its workers after the pid file).
    static func awaitChildren(_ pid: Int32, count: Int, excluding: Set<Int32> = [], timeout: Duration = .seconds(10)) async throws -> Set<Int32> {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let children = Self.children(pid).subtracting(excluding)
            if children.count == count { return children }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw RestoreFailure(description: "process \(pid) has children \(Self.children(pid).sorted()), not \(count) new ones")
    }

    @Test("dump --tree --kill, restore: 1,000 requests answered 200 byte-identical, reload replaces the workers, SIGQUIT ends it cleanly",
          .enabled(if: FileManager.default.fileExists(atPath: nginx), "needs nginx (Debian package nginx, scripts/setup)"))
    func dumpKillRestore() async throws {
        let scratch = try ScratchDirectory()
        defer { scratch.remove() }
        let server = try Server(directory: scratch.path + "/nginx")
        // Started with descriptors 0-2 only: the daemon must not inherit whatever this test holds.
        let launcher = try ChildProcess(executable: Self.nginx, arguments: ["-c", server.configuration, "-p", server.directory],
                                        stdin: .null, stdout: .null, stderr: .null, onlyStandardStreams: true)
        let launched = try await Blocking.run("nginx-launcher") { launcher.wait() }
        #expect(ChildProcess.exitCode(of: launched) == 0)
        let master = try server.master()
        var cleanup: Set<Int32> = [master]
        defer { for pid in cleanup { kill(pid, SIGKILL) } }
        let workers = try await Self.awaitChildren(master, count: 2)
        cleanup.formUnion(workers)
        let before = try await server.requests(20)
        #expect(before.good == 20, "\(before.firstBad ?? "")")

        let image = scratch.path + "/image"
        let dump = try await ToolRun(ToolRun.mitosis, ["dump", String(master), "--tree", "--images", image, "--kill"])
        #expect(dump.status == 0, "\(dump.standardError)")
        #expect(try await TreeRestoreTests.awaitGone([master] + workers) == [])
        let opened = try TreeImage.open(image)
        #expect(opened.manifest.members.map(\.pid) .first == master)
        #expect(Set(opened.manifest.members.dropFirst().map(\.pid)) == workers)
        #expect(opened.manifest.members.dropFirst().allSatisfy { $0.parent == master && $0.session == master && $0.processGroup == master })

        // The library's restorer: the restored master is this test's child, its exit status readable.
        let result = try await TreeRestorer(image: opened).restore()
        #expect(result.members.map(\.pid) == opened.manifest.members.map(\.pid))
        #expect(Self.children(master) == workers)
        for worker in workers { #expect(TreeRestoreTests.stat(worker)?.ppid == master) }
        let after = try await server.requests(1000)
        #expect(after.good == 1000, "\(after.firstBad ?? "")")

        // Reload: the restored master starts new workers and reaps the restored ones.
        let reload = try await ToolRun(Self.nginx, ["-c", server.configuration, "-p", server.directory, "-s", "reload"])
        #expect(reload.status == 0, "\(reload.standardError)")
        let replaced = try await Self.awaitChildren(master, count: 2, excluding: workers)
        cleanup.formUnion(replaced)
        #expect(try await TreeRestoreTests.awaitGone(Array(workers)) == [])
        let reloaded = try await server.requests(20)
        #expect(reloaded.good == 20, "\(reloaded.firstBad ?? "")")

        // SIGQUIT: graceful shutdown; the master exits 0 after its workers, and removes its pid file.
        kill(master, SIGQUIT)
        var status: Int32 = 0
        let deadline = ContinuousClock.now + .seconds(10)
        while waitpid(master, &status, WNOHANG) == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 0, "wait status \(status)")
        #expect(try await TreeRestoreTests.awaitGone([master] + replaced) == [])
        #expect(!FileManager.default.fileExists(atPath: server.pidFile))
        let log = try String(contentsOfFile: server.errorLog, encoding: .utf8)
        #expect(log.contains("\(master)#\(master): exit"), "\(log)")
        #expect(!log.contains("[alert]") && !log.contains("[emerg]") && !log.contains("[crit]"), "\(log)")
    }
}

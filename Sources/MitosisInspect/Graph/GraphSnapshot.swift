import MitosisModel
import MitosisTrace
extension ResourceGraph {
    /// The graph of `pid` (or its tree) as it is now. Reading /proc and sock_diag needs no
    /// freeze; with `freeze`, every thread of the process (tree) is held still while the graph is
    /// read, so that it is one atomic snapshot, then thawed.
    public static func snapshot(of pid: Int32, options: GraphOptions = GraphOptions(), freeze: Bool = false) async throws -> ResourceGraph {
        guard freeze else { return try GraphBuilder.graph(of: pid, options: options) }
        return try await withFrozenProcess(pid, includeDescendants: options.includeDescendants) { _ in
            try GraphBuilder.graph(of: pid, options: options)
        }
    }
}

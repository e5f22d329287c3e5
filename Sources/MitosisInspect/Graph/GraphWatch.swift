import MitosisModel
extension ResourceGraph {
    /// Snapshots the graph of `pid` every `interval` and yields what changed since the previous
    /// one; the first diff is the whole graph, added. The stream ends when the process exits
    /// (or fails with the error that stopped it) and when the consumer stops iterating.
    public static func changes(
        of pid: Int32, options: GraphOptions = GraphOptions(), interval: Duration = .milliseconds(500), freeze: Bool = false
    ) -> AsyncThrowingStream<GraphDiff, any Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                var previous = ResourceGraph(nodes: [], edges: [])
                while !Task.isCancelled {
                    let current: ResourceGraph
                    do {
                        current = try await snapshot(of: pid, options: options, freeze: freeze)
                    } catch let error as MitosisError where error.goneProcess == pid {
                        continuation.finish()
                        return
                    } catch {
                        continuation.finish(throwing: error)
                        return
                    }
                    let diff = GraphDiff(from: previous, to: current)
                    if !diff.isEmpty { continuation.yield(diff) }
                    previous = current
                    try? await Task.sleep(for: interval)
                }
                continuation.finish()
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}

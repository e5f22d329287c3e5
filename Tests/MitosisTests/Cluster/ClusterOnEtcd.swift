import Foundation
import MitosisClusterTestbed
import Testing

/// Every suite that starts an etcd cluster (`ClusterTestbed`, in the `MitosisClusterTestbed`
/// target that `mitosis-bench failover` shares), one test at a time: three etcd members per
/// testbed are enough load for a 2-core machine, and the failover tests measure timings.
@Suite("Cluster on a real etcd", .serialized,
       .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/etcd") && FileManager.default.isExecutableFile(atPath: "/usr/bin/etcdctl"),
                "etcd-server and etcd-client are not installed (scripts/setup installs them)"))
enum ClusterOnEtcd {}

import CoreMetrics

/// The figures of protect's status line as swift-metrics metrics. The library only records
/// them; the application picks the backend (`mitosis protect --metrics` bootstraps Prometheus,
/// Docs/replication.md "Metrics"); without one they cost nothing. Created after the backend is
/// bootstrapped (swift-metrics binds a metric to the factory of its creation).
struct ProtectMetrics: Sendable {
    /// The newest acknowledged epoch.
    let epoch = Gauge(label: "mitosis_protect_epoch")
    let epochs = Counter(label: "mitosis_protect_epochs_total")
    let fullEpochs = Counter(label: "mitosis_protect_full_epochs_total")
    let bytes = Counter(label: "mitosis_protect_sent_bytes_total")
    /// Per epoch: how long the process was frozen, and from its freeze to its acknowledgement
    /// (histograms: `histogram_quantile` gives the p50 and p99 of the status line).
    let freeze = Timer(label: "mitosis_protect_freeze_seconds")
    let lag = Timer(label: "mitosis_protect_lag_seconds")
    /// The last epoch's lag in intervals, as the status line shows it.
    let lagEpochs = Gauge(label: "mitosis_protect_lag_epochs")
    /// 1 while connected to the standby.
    let connected = Gauge(label: "mitosis_protect_connected")
    let reconnects = Counter(label: "mitosis_protect_connections_total")
    let failures = Counter(label: "mitosis_protect_failed_epochs_total")

    func acknowledged(epoch number: Epoch, full: Bool, bytes sent: UInt64, freeze frozen: Double, lag milliseconds: Double, interval: Double) {
        epoch.record(Int64(clamping: number.rawValue))
        epochs.increment()
        if full { fullEpochs.increment() }
        bytes.increment(by: Int64(clamping: sent))
        freeze.recordNanoseconds(Int64(frozen * 1e6))
        lag.recordNanoseconds(Int64(milliseconds * 1e6))
        lagEpochs.record(milliseconds / max(1, interval))
    }
}

/// The figures of standby's status line as swift-metrics metrics (see `ProtectMetrics`).
struct StandbyMetrics: Sendable {
    /// The newest committed epoch, and the newest term seen.
    let epoch = Gauge(label: "mitosis_standby_epoch")
    let term = Gauge(label: "mitosis_standby_term")
    let epochs = Counter(label: "mitosis_standby_epochs_total")
    let bytes = Counter(label: "mitosis_standby_committed_bytes_total")
    /// From an epoch's first frame to its commit (histogram).
    let commit = Timer(label: "mitosis_standby_commit_seconds")
    /// 1 when the newest epoch passes the restore compatibility check.
    let ready = Gauge(label: "mitosis_standby_ready")
    let abandoned = Counter(label: "mitosis_standby_abandoned_epochs_total")
    let compactions = Counter(label: "mitosis_standby_compactions_total")
}

//! The process-wide Prometheus recorder and the latency buckets every histogram shares, so the
//! gateway's and the workers' histograms line up on one dashboard.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Latency buckets (seconds) for every histogram, from 1 ms to 5 minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Installs the Prometheus recorder once per process and returns its handle; later calls (tests
/// start several servers in one process) return the same handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed; then ours renders nothing, which the
            // metrics tests would show.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

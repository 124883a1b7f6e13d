//! Process plumbing shared by the gateway and worker binaries: NATS and logging flags, tracing
//! set-up, the shutdown signal, the pooled HTTP client, the metrics recorder and the exit code for
//! bad configuration. One copy, so both binaries behave alike.

use std::time::Duration;

use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::duration::{DurationError, parse_duration};
use crate::topology::StreamSettings;

/// Exit status for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Prints one clear line and exits 64. For configuration only: runtime failures exit 1.
pub fn exit_config(message: impl std::fmt::Display) -> ! {
    eprintln!("configuration error: {message}");
    std::process::exit(EXIT_CONFIG)
}

/// The clap value parser of every duration flag: the syntax of the policy file (`250ms`,
/// `1m30s`, a bare number of seconds), so a value means the same in a flag and in the file.
pub fn duration_arg(s: &str) -> Result<Duration, DurationError> {
    parse_duration(s)
}

/// Where NATS is and how the fleet's streams are laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URLs, comma separated (every node of a cluster, so a client survives one
    /// node's loss).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Shard count. Unset: adopt the count stored in NATS (or 4 when none is stored). Set: must
    /// equal the stored count, else the process refuses to start.
    #[arg(long, env = "FLOTILLA_SHARDS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// Replicas of each stream in a NATS cluster; 1 on a single server.
    #[arg(long, env = "FLOTILLA_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// How long a client's `X-Call-Id` or `Idempotency-Key` de-duplicates a retried POST.
    #[arg(long, env = "FLOTILLA_DUPLICATE_WINDOW", default_value = "2m", value_parser = duration_arg)]
    pub duplicate_window: Duration,
    /// Keep streams in memory instead of on disk: faster, but a NATS restart loses queued calls.
    #[arg(long, env = "FLOTILLA_MEMORY_STREAMS", default_value_t = false)]
    pub memory_streams: bool,
}

impl NatsArgs {
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            replicas: usize::from(self.stream_replicas),
            duplicate_window: self.duplicate_window,
            storage: if self.memory_streams {
                async_nats::jetstream::stream::StorageType::Memory
            } else {
                async_nats::jetstream::stream::StorageType::File
            },
            ..StreamSettings::default()
        }
    }

    /// Connects in the background: the process starts even while NATS is down, reports itself
    /// not ready, and the client keeps reconnecting.
    pub async fn connect(
        &self,
        name: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(server_list(&self.nats_url))
            .await
    }
}

/// The servers of a comma-separated `--nats-url`. async-nats parses one URL per string, so a
/// cluster's list must be split before it connects (else it fails with a server-parse error).
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `console` for people, `json` for log collectors.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Console)]
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `flotilla_worker=debug,info`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl LogArgs {
    /// Installs the global subscriber. A bad filter is a configuration error.
    pub fn init(&self) {
        let filter = match tracing_subscriber::EnvFilter::try_new(&self.log) {
            Ok(f) => f,
            Err(e) => exit_config(format!("--log {:?}: {e}", self.log)),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        // A second init (tests start several servers in one process) keeps the first subscriber.
        let _ = match self.log_format {
            LogFormat::Console => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
    }
}

/// Resolves on SIGTERM or SIGINT: the one shutdown trigger of both binaries.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Settings of the pooled HTTP/1.1 client to functions and callbacks.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept per host; the per-function concurrency limit caps open ones.
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept. Needs the pool timer, which `pooled_client` sets.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_per_host: 1024,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The pooled client. hyper-util's legacy client never caps open connections: callers cap them
/// with their own concurrency limits.
pub fn pooled_client<B>(s: PoolSettings) -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(s.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(s.idle_timeout)
        .pool_max_idle_per_host(s.max_idle_per_host)
        .build(connector)
}

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

/// Where functions live: the URL template and the optional policy file. Both binaries take these.
#[derive(Debug, Clone, clap::Args)]
pub struct FunctionArgs {
    /// Base URL of a function: `{name}` is the full name, `{base}` the name without namespace,
    /// `{namespace}` the namespace. The call's path suffix and query are appended.
    #[arg(long, env = "FLOTILLA_FUNCTION_URL_TEMPLATE", default_value = crate::policy::DEFAULT_URL_TEMPLATE)]
    pub function_url_template: String,
    /// TOML file of per-function policies (url, concurrency, rate, timeout, retry).
    #[arg(long, env = "FLOTILLA_POLICIES")]
    pub policies: Option<std::path::PathBuf>,
}

impl FunctionArgs {
    /// The policy table over `defaults`.
    pub fn load(
        &self,
        defaults: crate::FunctionPolicy,
    ) -> Result<crate::Policies, crate::PolicyError> {
        match &self.policies {
            Some(path) => crate::Policies::from_file(
                &path.display().to_string(),
                defaults,
                self.function_url_template.clone(),
            ),
            None => crate::Policies::new(defaults, self.function_url_template.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_url_list_is_split() {
        assert_eq!(
            super::server_list("nats://a:1, nats://b:2,,nats://c:3"),
            ["nats://a:1", "nats://b:2", "nats://c:3"]
        );
        assert_eq!(super::server_list("nats://a:1"), ["nats://a:1"]);
    }
}

//! The flags every binary of the fleet shares: where NATS is and how streams are laid out, and
//! where functions live. One definition, so the gateway and the workers read them alike.

use std::time::Duration;

use flotilla_queue::policy::DEFAULT_URL_TEMPLATE;
use flotilla_queue::topology::StreamSettings;
use flotilla_queue::{DurationError, FunctionPolicy, Policies, PolicyError, parse_duration};

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
    /// Keep each asynchronous call's status (and, where the policy says so, its result) in NATS
    /// for `GET`/`DELETE /async-call/<id>`. `false` saves the writes; gateway and workers should
    /// agree.
    #[arg(long, env = "FLOTILLA_CALL_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub call_status: bool,
    /// How long a call's status and kept result are kept after their last change.
    #[arg(long, env = "FLOTILLA_STATUS_RETENTION", default_value = "24h", value_parser = duration_arg)]
    pub status_retention: Duration,
    #[command(flatten)]
    pub auth: crate::nats_auth::NatsAuthArgs,
}

impl NatsArgs {
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            replicas: usize::from(self.stream_replicas),
            duplicate_window: self.duplicate_window,
            status_retention: self.status_retention,
            storage: if self.memory_streams {
                async_nats::jetstream::stream::StorageType::Memory
            } else {
                async_nats::jetstream::stream::StorageType::File
            },
            ..StreamSettings::default()
        }
    }

    /// Connects in the background: the process starts even while NATS is down, reports itself
    /// not ready, and the client keeps reconnecting. Credentials and TLS come from the auth
    /// flags, whose files are read now; `problems` learns why NATS refuses the connection.
    pub async fn connect(
        &self,
        name: &str,
        problems: &crate::NatsProblems,
    ) -> Result<async_nats::Client, crate::NatsConnectError> {
        let options = self
            .auth
            .apply(async_nats::ConnectOptions::new())?
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5));
        problems
            .watch(options)
            .connect(server_list(&self.nats_url))
            .await
            .map_err(crate::NatsConnectError::Connect)
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

/// The flags the gateway and the worker share: where NATS is, how to log, where functions live.
/// One struct, flattened into each binary's `Config` as `common`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub log: crate::LogArgs,
    #[command(flatten)]
    pub functions: FunctionArgs,
    #[command(flatten)]
    pub callbacks: crate::CallbackTargetArgs,
    /// Distinct function names in metric labels at most; calls to further functions count under
    /// `function_name="~other"`, so client-chosen names cannot grow the series without bound.
    #[arg(long, env = "FLOTILLA_MAX_FUNCTION_SERIES", default_value_t = crate::DEFAULT_FUNCTION_SERIES)]
    pub max_function_series: usize,
}

/// Where functions live and how they are reached: the URL template, the optional policy file, and
/// the TLS of `https://` functions. Both binaries take these.
#[derive(Debug, Clone, clap::Args)]
pub struct FunctionArgs {
    /// Base URL of a function (`http://` or `https://`): `{name}` is the full name, `{base}` the
    /// name without namespace, `{namespace}` the namespace. The call's path suffix and query are
    /// appended.
    #[arg(long, env = "FLOTILLA_FUNCTION_URL_TEMPLATE", default_value = DEFAULT_URL_TEMPLATE)]
    pub function_url_template: String,
    /// TOML file of per-function policies (url, concurrency, rate, timeout, retry).
    #[arg(long, env = "FLOTILLA_POLICIES")]
    pub policies: Option<std::path::PathBuf>,
    /// PEM file of CA certificates trusted for `https://` functions, on top of the system's roots:
    /// functions whose certificates a private CA signed.
    #[arg(long, env = "FLOTILLA_FUNCTION_CA_FILE")]
    pub function_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) shown to `https://` functions that ask for one (mutual
    /// TLS), with `--function-key-file`.
    #[arg(
        long,
        env = "FLOTILLA_FUNCTION_CERT_FILE",
        requires = "function_key_file"
    )]
    pub function_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `--function-cert-file`.
    #[arg(
        long,
        env = "FLOTILLA_FUNCTION_KEY_FILE",
        requires = "function_cert_file"
    )]
    pub function_key_file: Option<std::path::PathBuf>,
}

impl FunctionArgs {
    /// The policy table over `defaults`, reading the policy file when one is given.
    pub fn load(&self, defaults: FunctionPolicy) -> Result<Policies, PolicyError> {
        match &self.policies {
            Some(path) => Policies::from_file(
                &path.display().to_string(),
                defaults,
                self.function_url_template.clone(),
            ),
            None => Policies::new(defaults, self.function_url_template.clone()),
        }
    }

    /// The TLS set-up of `https://` functions: the system's roots, the CA file and the client
    /// certificate, every file read now (an unreadable one is a configuration error).
    pub fn tls(&self) -> Result<crate::FunctionTls, crate::FunctionTlsError> {
        let client = self
            .function_cert_file
            .as_deref()
            .zip(self.function_key_file.as_deref());
        crate::FunctionTls::load(self.function_ca_file.as_deref(), client)
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

//! The flags every binary of the fleet shares: where NATS is and how streams are laid out, and
//! where functions live. One definition, so the gateway and the workers read them alike.

use std::time::Duration;

use flotilla_queue::policy::DEFAULT_URL_TEMPLATE;
use flotilla_queue::topology::StreamSettings;
use flotilla_queue::{DurationError, FunctionPolicy, Policies, PolicyError, parse_duration};

/// The clap value parser of every duration flag: the syntax of the policy file (`250ms`,
/// `1m30s`, a bare number of seconds), so a value means the same in a flag and in the file.
/// Give its flags `allow_hyphen_values = true`: clap otherwise takes `-1s` for a short flag and
/// says `unexpected argument '-1'`, where this parser says the duration cannot be negative.
pub fn duration_arg(s: &str) -> Result<Duration, DurationError> {
    parse_duration(s)
}

/// Why a size flag's value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a size: give bytes, or a number with KiB, MiB, GiB or TiB (or KB, MB, GB, TB)"
)]
pub struct SizeError(String);

/// The clap value parser of size flags: bytes (`1073741824`) or a whole number with a unit
/// (`512MiB`, `1GiB`, `2GB`).
pub fn size_arg(s: &str) -> Result<u64, SizeError> {
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(SizeError(s.to_owned())),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| SizeError(s.to_owned()))
}

/// Where NATS is and how the fleet's streams are laid out. In `--help`, under "NATS".
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsArgs {
    /// NATS server URLs, comma separated (every node of a cluster, so a client survives one
    /// node's loss).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How often the client pings its NATS server. When three pings in a row go unanswered the
    /// connection is taken for dead and the client moves to another server of the cluster, so
    /// a process whose node is cut off moves on within about three intervals instead of
    /// waiting for TCP to give up.
    #[arg(long, env = "FLOTILLA_NATS_PING_INTERVAL", default_value = "1s",
          value_parser = duration_arg, allow_hyphen_values = true)]
    pub nats_ping_interval: Duration,
    /// Shard count. Unset: adopt the count stored in NATS (or 4 when none is stored). Set: must
    /// equal the stored count, else the process refuses to start.
    #[arg(long, env = "FLOTILLA_SHARDS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,
    /// Replicas of each stream this process creates in a NATS cluster; 1 on a single server. An
    /// existing stream keeps its own count; a difference is logged at start.
    #[arg(long, env = "FLOTILLA_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// How long a client's `X-Call-Id` or `Idempotency-Key` de-duplicates a retried POST.
    #[arg(long, env = "FLOTILLA_DUPLICATE_WINDOW", default_value = "2m",
          value_parser = duration_arg, allow_hyphen_values = true)]
    pub duplicate_window: Duration,
    /// Create streams in memory instead of on disk: faster, but a NATS restart loses queued
    /// calls. An existing stream keeps its own storage; a difference is logged at start.
    #[arg(long, env = "FLOTILLA_MEMORY_STREAMS", default_value_t = false)]
    pub memory_streams: bool,
    /// Keep each asynchronous call's status (and, where the policy says so, its result) in NATS
    /// for `GET`/`DELETE /async-call/<id>`. `false` saves the writes; gateway and workers should
    /// agree.
    #[arg(long, env = "FLOTILLA_CALL_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    pub call_status: bool,
    /// How long a call's status and kept result are kept after their last change.
    #[arg(long, env = "FLOTILLA_STATUS_RETENTION", default_value = "24h",
          value_parser = duration_arg, allow_hyphen_values = true)]
    pub status_retention: Duration,
    /// What NATS may hold for call status, all status streams together (bytes, or `512MiB`,
    /// `4GiB`): when it is reached, the oldest records go first, whatever the retention.
    /// Applied to the streams by every process that starts, so gateway and workers should
    /// agree. Sizing: `docs/call-status.md`.
    #[arg(long, env = "FLOTILLA_STATUS_BUDGET", default_value = "1GiB", value_parser = size_arg)]
    pub status_budget: u64,
    #[command(flatten)]
    pub auth: crate::nats_auth::NatsAuthArgs,
}

impl NatsArgs {
    pub fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            replicas: usize::from(self.stream_replicas),
            duplicate_window: self.duplicate_window,
            status_retention: self.status_retention,
            status_budget: flotilla_queue::topology::StatusBudget {
                bytes: self.status_budget,
            },
            storage: if self.memory_streams {
                async_nats::jetstream::stream::StorageType::Memory
            } else {
                async_nats::jetstream::stream::StorageType::File
            },
            ..StreamSettings::default()
        }
    }

    /// Checks what can be checked without connecting: that `--nats-url` names servers the
    /// client can parse, and that the credential and TLS flags can work. The gateway and the
    /// worker call it from their `Config::check`, so a mistake is one line and exit 64 before
    /// anything starts, alike on both.
    pub fn check(&self) -> Result<(), crate::NatsConnectError> {
        nats_servers(&self.nats_url)?;
        if self.nats_ping_interval.is_zero() {
            return Err(crate::NatsConnectError::NoPings);
        }
        self.auth.check()
    }

    /// Connects in the background: the process starts even while NATS is down, reports itself
    /// not ready, and the client keeps reconnecting. Credentials and TLS come from the auth
    /// flags, whose files are read now; `problems` learns why NATS refuses the connection.
    pub async fn connect(
        &self,
        name: &str,
        problems: &crate::NatsProblems,
    ) -> Result<async_nats::Client, crate::NatsConnectError> {
        let servers = nats_servers(&self.nats_url)?;
        let options = self
            .auth
            .apply(async_nats::ConnectOptions::new())?
            .name(name)
            .retry_on_initial_connect()
            .ping_interval(self.nats_ping_interval)
            // A server that does not complete the handshake in this time is skipped for the
            // next; a node cut off from the network would otherwise hold the reconnect longer.
            .connection_timeout(CONNECT_TIMEOUT);
        problems
            .watch(options, &redacted_urls(&self.nats_url))
            .connect(servers)
            .await
            .map_err(crate::NatsConnectError::Connect)
    }
}

/// How long a NATS server may take to accept a connection and complete the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers of a comma-separated `--nats-url`. async-nats parses one URL per string, so a
/// cluster's list must be split before it connects (else it fails with a server-parse error).
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The servers of a comma-separated `--nats-url`, parsed as the client will parse them: a URL it
/// cannot use (a typo in the port, an `http://` scheme, an empty list) is a configuration error
/// that names the flag and the URL (without any user or password in it).
pub fn nats_servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, crate::NatsConnectError> {
    let list = server_list(urls);
    if list.is_empty() {
        return Err(crate::NatsConnectError::NoNatsUrl);
    }
    list.into_iter()
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|source| {
                crate::NatsConnectError::BadNatsUrl {
                    url: without_credentials(url),
                    source,
                }
            })
        })
        .collect()
}

/// A comma-separated `--nats-url` as log lines and errors show it: every server without the user
/// and password it may carry.
pub fn redacted_urls(urls: &str) -> String {
    server_list(urls)
        .into_iter()
        .map(without_credentials)
        .collect::<Vec<_>>()
        .join(",")
}

/// `url` without the user and password it may carry (`nats://user:pass@host:4222` becomes
/// `nats://host:4222`), for log lines and error messages: credentials are never printed.
/// Works on text the URL parser refuses too, since those are the URLs an error line quotes.
pub fn without_credentials(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_owned(),
    }
}

/// The flags the gateway and the worker share: where NATS is, how to log, where functions live.
/// One struct, flattened into each binary's `Config` as `common`. Each part sets its `--help`
/// heading (`next_help_heading`), which stays set for the flags after it: every flag of a
/// binary's own `Config` therefore names its `help_heading`.
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
    #[arg(long, env = "FLOTILLA_MAX_FUNCTION_SERIES",
          default_value_t = crate::DEFAULT_FUNCTION_SERIES, help_heading = "Logging and metrics")]
    pub max_function_series: usize,
}

/// Where functions live and how they are reached: the URL template, the optional policy file, and
/// the TLS of `https://` functions. Both binaries take these.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Functions")]
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
    fn sizes_take_bytes_or_a_unit() {
        use super::size_arg;
        assert_eq!(size_arg("1GiB"), Ok(1 << 30));
        assert_eq!(size_arg("512MiB"), Ok(512 << 20));
        assert_eq!(size_arg("2 GB"), Ok(2_000_000_000));
        assert_eq!(size_arg("4096"), Ok(4096));
        for bad in ["", "0", "1.5GiB", "GiB", "1gib", "-1", "99999999999TiB"] {
            assert!(size_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pings_are_on_by_default_and_cannot_be_turned_off() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            nats: super::NatsArgs,
        }
        let parse = |args: &[&str]| {
            Flags::try_parse_from([&["test"], args].concat())
                .unwrap()
                .nats
        };
        let defaults = parse(&[]);
        assert_eq!(
            defaults.nats_ping_interval,
            std::time::Duration::from_secs(1)
        );
        assert!(defaults.check().is_ok());
        let e = parse(&["--nats-ping-interval", "0s"]).check().unwrap_err();
        assert!(e.is_config());
        assert_eq!(e.to_string(), "--nats-ping-interval must be above zero");
        let e = Flags::try_parse_from(["test", "--nats-ping-interval", "-1s"]);
        assert!(e.is_err());
    }

    #[test]
    fn a_cluster_url_list_is_split() {
        assert_eq!(
            super::server_list("nats://a:1, nats://b:2,,nats://c:3"),
            ["nats://a:1", "nats://b:2", "nats://c:3"]
        );
        assert_eq!(super::server_list("nats://a:1"), ["nats://a:1"]);
    }

    #[test]
    fn a_url_the_client_cannot_use_is_a_configuration_error() {
        let servers = super::nats_servers("nats://a:1, tls://b:2,c").unwrap();
        assert_eq!(servers.len(), 3);
        for (urls, says) in [
            (
                "nats://127.0.0.1:42x22",
                "--nats-url nats://127.0.0.1:42x22: ",
            ),
            ("http://127.0.0.1:4222", "invalid scheme"),
            ("nats://a:1,nats://[::1", "--nats-url nats://[::1: "),
            (" , ", "--nats-url names no server"),
        ] {
            let e = super::nats_servers(urls).unwrap_err();
            assert!(e.is_config(), "{urls}: {e}");
            let line = e.to_string();
            assert!(line.contains(says), "{urls}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
        // The password in a URL is never printed, even when the URL is refused.
        let e = super::nats_servers("nats://gw:s3cret@nats:42x22").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("nats://nats:42x22"), "{e}");
    }

    #[test]
    fn credentials_are_cut_from_urls() {
        for (url, shown) in [
            ("nats://user:pass@nats:4222", "nats://nats:4222"),
            ("user:pass@nats:4222", "nats:4222"),
            ("nats://nats:4222", "nats://nats:4222"),
            ("nats://token@nats:4222/x?y=a@b", "nats://nats:4222/x?y=a@b"),
            ("tls://u:p@w@h", "tls://h"),
        ] {
            assert_eq!(super::without_credentials(url), shown, "{url}");
        }
        assert_eq!(
            super::redacted_urls("nats://a:p@n1:4222, nats://n2:4222"),
            "nats://n1:4222,nats://n2:4222"
        );
    }
}

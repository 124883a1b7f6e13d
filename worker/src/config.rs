//! The worker's configuration: one typed struct of flags, each with an `env` twin, checked once by
//! `check()` (which also reads the policy file, once) before anything starts, so a bad setting is one clear line and exit 64.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_queue::{FunctionPolicy, Policies, RetryPolicy};
use flotilla_runtime::{CommonArgs, duration_arg};

use crate::WorkerError;
use crate::signing::Signers;

/// Flags of `flotilla-worker`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flotilla-worker",
    version,
    about = "Flotilla worker shard: pulls asynchronous calls from JetStream and runs them"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Shards this worker serves (repeat the flag or give a comma list). None: every shard, which
    /// suits small fleets; large fleets run replicas per shard to spread the load.
    #[arg(
        long = "shard",
        env = "FLOTILLA_WORKER_SHARDS",
        value_delimiter = ',',
        help_heading = "Worker"
    )]
    pub shard: Vec<u32>,

    /// Address of the admin server (/healthz, /readyz, /metrics). Not the call path: the worker
    /// serves no calls over HTTP, it only makes them.
    #[arg(
        long,
        env = "FLOTILLA_WORKER_LISTEN",
        default_value = "0.0.0.0:8081",
        help_heading = "Worker"
    )]
    pub listen: SocketAddr,

    /// Default calls in flight per function across every replica. Under adaptive control (the
    /// default) the ceiling of the learned limit; with `--adaptive false`, or for a function
    /// whose policy sets `concurrency`, the fixed limit.
    #[arg(
        long,
        env = "FLOTILLA_CONCURRENCY",
        default_value_t = 100,
        help_heading = "Function defaults"
    )]
    pub concurrency: u32,

    /// Learn each function's concurrency from its answers (429, 503 with `Retry-After`), so a
    /// function with bounded capacity gets calls as fast as it takes them. `false` makes
    /// `--concurrency` a fixed limit for every function; `adaptive` in the policy file decides
    /// per function.
    #[arg(
        long,
        env = "FLOTILLA_ADAPTIVE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL",
        help_heading = "Function defaults"
    )]
    pub adaptive: bool,

    /// Under adaptive control, the calls in flight per function each replica keeps trying
    /// whatever the function answers.
    #[arg(
        long,
        env = "FLOTILLA_MIN_CONCURRENCY",
        default_value_t = 1,
        help_heading = "Function defaults"
    )]
    pub min_concurrency: u32,

    /// Default calls in flight per function in this replica, so one replica cannot take the
    /// whole cluster budget while others idle. Unset: equal to `--concurrency`.
    #[arg(
        long,
        env = "FLOTILLA_REPLICA_CONCURRENCY",
        help_heading = "Function defaults"
    )]
    pub replica_concurrency: Option<u32>,

    /// Default calls started per second per function across every replica of its shard (each
    /// live replica takes an equal share, counted by heartbeat), so a platform team's limit holds
    /// however many replicas run. Unset: unlimited.
    #[arg(long, env = "FLOTILLA_RATE", help_heading = "Function defaults")]
    pub rate: Option<u32>,

    /// Default deadline of one function call; past it the call counts as a 504.
    #[arg(long, env = "FLOTILLA_TIMEOUT", default_value = "60s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Function defaults")]
    pub timeout: Duration,

    /// Default attempts per call, the first included. Reported to callbacks as `X-Retry-Max`
    /// (attempts - 1).
    #[arg(
        long,
        env = "FLOTILLA_RETRY_ATTEMPTS",
        default_value_t = 3,
        help_heading = "Retries"
    )]
    pub retry_attempts: u32,

    /// Default statuses that a retry policy retries (comma list).
    #[arg(
        long,
        env = "FLOTILLA_RETRY_STATUSES",
        value_delimiter = ',',
        default_value = "408,429,500,502,503,504",
        help_heading = "Retries"
    )]
    pub retry_statuses: Vec<u16>,

    /// Default shortest wait before a retry.
    #[arg(long, env = "FLOTILLA_RETRY_MIN_BACKOFF", default_value = "500ms",
          value_parser = duration_arg, allow_hyphen_values = true, help_heading = "Retries")]
    pub retry_min_backoff: Duration,

    /// Default longest wait before a retry.
    #[arg(long, env = "FLOTILLA_RETRY_MAX_BACKOFF", default_value = "60s",
          value_parser = duration_arg, allow_hyphen_values = true, help_heading = "Retries")]
    pub retry_max_backoff: Duration,

    /// Retries that may wait at once in each shard: the `max_ack_pending` of the shard's retry
    /// consumer, which holds every waiting retry as an unacknowledged message (not the function's
    /// consumer, so waiting retries never take a function's concurrency). Beyond it, further
    /// retries wait undelivered in the stream and run late, never lost.
    #[arg(
        long,
        env = "FLOTILLA_RETRY_MAX_WAITING",
        default_value_t = 100_000,
        help_heading = "Retries"
    )]
    pub retry_max_waiting: u32,

    /// How long NATS waits for an ack before it redelivers a call. Short, so a crashed worker's
    /// calls come back quickly; long calls stay alive with progress acks every third of it.
    #[arg(long, env = "FLOTILLA_ACK_WAIT", default_value = "30s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Worker")]
    pub ack_wait: Duration,

    /// Deliveries of one message after which the worker dead-letters it (kind `redelivered`)
    /// instead of calling the function again. Attempts are counted from the envelope, not from
    /// JetStream's delivery count, so a call that crashes the worker (or hangs it until it is
    /// killed) every time it runs would otherwise come back forever. 20 is far above what a
    /// healthy fleet produces from hand-backs at shutdown and `ack_wait` expiries (each costs one
    /// delivery), so only a call that never settles reaches it.
    #[arg(
        long,
        env = "FLOTILLA_MAX_DELIVERIES",
        default_value_t = 20,
        help_heading = "Retries"
    )]
    pub max_deliveries: u32,

    /// Callbacks waiting for a delivery permit. When full, calls wait to queue their callback,
    /// which holds their concurrency slot and so slows pulling (backpressure, never a drop).
    #[arg(
        long,
        env = "FLOTILLA_CALLBACK_QUEUE",
        default_value_t = 1024,
        help_heading = "Callbacks"
    )]
    pub callback_queue: usize,

    /// Callback deliveries in flight at once: the worker's load on callback receivers.
    #[arg(
        long,
        env = "FLOTILLA_CALLBACK_CONCURRENCY",
        default_value_t = 64,
        help_heading = "Callbacks"
    )]
    pub callback_concurrency: usize,

    /// Delivery attempts per callback on connection errors and 5xx answers, before the worker
    /// gives up (logged at warn, counted in `worker_callback_failures_total`).
    #[arg(
        long,
        env = "FLOTILLA_CALLBACK_ATTEMPTS",
        default_value_t = 3,
        help_heading = "Callbacks"
    )]
    pub callback_attempts: u32,

    /// Deadline of one callback delivery attempt.
    #[arg(long, env = "FLOTILLA_CALLBACK_TIMEOUT", default_value = "10s",
          value_parser = duration_arg, allow_hyphen_values = true, help_heading = "Callbacks")]
    pub callback_timeout: Duration,

    /// Completion reports waiting to be published. When full, reports are dropped and counted
    /// (`worker_reports_dropped_total`): they are statistics, never needed for delivery.
    #[arg(
        long,
        env = "FLOTILLA_REPORT_QUEUE",
        default_value_t = 4096,
        help_heading = "Worker"
    )]
    pub report_queue: usize,

    /// Calls in flight in this replica across all its functions. Each call holds a socket to its
    /// function, so this is what keeps a replica serving many functions within its open-files
    /// limit; it is shared equally among the functions that have work. Unset: half of the
    /// open-files limit left after 256 for NATS and the process, at most 10,000 (the worker
    /// raises its soft limit to the hard limit at start).
    #[arg(long, env = "FLOTILLA_MAX_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..),
          help_heading = "Worker")]
    pub max_in_flight: Option<u32>,

    /// File of `whsec_<base64>` secrets, one per line: every callback is signed with each (Standard
    /// Webhooks `webhook-signature`), so a receiver can rotate. A function's
    /// `callback_signing_secrets_file` in the policy file replaces it for that function.
    #[arg(
        long,
        env = "FLOTILLA_CALLBACK_SIGNING_SECRETS_FILE",
        help_heading = "Callbacks"
    )]
    pub callback_signing_secrets_file: Option<String>,

    /// A call not started within this long of being accepted is dead-lettered as `expired`
    /// (callback status 410) instead of run; `max_age` in the policy file decides per function.
    /// Unset: no limit.
    #[arg(long, env = "FLOTILLA_MAX_AGE", value_parser = duration_arg, allow_hyphen_values = true,
          help_heading = "Function defaults")]
    pub max_age: Option<Duration>,

    /// Keep every function's final answer for `GET /async-call/<id>/result` (with call status on);
    /// `keep_results` in the policy file decides per function.
    #[arg(
        long,
        env = "FLOTILLA_KEEP_RESULTS",
        default_value_t = false,
        help_heading = "Function defaults"
    )]
    pub keep_results: bool,

    /// Kept answers larger than this are not stored; their status says so.
    #[arg(long, env = "FLOTILLA_MAX_RESULT_BYTES",
          default_value_t = flotilla_queue::policy::DEFAULT_MAX_RESULT_BYTES,
          help_heading = "Function defaults")]
    pub max_result_bytes: u64,

    /// On SIGTERM, how long in-flight calls and their callbacks may take to finish before the
    /// rest is handed back to NATS for another replica. `--shutdown-grace` is the same flag, the
    /// gateway's name for it.
    #[arg(long, env = "FLOTILLA_GRACE", default_value = "30s", value_parser = duration_arg,
          allow_hyphen_values = true, visible_alias = "shutdown-grace", help_heading = "Shutdown")]
    pub grace: Duration,

    /// How often each shard's wait stream is asked which functions have calls waiting there (moved
    /// by another replica, or left by one that stopped), so this replica helps drain them.
    #[arg(long, env = "FLOTILLA_DISCOVERY_INTERVAL", default_value = "250ms",
          value_parser = duration_arg, allow_hyphen_values = true, help_heading = "Worker")]
    pub discovery_interval: Duration,

    /// How long a function's consumer on the wait stream outlives its last waiting call: NATS
    /// removes it after this time unpulled (`inactive_threshold`), so consumers of functions that
    /// no longer reach a limit do not pile up.
    #[arg(long, env = "FLOTILLA_CONSUMER_IDLE", default_value = "5m", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Worker")]
    pub consumer_idle: Duration,
}

impl Config {
    /// `--max-in-flight`, or its default from the open-files limit.
    pub fn max_in_flight(&self) -> usize {
        match self.max_in_flight {
            Some(n) => n as usize,
            None => crate::budget::default_max_in_flight(flotilla_runtime::open_files_limit()),
        }
    }

    /// Checks every setting that can be checked without NATS and reads the policy file, once:
    /// what `run` needs, in a value that cannot hold an unchecked setting.
    pub fn check(self) -> Result<ValidConfig, WorkerError> {
        self.validate_flags()?;
        self.common.nats.check()?;
        let policies = self.policies()?;
        let signers = Signers::load(self.callback_signing_secrets_file.as_deref(), &policies)?;
        let callback_targets = self.common.callbacks.policy()?;
        let function_tls = self.common.functions.tls()?;
        Ok(ValidConfig {
            config: self,
            policies,
            signers,
            callback_targets: std::sync::Arc::new(callback_targets),
            function_tls,
        })
    }

    /// The flags' own rules, without reading any file.
    fn validate_flags(&self) -> Result<(), WorkerError> {
        let bad = |m: String| Err(WorkerError::Config(m));
        if self.ack_wait < Duration::from_millis(300) {
            return bad(format!(
                "--ack-wait {:?} is below 300ms: progress acks every third of it would flood NATS",
                self.ack_wait
            ));
        }
        if self.callback_queue == 0 || self.callback_concurrency == 0 {
            return bad("--callback-queue and --callback-concurrency must be at least 1".into());
        }
        if self.callback_attempts == 0 {
            return bad("--callback-attempts must be at least 1".into());
        }
        if self.callback_timeout.is_zero() {
            return bad("--callback-timeout must be above zero".into());
        }
        if self.max_deliveries < 2 {
            return bad(format!(
                "--max-deliveries {} is below 2: a call handed back once at shutdown would be dead-lettered",
                self.max_deliveries
            ));
        }
        if self.retry_max_waiting == 0 {
            return bad("--retry-max-waiting must be at least 1".into());
        }
        if self.retry_statuses.iter().any(|s| !(100..=599).contains(s)) {
            return bad(format!(
                "--retry-statuses {:?}: every status must be between 100 and 599",
                self.retry_statuses
            ));
        }
        if self.report_queue == 0 {
            return bad("--report-queue must be at least 1".into());
        }
        if self.discovery_interval < Duration::from_millis(10) {
            return bad("--discovery-interval must be at least 10ms".into());
        }
        if self.consumer_idle < Duration::from_secs(1) {
            return bad("--consumer-idle must be at least 1s".into());
        }
        if let Some(s) = self.common.nats.shards
            && let Some(k) = self.shard.iter().find(|&&k| k >= s)
        {
            return bad(format!("--shard {k} does not exist with --shards {s}"));
        }
        Ok(())
    }

    /// The default policy from the flags.
    pub fn default_policy(&self) -> FunctionPolicy {
        FunctionPolicy {
            url: None,
            concurrency: self.concurrency,
            adaptive: self.adaptive,
            min_concurrency: self.min_concurrency,
            replica_concurrency: self.replica_concurrency.unwrap_or(self.concurrency),
            key_concurrency: None,
            rate_per_second: self.rate,
            timeout: self.timeout,
            retry: RetryPolicy {
                attempts: self.retry_attempts,
                statuses: self.retry_statuses.clone(),
                retry_unreachable: true,
                min_backoff: self.retry_min_backoff,
                max_backoff: self.retry_max_backoff,
            },
            callback_signing_secrets_file: None,
            keep_results: self.keep_results,
            max_result_bytes: self.max_result_bytes,
            max_age: self.max_age,
        }
    }

    /// The policy table: flag defaults, overridden by the policy file when one is given.
    fn policies(&self) -> Result<Policies, WorkerError> {
        self.common
            .functions
            .load(self.default_policy())
            .map_err(WorkerError::Policy)
    }

    /// The shards to serve, given the agreed shard count; an absent list means all of them.
    pub fn served_shards(&self, count: u32) -> Result<Vec<u32>, WorkerError> {
        if let Some(k) = self.shard.iter().find(|&&k| k >= count) {
            return Err(WorkerError::Config(format!(
                "--shard {k} does not exist: NATS holds {count} shards"
            )));
        }
        let mut shards = if self.shard.is_empty() {
            (0..count).collect()
        } else {
            self.shard.clone()
        };
        shards.sort_unstable();
        shards.dedup();
        Ok(shards)
    }
}

/// A worker configuration that passed [`Config::check`]: the flags and the policy table read
/// from them, once.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    policies: Policies,
    signers: Signers,
    callback_targets: crate::callback::CallbackPolicy,
    function_tls: flotilla_runtime::FunctionTls,
}

impl ValidConfig {
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What `serve` runs on, read once.
    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            config: self.config,
            policies: self.policies,
            signers: self.signers,
            callback_targets: self.callback_targets,
            function_tls: self.function_tls,
        }
    }
}

/// A checked configuration taken apart for `serve`.
pub(crate) struct Parts {
    pub config: Config,
    pub policies: Policies,
    pub signers: Signers,
    pub callback_targets: crate::callback::CallbackPolicy,
    /// How `https://` functions are reached, their files read once.
    pub function_tls: flotilla_runtime::FunctionTls,
}

flotilla_runtime::server_config!(Config, ValidConfig, WorkerError);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["flotilla-worker"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        c.clone().check().unwrap();
        assert_eq!(c.ack_wait, Duration::from_secs(30));
        assert_eq!(c.grace, Duration::from_secs(30));
        assert_eq!(c.served_shards(4).unwrap(), vec![0, 1, 2, 3]);
        let p = c.default_policy();
        assert_eq!((p.concurrency, p.replica_concurrency), (100, 100));
        assert_eq!(p.retry, flotilla_queue::RetryPolicy::default());
        assert_eq!(c.retry_max_waiting, 100_000);
        assert_eq!(c.max_deliveries, 20);
    }

    #[test]
    fn help_groups_the_flags_for_operators() {
        use clap::CommandFactory;
        Config::command().debug_assert();
        let help = Config::command().render_long_help().to_string();
        for heading in [
            "NATS:",
            "Logging and metrics:",
            "Functions:",
            "Callbacks:",
            "Worker:",
            "Function defaults:",
            "Retries:",
            "Shutdown:",
        ] {
            assert!(help.contains(heading), "{heading} missing:\n{help}");
        }
        // The gateway's name for the grace period works here too.
        assert_eq!(
            parse(&["--shutdown-grace", "7s"]).grace,
            Duration::from_secs(7)
        );
    }

    #[test]
    fn shards_as_list_or_repeated() {
        let c = parse(&["--shard", "2,0", "--shard", "2"]);
        assert_eq!(c.served_shards(4).unwrap(), vec![0, 2]);
        assert!(c.served_shards(2).unwrap_err().is_config());
        let c = parse(&["--shards", "2", "--shard", "3"]);
        assert!(c.clone().check().unwrap_err().is_config());
    }

    #[test]
    fn refuses_bad_policies() {
        let c = parse(&["--concurrency", "4", "--replica-concurrency", "8"]);
        let e = c.clone().check().unwrap_err();
        assert!(e.to_string().contains("replica_concurrency"), "{e}");
        let c = parse(&["--ack-wait", "10ms"]);
        assert!(c.clone().check().is_err());
        let c = parse(&["--function-url-template", "ftp://{name}"]);
        assert!(c.clone().check().is_err());
        assert!(Config::try_parse_from(["flotilla-worker", "--timeout", "soon"]).is_err());
        let c = parse(&["--retry-min-backoff", "2s", "--retry-max-backoff", "1s"]);
        let e = c.clone().check().unwrap_err();
        assert!(e.to_string().contains("min_backoff"), "{e}");
        assert!(parse(&["--retry-attempts", "0"]).check().is_err());
        assert!(parse(&["--retry-statuses", "503,999"]).check().is_err());
        assert!(parse(&["--retry-max-waiting", "0"]).check().is_err());
        assert!(parse(&["--max-deliveries", "1"]).check().is_err());
        let e = parse(&["--function-ca-file", "/nonexistent/ca.pem"])
            .check()
            .unwrap_err();
        assert!(
            e.is_config()
                && e.to_string()
                    .contains("--function-ca-file /nonexistent/ca.pem"),
            "{e}"
        );
        assert!(
            Config::try_parse_from(["flotilla-worker", "--function-cert-file", "c.pem"]).is_err(),
            "a client certificate needs its key"
        );
        parse(&["--function-url-template", "https://{name}.fn:8443"])
            .check()
            .unwrap();
    }
}

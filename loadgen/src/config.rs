//! Every flag of `flotilla-loadgen`, with the reason it exists, and the checks that turn a bad
//! combination into one clear line before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use flotilla_runtime::duration_arg;
use serde::Serialize;

use crate::dist::LatencyDist;

#[derive(Debug, Parser)]
#[command(
    name = "flotilla-loadgen",
    version,
    about = "Load and measure a Flotilla fleet (an existing one, or a local one it starts), \
             against this machine's raw ceiling",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure the raw pipeline this machine allows, with the fleet's libraries and no features.
    Ceiling(CeilingArgs),
    /// Serve the built-in function alone until SIGTERM or Ctrl-C: something to call by hand
    /// (every `/<name>` answers, after `--latency`, with what it was sent).
    Function(FunctionArgs),
}

/// Flags of `flotilla-loadgen function`.
#[derive(Debug, Clone, Args)]
pub struct FunctionArgs {
    /// Where the function listens; point the workers' `--function-url-template` at
    /// `http://ADDR/{name}`.
    #[arg(
        long,
        env = "LOADGEN_FUNCTION_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,
    /// How long each call takes: `2s`, `uniform:1s..3s`, `exp:500ms`.
    #[arg(long, env = "LOADGEN_FUNCTION_LATENCY", default_value = "fixed:2s")]
    pub latency: LatencyDist,
}

/// Flags of the ceiling measurement, alone or inside a run.
#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// NATS to measure against. Unset: a temporary nats-server is started on a free port.
    #[arg(long, env = "LOADGEN_CEILING_NATS_URL", help_heading = "NATS")]
    pub nats_url: Option<String>,
    /// How long each HTTP-driven measurement runs (the full pipeline's load too); the pull
    /// measurements' backlogs are sized to last about as long.
    #[arg(long = "ceiling-duration", env = "LOADGEN_CEILING_DURATION", default_value = "2s",
          value_parser = duration_arg, allow_hyphen_values = true, help_heading = "Ceiling")]
    pub duration: Duration,
    /// Requests (or messages) in flight in each measurement: enough to saturate two cores.
    #[arg(
        long = "ceiling-concurrency",
        env = "LOADGEN_CEILING_CONCURRENCY",
        default_value_t = 64,
        help_heading = "Ceiling"
    )]
    pub concurrency: usize,
    /// Body bytes per request or message. A run uses its own `--body-size` instead.
    #[arg(
        long = "ceiling-body-size",
        env = "LOADGEN_CEILING_BODY_SIZE",
        default_value_t = 256,
        help_heading = "Ceiling"
    )]
    pub body_size: usize,
    /// Keep the measurement streams in memory (compare with a fleet started with memory streams).
    #[arg(
        long = "ceiling-memory-streams",
        env = "LOADGEN_CEILING_MEMORY_STREAMS",
        help_heading = "Ceiling"
    )]
    pub memory_streams: bool,
    /// Functions of the per-function measurement (one filtered consumer each, the backlog spread
    /// evenly). A run uses its own `--functions` instead; 1 skips that measurement.
    #[arg(
        long = "ceiling-functions",
        env = "LOADGEN_CEILING_FUNCTIONS",
        default_value_t = 1,
        help_heading = "Ceiling"
    )]
    pub functions: usize,
    /// Print the result as JSON on stdout.
    #[arg(long, env = "LOADGEN_JSON", help_heading = "Output")]
    pub json: bool,
    /// Credentials and TLS for `--nats-url`, as the gateway and the worker take them.
    #[command(flatten)]
    pub auth: flotilla_runtime::NatsAuthArgs,
}

impl CeilingArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.duration < Duration::from_millis(100) || self.duration > Duration::from_secs(600) {
            return Err(ConfigError::bound(
                "--ceiling-duration",
                "between 100ms and 10m",
            ));
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return Err(ConfigError::bound(
                "--ceiling-concurrency",
                "between 1 and 10000",
            ));
        }
        if self.body_size > 8 << 20 {
            return Err(ConfigError::bound("--ceiling-body-size", "at most 8 MiB"));
        }
        if let Some(urls) = &self.nats_url {
            flotilla_runtime::nats_servers(urls)?;
        }
        self.auth.check()?;
        Ok(())
    }
}

/// Flags of a load run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    // --- target ---
    /// Load an existing fleet through this gateway base URL (`http://host:8080`). Needs
    /// `--callback-listen` on an address the workers can reach.
    #[arg(
        long,
        env = "LOADGEN_GATEWAY",
        conflicts_with = "local",
        help_heading = "Target"
    )]
    pub gateway: Option<String>,
    /// Start everything on this machine: nats-server (temporary store), a gateway, shards ×
    /// replicas workers, a function server and a callback sink. The default when no
    /// `--gateway` is given.
    #[arg(long, env = "LOADGEN_LOCAL", help_heading = "Target")]
    pub local: bool,
    /// Where the callback sink listens. Default 127.0.0.1 on a free port, which only a local
    /// fleet can reach.
    #[arg(long, env = "LOADGEN_CALLBACK_LISTEN", help_heading = "Target")]
    pub callback_listen: Option<SocketAddr>,
    /// Enqueue calls without `X-Callback-Url`: the workers then make one HTTP request per call,
    /// not two, and a call counts as completed when it reaches the built-in function (by its
    /// `X-Call-Id`). Compares with the "pull → POST → ack" ceiling. Needs the built-in function:
    /// `--local`, or `--gateway` with `--function-listen`.
    #[arg(
        long,
        env = "LOADGEN_NO_CALLBACKS",
        help_heading = "Local fleet and built-in function"
    )]
    pub no_callbacks: bool,
    /// Calls per request: more than 1 sends them through `POST /async-batch/<name>` (NDJSON, a
    /// call a line) instead of one `/async-function` request each, and compares the enqueue rate
    /// with pipelined JetStream publishes. Closed loop only.
    #[arg(long, env = "LOADGEN_BATCH", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000),
          help_heading = "Load")]
    pub batch: usize,
    /// The share of calls sent with each `X-Priority` (batch line `priority`), as weights:
    /// `high=1,normal=90,low=9`. With the built-in function, the report gives each priority's
    /// start latency (accepted by the gateway to the call's arrival at the function). Default:
    /// no priority sent.
    #[arg(
        long,
        env = "LOADGEN_PRIORITY_MIX",
        value_name = "MIX",
        help_heading = "Load"
    )]
    pub priority_mix: Option<crate::mix::PriorityMix>,
    /// Send each call with one of N fairness keys (`X-Fairness-Key: key-<k>`, batch line
    /// `fairness_key`), drawn by `--key-skew`. With the built-in function, the report gives the
    /// start latency of the keys: the spread of each key's median and p99 across the keys.
    /// Default: no key sent.
    #[arg(long, env = "LOADGEN_FAIRNESS_KEYS", value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=1_000_000),
          help_heading = "Load")]
    pub fairness_keys: Option<u32>,
    /// Zipf exponent of the key choice with `--fairness-keys`: 0 spreads calls evenly, 1 gives
    /// `key-0` about N/H(N) times the average share.
    #[arg(
        long,
        env = "LOADGEN_KEY_SKEW",
        default_value_t = 0.0,
        help_heading = "Load"
    )]
    pub key_skew: f64,
    /// How the audit learns that a call ended: `callbacks` (each call carries the built-in
    /// sink's URL, and must reach it exactly once) or `status` (calls carry no callback; each is
    /// followed through `GET /async-call/<id>` until it is final, and counted by final state).
    #[arg(long, env = "LOADGEN_AUDIT", value_enum, default_value_t = AuditBy::Callbacks,
          help_heading = "Target")]
    pub audit: AuditBy,
    /// The callback URL given to the fleet when the listen address is not what workers dial
    /// (NAT, 0.0.0.0, a Kubernetes service). Default `http://<callback-listen>/callback`.
    #[arg(long, env = "LOADGEN_CALLBACK_URL", help_heading = "Target")]
    pub callback_url: Option<String>,

    /// With `--gateway`: also serve the built-in function here (with the `--function-*`
    /// settings), for a fleet whose workers are pointed at it
    /// (`--function-url-template http://ADDR/{name}`).
    #[arg(
        long,
        env = "LOADGEN_FUNCTION_LISTEN",
        requires = "gateway",
        help_heading = "Target"
    )]
    pub function_listen: Option<SocketAddr>,

    // --- local fleet ---
    /// Local fleet: shard streams of the fleet this run starts (its gateway's and workers'
    /// `--shards`). Not used with `--gateway`.
    #[arg(
        long,
        env = "LOADGEN_SHARDS",
        default_value_t = 2,
        help_heading = "Local fleet and built-in function"
    )]
    pub shards: u32,
    /// Local fleet: worker replicas per shard. Not used with `--gateway`.
    #[arg(
        long,
        env = "LOADGEN_REPLICAS",
        default_value_t = 1,
        help_heading = "Local fleet and built-in function"
    )]
    pub replicas: u32,
    /// Local fleet: calls in flight per function across a shard's replicas (the workers'
    /// `--concurrency`; the load's own is `--concurrency`).
    #[arg(
        long,
        env = "LOADGEN_WORKER_CONCURRENCY",
        default_value_t = 100,
        help_heading = "Local fleet and built-in function"
    )]
    pub worker_concurrency: u32,
    /// Local fleet: each worker's `--max-in-flight`, calls in flight across all its functions
    /// (the load's own is `--max-in-flight`). The default, 256, suits the built-in function,
    /// which answers at once on the same machine: more calls in flight only queue for the same
    /// cores. It is lowered when this process's open-files limit cannot hold it (slow functions,
    /// many of them: raise both).
    #[arg(
        long,
        env = "LOADGEN_WORKER_MAX_IN_FLIGHT",
        default_value_t = 256,
        help_heading = "Local fleet and built-in function"
    )]
    pub worker_max_in_flight: u32,
    /// Keep the local fleet's streams (and the ceiling's) in memory instead of on disk.
    #[arg(
        long,
        env = "LOADGEN_MEMORY_STREAMS",
        help_heading = "Local fleet and built-in function"
    )]
    pub memory_streams: bool,
    /// The local fleet's `--call-status`: `false` measures it without keeping call status.
    #[arg(long, env = "LOADGEN_CALL_STATUS", default_value_t = true, action = clap::ArgAction::Set,
          help_heading = "Local fleet and built-in function")]
    pub call_status: bool,
    /// Built-in function latency: `0`, `5ms` or `fixed:5ms`, `uniform:1ms..20ms`, `exp:10ms`
    /// (exponential with that mean).
    #[arg(
        long,
        env = "LOADGEN_FUNCTION_LATENCY",
        default_value = "fixed:0ms",
        help_heading = "Local fleet and built-in function"
    )]
    pub function_latency: LatencyDist,
    /// Share of built-in function calls answered 500, in 0..=1. Failed calls are retried by the
    /// workers' policy and then reported to the callback with status 500: they still complete.
    #[arg(
        long,
        env = "LOADGEN_FAILURE_RATE",
        default_value_t = 0.0,
        help_heading = "Local fleet and built-in function"
    )]
    pub failure_rate: f64,
    /// Calls the built-in function takes at once; beyond it it answers 429 at once, as an
    /// OpenFaaS function at its `max_inflight` does. A schedule changes it during the run:
    /// `4,16@10s,4@20s` (times from the start of the load, or of the drain with `--backlog`).
    #[arg(
        long,
        env = "LOADGEN_FUNCTION_CAPACITY",
        help_heading = "Local fleet and built-in function"
    )]
    pub function_capacity: Option<crate::capacity::Capacity>,
    /// The local workers' `--adaptive`: `false` sends each function up to
    /// `--worker-concurrency` calls whatever it answers.
    #[arg(long, env = "LOADGEN_ADAPTIVE", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "BOOL", help_heading = "Local fleet and built-in function")]
    pub adaptive: bool,
    /// Run the same load three times against `--function-capacity` (adaptive; greedy: no
    /// limit; tuned: a fixed concurrency equal to the first capacity) and print one table of
    /// completion time, ratio to the ideal, 429s and failed calls.
    #[arg(
        long,
        env = "LOADGEN_COMPARE_FLOW",
        requires = "function_capacity",
        help_heading = "Load"
    )]
    pub compare_flow: bool,
    /// Bytes in each built-in function response (what each callback carries).
    #[arg(
        long,
        env = "LOADGEN_RESPONSE_SIZE",
        default_value_t = 64,
        help_heading = "Local fleet and built-in function"
    )]
    pub response_size: usize,
    /// Enqueue every call before starting the workers, then time the drain: the workers'
    /// throughput alone, comparable with the pull/POST/ack ceiling. Local fleet only; needs
    /// `--count` or a bounded `--duration`.
    #[arg(
        long,
        env = "LOADGEN_BACKLOG",
        help_heading = "Local fleet and built-in function"
    )]
    pub backlog: bool,

    // --- load model ---
    /// Load model, open loop: calls sent per second, whatever the fleet answers (not a worker's
    /// rate limit). Several comma-separated rates make a stepped load, each step lasting
    /// `--step`. Latency counts from the intended send time.
    #[arg(
        long,
        env = "LOADGEN_RATE",
        value_delimiter = ',',
        conflicts_with = "concurrency",
        help_heading = "Load"
    )]
    pub rate: Vec<f64>,
    /// Length of each step of a stepped `--rate`. Default: `--duration` split evenly.
    #[arg(long, env = "LOADGEN_STEP", value_parser = duration_arg, allow_hyphen_values = true,
          help_heading = "Load")]
    pub step: Option<Duration>,
    /// Load model, closed loop: enqueue requests in flight at once, each sent when the previous
    /// one answered (not the workers' concurrency: that is `--worker-concurrency`). The default
    /// model (64) when no `--rate` is given.
    #[arg(long, env = "LOADGEN_CONCURRENCY", help_heading = "Load")]
    pub concurrency: Option<usize>,
    /// How long to send.
    #[arg(long, env = "LOADGEN_DURATION", default_value = "10s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Load")]
    pub duration: Duration,
    /// Stop after this many calls were sent (whichever of this and `--duration` comes first).
    #[arg(long, env = "LOADGEN_COUNT", help_heading = "Load")]
    pub count: Option<u64>,
    /// Distinct functions called (`lg-0` … `lg-N-1`). A comma list (`1,8,32,200,1000`) runs once
    /// per count, each with its own ceiling, and ends with one table of them all.
    #[arg(
        long = "functions",
        env = "LOADGEN_FUNCTIONS",
        value_delimiter = ',',
        default_value = "8",
        help_heading = "Load"
    )]
    pub function_counts: Vec<usize>,
    /// Zipf exponent of the function choice: 0 is uniform, 1 makes `lg-0` about N/H(N) times
    /// hotter than average; higher is more skewed.
    #[arg(
        long,
        env = "LOADGEN_SKEW",
        default_value_t = 0.8,
        help_heading = "Load"
    )]
    pub skew: f64,
    /// Request body bytes.
    #[arg(
        long,
        env = "LOADGEN_BODY_SIZE",
        default_value_t = 256,
        help_heading = "Load"
    )]
    pub body_size: usize,
    /// Load model, open loop: enqueue requests awaiting their answer at most; beyond it the sender
    /// waits, and the wait counts in latency, which starts at the intended send time (not the
    /// workers' cap: that is `--worker-max-in-flight`).
    #[arg(
        long,
        env = "LOADGEN_MAX_IN_FLIGHT",
        default_value_t = 10_000,
        help_heading = "Load"
    )]
    pub max_in_flight: usize,
    /// Load: deadline of one enqueue request to the gateway; past it the request counts as a
    /// `timeout` error (not a function's timeout).
    #[arg(long, env = "LOADGEN_TIMEOUT", default_value = "10s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Load")]
    pub timeout: Duration,
    /// After sending stops, how long the audit waits with no new callback before it calls the
    /// missing ones lost. Idle time, so a long backlog drain is not cut short.
    #[arg(long, env = "LOADGEN_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Load")]
    pub drain_timeout: Duration,
    /// Longest wait for stragglers in all, progress or not.
    #[arg(long, env = "LOADGEN_DRAIN_MAX", default_value = "5m", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Load")]
    pub drain_max: Duration,
    /// Skip the warm-up (one call per function, its callback awaited, before measuring). With
    /// it, the first calls of the run pay for consumer creation and new connections.
    #[arg(long, env = "LOADGEN_NO_WARMUP", help_heading = "Load")]
    pub no_warmup: bool,
    /// Seed of the function choice and the built-in function's sampling (repeatable runs).
    #[arg(long, env = "LOADGEN_SEED", default_value_t = 1, help_heading = "Load")]
    pub seed: u64,

    // --- ceiling ---
    /// Skip the ceiling measurement: no ratios in the report.
    #[arg(long, env = "LOADGEN_NO_CEILING", help_heading = "Ceiling and output")]
    pub no_ceiling: bool,
    #[command(flatten)]
    pub ceiling: CeilingRunArgs,

    // --- output ---
    /// Print the report as JSON on stdout (the table then goes to stderr).
    #[arg(long, env = "LOADGEN_JSON", help_heading = "Ceiling and output")]
    pub json: bool,
    /// Write an SVG of throughput over time and the latency distributions to this file.
    #[arg(long, env = "LOADGEN_PLOT", help_heading = "Ceiling and output")]
    pub plot: Option<std::path::PathBuf>,
    /// No progress line.
    #[arg(
        long,
        short,
        env = "LOADGEN_QUIET",
        help_heading = "Ceiling and output"
    )]
    pub quiet: bool,
}

/// The ceiling's knobs inside a run (its body size is the run's).
#[derive(Debug, Clone, Args)]
pub struct CeilingRunArgs {
    /// How long each ceiling measurement runs.
    #[arg(long = "ceiling-duration", env = "LOADGEN_CEILING_DURATION", default_value = "2s",
          value_parser = duration_arg, allow_hyphen_values = true,
          help_heading = "Ceiling and output")]
    pub ceiling_duration: Duration,
    /// Requests or messages in flight in each ceiling measurement.
    #[arg(
        long = "ceiling-concurrency",
        env = "LOADGEN_CEILING_CONCURRENCY",
        default_value_t = 64,
        help_heading = "Ceiling and output"
    )]
    pub ceiling_concurrency: usize,
}

/// How load is offered.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadModel {
    /// Calls sent at planned instants, whatever the system answers.
    Open {
        steps: Vec<crate::schedule::RateStep>,
    },
    /// A fixed number of requests in flight.
    Closed { concurrency: usize },
}

/// How load is offered, without its parameters: `load.model` in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Open,
    Closed,
}

impl ModelKind {
    /// As people read it in the table and the plot's title.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Open => "open loop",
            Self::Closed => "closed loop",
        }
    }
}

/// Which fleet a run measures: `target.kind` in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// One the run starts in this process (`--local`).
    Local,
    /// One that runs already (`--gateway`).
    Gateway,
}

impl RunArgs {
    /// Which fleet this run measures, as the report names it.
    pub fn target_kind(&self) -> TargetKind {
        if self.is_local() {
            TargetKind::Local
        } else {
            TargetKind::Gateway
        }
    }

    /// True when this run starts its own fleet.
    pub fn is_local(&self) -> bool {
        self.gateway.is_none()
    }

    pub fn load_model(&self) -> LoadModel {
        if self.rate.is_empty() {
            return LoadModel::Closed {
                concurrency: self.concurrency.unwrap_or(64),
            };
        }
        let step = self
            .step
            .unwrap_or_else(|| self.duration.div_f64(self.rate.len() as f64));
        let n = self.rate.len();
        let steps = self
            .rate
            .iter()
            .enumerate()
            .map(|(i, &rate)| crate::schedule::RateStep {
                rate,
                // The last step lasts until the run ends (by duration or count).
                duration: if i + 1 == n { None } else { Some(step) },
            })
            .collect();
        LoadModel::Open { steps }
    }

    /// The ceiling flags of this run.
    /// The function count of this run: the first of `--functions` (a sweep runs each in turn).
    pub fn functions(&self) -> usize {
        self.function_counts.first().copied().unwrap_or(1)
    }

    /// One run's flags per count of a `--functions` list.
    pub fn sweep(&self) -> Vec<RunArgs> {
        self.function_counts
            .iter()
            .map(|&n| RunArgs {
                function_counts: vec![n],
                ..self.clone()
            })
            .collect()
    }

    pub fn ceiling_args(&self) -> CeilingArgs {
        CeilingArgs {
            nats_url: None,
            duration: self.ceiling.ceiling_duration,
            concurrency: self.ceiling.ceiling_concurrency,
            body_size: self.body_size,
            memory_streams: self.memory_streams,
            functions: self.functions(),
            json: false,
            // The run's own temporary nats-server needs none.
            auth: flotilla_runtime::NatsAuthArgs::default(),
        }
    }

    /// Whether calls carry the sink's callback URL.
    pub fn callbacks_asked(&self) -> bool {
        !self.no_callbacks && self.audit == AuditBy::Callbacks
    }

    /// Refuses a combination of flags or a value that cannot run, with the first problem found
    /// in the order the checks are listed here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_combinations()?;
        self.check_target()?;
        self.check_fleet_bounds()?;
        self.check_load_bounds()?;
        if self.no_ceiling {
            return Ok(());
        }
        if self.body_size > 8 << 20 {
            return Err(ConfigError::CeilingBodySize);
        }
        self.ceiling_args().validate()
    }

    /// Flags that exclude each other whatever the target.
    fn check_combinations(&self) -> Result<(), ConfigError> {
        if self.batch > 1 && !self.rate.is_empty() {
            return Err(ConfigError::BatchWithRate);
        }
        if self.no_callbacks && self.audit == AuditBy::Status {
            return Err(ConfigError::NoCallbacksWithStatusAudit);
        }
        if self.compare_flow && (self.gateway.is_some() || self.function_counts.len() > 1) {
            return Err(ConfigError::CompareFlowNotLocal);
        }
        Ok(())
    }

    /// `--gateway` and `--callback-url`: usable URLs, and what a remote fleet needs besides.
    fn check_target(&self) -> Result<(), ConfigError> {
        if let Some(g) = &self.gateway {
            let uri: http::Uri = g.parse().map_err(|source| ConfigError::GatewayUrl {
                url: g.clone(),
                source,
            })?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(ConfigError::GatewayNotHttp(g.clone()));
            }
            if self.callback_listen.is_none() && self.callbacks_asked() {
                return Err(ConfigError::GatewayWithoutCallbackListen);
            }
            if self.backlog {
                return Err(ConfigError::BacklogNotLocal);
            }
            if self.no_callbacks && self.function_listen.is_none() {
                return Err(ConfigError::NoCallbacksWithoutFunctionListen);
            }
        }
        if let Some(u) = &self.callback_url {
            let uri: http::Uri = u.parse().map_err(|source| ConfigError::CallbackUrl {
                url: u.clone(),
                source,
            })?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(ConfigError::CallbackUrlNotHttp(u.clone()));
            }
        }
        Ok(())
    }

    /// The local fleet's and the built-in function's numbers.
    fn check_fleet_bounds(&self) -> Result<(), ConfigError> {
        let bounds = [
            (
                !(1..=64).contains(&self.shards),
                "--shards",
                "between 1 and 64",
            ),
            (
                !(1..=16).contains(&self.replicas),
                "--replicas",
                "between 1 and 16",
            ),
            (
                self.worker_concurrency == 0,
                "--worker-concurrency",
                "at least 1",
            ),
            (
                self.worker_max_in_flight == 0,
                "--worker-max-in-flight",
                "at least 1",
            ),
            (
                !(0.0..=1.0).contains(&self.failure_rate),
                "--failure-rate",
                "between 0 and 1",
            ),
            // Bodies above one NATS message travel through the fleet's object store (give the
            // gateway a --max-body-bytes that large, FLOTILLA_MAX_BODY_BYTES with --local).
            (self.body_size > 64 << 20, "--body-size", "at most 64 MiB"),
            (
                self.response_size > 8 << 20,
                "--response-size",
                "at most 8 MiB",
            ),
        ];
        first_broken(bounds)
    }

    /// The load's numbers.
    fn check_load_bounds(&self) -> Result<(), ConfigError> {
        if let Some(&r) = self
            .rate
            .iter()
            .find(|r| !(r.is_finite() && **r > 0.0 && **r <= 1e7))
        {
            return Err(ConfigError::Rate(r));
        }
        let bounds = [
            (
                self.step.is_some_and(|s| s.is_zero()),
                "--step",
                "above zero",
            ),
            (
                self.concurrency
                    .is_some_and(|c| !(1..=100_000).contains(&c)),
                "--concurrency",
                "between 1 and 100000",
            ),
            (
                self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600),
                "--duration",
                "above zero and at most 24h",
            ),
            (self.count == Some(0), "--count", "at least 1"),
            (
                self.function_counts.is_empty()
                    || !self
                        .function_counts
                        .iter()
                        .all(|n| (1..=10_000).contains(n)),
                "--functions",
                "between 1 and 10000 (or a comma list of such)",
            ),
            (
                !(self.skew.is_finite() && (0.0..=10.0).contains(&self.skew)),
                "--skew",
                "between 0 and 10",
            ),
            (
                !(self.key_skew.is_finite() && (0.0..=10.0).contains(&self.key_skew)),
                "--key-skew",
                "between 0 and 10",
            ),
            (self.max_in_flight == 0, "--max-in-flight", "at least 1"),
            (self.timeout.is_zero(), "--timeout", "above zero"),
        ];
        first_broken(bounds)
    }
}

/// The first of `(broken, flag, bound)` that is broken, as its error.
fn first_broken<const N: usize>(
    bounds: [(bool, &'static str, &'static str); N],
) -> Result<(), ConfigError> {
    match bounds.into_iter().find(|(broken, _, _)| *broken) {
        Some((_, flag, bound)) => Err(ConfigError::bound(flag, bound)),
        None => Ok(()),
    }
}

/// Why the flags cannot run: one line, which `main` prints before exiting 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value out of its range: `{flag} must be {bound}`.
    #[error("{flag} must be {bound}")]
    OutOfBounds {
        flag: &'static str,
        bound: &'static str,
    },
    #[error("--rate {0}: must be above 0 and at most 10,000,000")]
    Rate(f64),
    #[error("--batch sends in a closed loop: give --concurrency, not --rate")]
    BatchWithRate,
    #[error(
        "--no-callbacks counts calls at the built-in function; --audit status follows them \
         through the status API: choose one"
    )]
    NoCallbacksWithStatusAudit,
    #[error("--compare-flow starts a local fleet three times: no --gateway, one --functions count")]
    CompareFlowNotLocal,
    #[error("--gateway {url:?}: {source}")]
    GatewayUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("--gateway {0:?} must be http://host[:port]")]
    GatewayNotHttp(String),
    #[error(
        "--gateway needs --callback-listen ADDR, an address the workers can reach (the audit \
         counts callbacks)"
    )]
    GatewayWithoutCallbackListen,
    #[error("--backlog needs --local: it starts the workers itself")]
    BacklogNotLocal,
    #[error(
        "--no-callbacks with --gateway needs --function-listen: completions are then counted \
         where the built-in function receives the calls"
    )]
    NoCallbacksWithoutFunctionListen,
    #[error("--callback-url {url:?}: {source}")]
    CallbackUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("--callback-url {0:?} must be http://host[:port]/path")]
    CallbackUrlNotHttp(String),
    #[error("the ceiling measures bodies of at most 8 MiB: add --no-ceiling for larger ones")]
    CeilingBodySize,
    /// `--nats-url` or the NATS credentials and TLS flags of the ceiling; their own message.
    #[error(transparent)]
    Nats(#[from] flotilla_runtime::NatsConnectError),
}

impl ConfigError {
    fn bound(flag: &'static str, bound: &'static str) -> Self {
        Self::OutOfBounds { flag, bound }
    }
}

/// How the audit learns that a call ended (`--audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditBy {
    Callbacks,
    Status,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_says_which_flags_shape_the_load() {
        let help = Cli::command().render_long_help().to_string();
        for heading in [
            "Target:",
            "Local fleet and built-in function:",
            "Load:",
            "Ceiling and output:",
        ] {
            assert!(help.contains(heading), "{heading} missing:\n{help}");
        }
        // The flags that share a name with a worker flag say what they are.
        for flag in ["concurrency", "rate", "max-in-flight", "timeout", "shards"] {
            let arg = Cli::command()
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .map(|a| a.get_help().map(ToString::to_string).unwrap_or_default())
                .unwrap_or_default();
            assert!(
                arg.starts_with("Load") || arg.starts_with("Local fleet"),
                "--{flag}: {arg}"
            );
        }
    }

    #[test]
    fn defaults_are_a_valid_local_closed_loop() {
        let cli = Cli::try_parse_from(["flotilla-loadgen"]).unwrap();
        cli.run.validate().unwrap();
        assert!(cli.run.is_local());
        assert_eq!(cli.run.load_model(), LoadModel::Closed { concurrency: 64 });
    }

    #[test]
    fn stepped_rates_split_the_duration() {
        let cli =
            Cli::try_parse_from(["flotilla-loadgen", "--rate", "100,200", "--duration", "10s"])
                .unwrap();
        let LoadModel::Open { steps } = cli.run.load_model() else {
            panic!("open loop expected");
        };
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].duration, Some(Duration::from_secs(5)));
        assert_eq!(steps[1].duration, None);
    }

    #[test]
    fn remote_runs_need_a_callback_address() {
        let cli = Cli::try_parse_from(["flotilla-loadgen", "--gateway", "http://gw:8080"]).unwrap();
        assert!(
            cli.run
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--callback-listen")
        );
        assert!(
            Cli::try_parse_from(["flotilla-loadgen", "--rate", "5", "--concurrency", "2"]).is_err()
        );
    }

    #[test]
    fn each_refusal_is_one_line_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--batch", "8", "--rate", "10"],
                "--batch sends in a closed loop: give --concurrency, not --rate",
            ),
            (
                &["--no-callbacks", "--audit", "status"],
                "--no-callbacks counts calls at the built-in function; --audit status follows \
                 them through the status API: choose one",
            ),
            (
                &[
                    "--compare-flow",
                    "--function-capacity",
                    "4",
                    "--functions",
                    "1,2",
                ],
                "--compare-flow starts a local fleet three times: no --gateway, one --functions \
                 count",
            ),
            (
                &["--gateway", "ftp://gw"],
                r#"--gateway "ftp://gw" must be http://host[:port]"#,
            ),
            (
                &[
                    "--gateway",
                    "http://gw",
                    "--callback-listen",
                    "0.0.0.0:9",
                    "--backlog",
                ],
                "--backlog needs --local: it starts the workers itself",
            ),
            (
                &["--gateway", "http://gw", "--no-callbacks"],
                "--no-callbacks with --gateway needs --function-listen: completions are then \
                 counted where the built-in function receives the calls",
            ),
            (
                &["--callback-url", "https://me/cb"],
                r#"--callback-url "https://me/cb" must be http://host[:port]/path"#,
            ),
            (&["--shards", "65"], "--shards must be between 1 and 64"),
            (
                &["--worker-concurrency", "0"],
                "--worker-concurrency must be at least 1",
            ),
            (
                &["--failure-rate", "2"],
                "--failure-rate must be between 0 and 1",
            ),
            (
                &["--rate", "0"],
                "--rate 0: must be above 0 and at most 10,000,000",
            ),
            (
                &["--rate", "5", "--step", "0s"],
                "--step must be above zero",
            ),
            (
                &["--duration", "0s"],
                "--duration must be above zero and at most 24h",
            ),
            (
                &["--functions", "8,0"],
                "--functions must be between 1 and 10000 (or a comma list of such)",
            ),
            (&["--timeout", "0s"], "--timeout must be above zero"),
            (
                &["--body-size", "9000000"],
                "the ceiling measures bodies of at most 8 MiB: add --no-ceiling for larger ones",
            ),
            (
                &["--ceiling-duration", "50ms"],
                "--ceiling-duration must be between 100ms and 10m",
            ),
        ];
        for (args, says) in cases {
            let cli = Cli::try_parse_from(
                std::iter::once("flotilla-loadgen").chain(args.iter().copied()),
            )
            .unwrap();
            let refused = cli.run.validate().unwrap_err();
            assert_eq!(refused.to_string(), *says, "{args:?}");
        }
        let cli = Cli::try_parse_from(["flotilla-loadgen", "--gateway", "http://g w"]).unwrap();
        let refused = cli.run.validate().unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with(r#"--gateway "http://g w": "#),
            "{refused}"
        );
        assert!(
            std::error::Error::source(&refused).is_some(),
            "the URI's own error is kept"
        );
    }
}

//! Process plumbing shared by the Flotilla binaries: the global allocator, the NATS, function and
//! logging flags, tracing set-up, the shutdown signal, the accept loop of every HTTP server, the
//! open-files limit, the pooled HTTP client, the TLS set-up of `https://` functions, each server's
//! Prometheus recorder and the process edge (one line and exit 64 for a command line or
//! configuration that cannot run). One copy, so every binary behaves alike; kept out of
//! `flotilla-queue`, which holds only the contract.
//!
//! Nothing here ends the process: functions return errors or exit codes and each binary's `main`
//! decides.

/// Every Flotilla process allocates through mimalloc rather than the C library's allocator: a call
/// crosses tokio's worker threads, so most of its allocations are freed on another thread than
/// the one that made them, which glibc's arenas pay for in locks and consolidation
/// (`docs/dependencies.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod accept;
mod callback_targets;
mod chain;
mod exit;
mod flags;
mod function_tls;
mod http;
mod limits;
mod log;
mod nats_auth;
mod prometheus;
mod signal;

pub use accept::{accept_until, http1_server};
pub use callback_targets::{CallbackTargetArgs, CallbackTargets, Refused, RuleError, RuleProblem};
pub use chain::error_chain;
pub use exit::{EXIT_CONFIG, ServerConfig, config_failure, exit_status, parse_args, start_server};
pub use flags::{
    CommonArgs, FunctionArgs, NatsArgs, duration_arg, nats_servers, redacted_urls, server_list,
    without_credentials,
};
pub use function_tls::{FunctionTls, FunctionTlsError, tls_cause};
pub use http::{FunctionClient, PoolSettings, function_client, pooled_client};
pub use limits::{open_files_limit, raise_open_files_limit};
pub use log::{LogArgs, LogError, LogFormat, stderr_is_colour_terminal};
pub use nats_auth::{NatsAuthArgs, NatsConnectError, NatsProblems};
pub use prometheus::{
    DEFAULT_FUNCTION_SERIES, LATENCY_BUCKETS, OTHER_FUNCTIONS, Telemetry, render,
};
pub use signal::shutdown_signal;

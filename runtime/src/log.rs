//! Tracing set-up from the logging flags: console for people, JSON for log collectors, one
//! filter syntax. A bad filter is returned as an error for `main` to report, never a panic.
//! Colour only on a terminal: a log file or a collector gets no ANSI escapes.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging and metrics")]
pub struct LogArgs {
    /// `console` for people, `json` for log collectors.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Console)]
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `flotilla_worker=debug,info`. The NATS client's own
    /// lines (`async_nats`) are kept to warnings unless the filter names `async_nats`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

/// A `--log` filter that tracing cannot parse: a configuration error.
#[derive(Debug, thiserror::Error)]
#[error("--log {filter:?}: {source}")]
pub struct LogError {
    filter: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

impl LogArgs {
    /// Installs the global subscriber on stderr.
    pub fn init(&self) -> Result<(), LogError> {
        let filter = self.filter()?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(stderr_is_colour_terminal())
            .with_writer(std::io::stderr);
        // A second init (tests start several servers in one process) keeps the first subscriber.
        let _ = match self.log_format {
            LogFormat::Console => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        Ok(())
    }

    /// `--log`, with the NATS client kept to warnings unless the filter names it: the client
    /// logs every connection event at info without saying which server, and the fleet's own
    /// line (`NatsProblems::watch`) already reports each event once, with the server.
    fn filter(&self) -> Result<tracing_subscriber::EnvFilter, LogError> {
        let mut filter =
            tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|source| LogError {
                filter: self.log.clone(),
                source,
            })?;
        if !self.log.contains("async_nats")
            && let Ok(quiet) = "async_nats=warn".parse::<tracing_subscriber::filter::Directive>()
        {
            filter = filter.add_directive(quiet);
        }
        Ok(filter)
    }
}

/// Whether log lines on stderr may carry ANSI colour: only when stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>). Every binary's tracing set-up asks here.
pub fn stderr_is_colour_terminal() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_an_error_naming_the_flag() {
        let args = LogArgs {
            log_format: LogFormat::Console,
            log: "flotilla=loud".into(),
        };
        let e = args.init().unwrap_err();
        assert!(
            e.to_string().starts_with("--log \"flotilla=loud\": "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn the_nats_client_is_quiet_unless_named() {
        let filter = |log: &str| {
            LogArgs {
                log_format: LogFormat::Console,
                log: log.into(),
            }
            .filter()
            .unwrap()
            .to_string()
            .to_lowercase()
        };
        assert!(
            filter("info").contains("async_nats=warn"),
            "{}",
            filter("info")
        );
        let own = filter("async_nats=debug,info");
        assert!(!own.contains("async_nats=warn"), "{own}");
    }
}

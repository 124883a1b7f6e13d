//! The process edge of every binary: a command line or configuration that cannot run is one line
//! on stderr and exit status 64, whichever binary and whichever mistake. clap on its own exits 2
//! with a usage block; operators and their scripts should see one line and one status. What
//! clap would print on further lines and helps fix the mistake (the possible values, the flag
//! meant) is folded into that line.

use std::fmt::Display;
use std::net::SocketAddr;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use tokio::net::TcpListener;

use crate::LogArgs;

/// A server binary's configuration, as its `main` needs it: parsed from the command line (and
/// the `env` twins), checked once, with the logging flags and the address its listener binds.
pub trait ServerConfig: clap::Parser {
    /// The configuration once checked, which the server runs on.
    type Checked;
    type Error: Display;
    fn check(self) -> Result<Self::Checked, Self::Error>;
    fn log(checked: &Self::Checked) -> &LogArgs;
    fn listen(checked: &Self::Checked) -> SocketAddr;
}

/// Implements [`ServerConfig`] for a binary's `Config` whose checked form has `config()`, with
/// the logging flags in `common.log` and the listener's address in `listen`, as the gateway's
/// and the worker's do.
#[macro_export]
macro_rules! server_config {
    ($config:ty, $checked:ty, $error:ty) => {
        impl $crate::ServerConfig for $config {
            type Checked = $checked;
            type Error = $error;

            fn check(self) -> Result<$checked, $error> {
                <$config>::check(self)
            }

            fn log(checked: &$checked) -> &$crate::LogArgs {
                &checked.config().common.log
            }

            fn listen(checked: &$checked) -> std::net::SocketAddr {
                checked.config().listen
            }
        }
    };
}

/// The start of every server binary: parses and checks the configuration, starts logging and
/// binds the listener. `Err` carries the status `main` exits with, the line already printed: 0
/// after `--help` or `--version`, 64 for anything that keeps the server from starting.
pub async fn start_server<C: ServerConfig>() -> Result<(C::Checked, TcpListener), i32> {
    let config = C::check(parse_args::<C>()?).map_err(config_failure)?;
    C::log(&config).init().map_err(config_failure)?;
    let listen = C::listen(&config);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| config_failure(format!("--listen {listen}: {e}")))?;
    Ok((config, listener))
}

/// The status a server binary exits with once it stopped: 0 after a drain, 64 (one line on
/// stderr) for a configuration the server found it cannot run, 1 (logged as `failed`) for the
/// rest.
pub fn exit_status<E: Display>(
    stopped: Result<(), E>,
    is_config: impl Fn(&E) -> bool,
    failed: &str,
) -> i32 {
    match stopped {
        Ok(()) => 0,
        Err(e) if is_config(&e) => config_failure(e),
        Err(error) => {
            tracing::error!(%error, "{failed}");
            1
        }
    }
}

/// Exit status for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Parses the process's arguments (and their `env` twins) as `T`. `Err` carries the status
/// `main` exits with once clap's output is printed: 0 after `--help` or `--version`, 64 after the
/// one line of an unknown flag, a missing or an unparsable value.
pub fn parse_args<T: clap::Parser>() -> Result<T, i32> {
    T::try_parse().map_err(|e| match usage_line(&e) {
        None => {
            // Help and version text go to stdout; an unwritable stdout changes nothing.
            let _ = e.print();
            0
        }
        Some(line) => config_failure(line),
    })
}

/// Prints the one line of a configuration error on stderr and returns [`EXIT_CONFIG`], the status
/// `main` exits with.
pub fn config_failure(message: impl Display) -> i32 {
    eprintln!("configuration error: {message}");
    EXIT_CONFIG
}

/// The one line an argument error is reported with, or `None` for the help and version output
/// that clap reports as errors too.
fn usage_line(e: &clap::Error) -> Option<String> {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return None;
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let mut line = first.trim_start_matches("error: ").to_owned();
    // clap lists these on a line of its own, which the first line alone would lose.
    if let Some(ContextValue::Strings(values)) = e.get(ContextKind::ValidValue)
        && !values.is_empty()
    {
        line.push_str(&format!(" (possible values: {})", values.join(", ")));
    }
    if let Some(flag) = meant_flag(e) {
        line.push_str(&format!("; did you mean '{flag}'?"));
    }
    Some(line)
}

/// The flag an unknown `--flag` most likely meant, as clap suggests it (its `suggestions`
/// feature: the nearest long flag by string similarity).
fn meant_flag(e: &clap::Error) -> Option<String> {
    if !matches!(e.kind(), ErrorKind::UnknownArgument) {
        return None;
    }
    match e.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(flag)) => Some(flag.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    #[command(name = "probe", version)]
    struct Probe {
        #[arg(long, value_parser = crate::duration_arg, allow_hyphen_values = true)]
        wait: Option<Duration>,
        #[arg(long)]
        count: Option<u32>,
        #[arg(long, value_enum)]
        log_format: Option<crate::LogFormat>,
        #[arg(long, visible_alias = "shutdown-grace")]
        grace: Option<u32>,
    }

    fn line(args: &[&str]) -> Option<String> {
        let e = Probe::try_parse_from(std::iter::once("probe").chain(args.iter().copied()))
            .expect_err("an argument error");
        usage_line(&e)
    }

    #[test]
    fn argument_errors_are_one_line() {
        for (args, says) in [
            (&["--bogus"][..], "unexpected argument '--bogus'"),
            (&["--count", "many"], "invalid value 'many' for '--count"),
            (&["--wait", "soon"], "'soon' is not a duration"),
            (&["--wait"], "a value is required for '--wait"),
        ] {
            let line = line(args).expect("an error line");
            assert!(line.contains(says), "{args:?}: {line}");
            assert!(!line.contains('\n') && !line.starts_with("error"), "{line}");
        }
    }

    #[test]
    fn the_one_line_keeps_what_helps_fix_the_mistake() {
        for (args, says) in [
            (
                &["--log-format", "xml"][..],
                "invalid value 'xml' for '--log-format <LOG_FORMAT>' (possible values: console, json)",
            ),
            (&["--wait", "-1s"], "'-1s': a duration cannot be negative"),
            (
                &["--wiat", "1s"],
                "unexpected argument '--wiat' found; did you mean '--wait'?",
            ),
            (&["--log-fromat=json"], "did you mean '--log-format'?"),
            (
                &["--shutdown-grase", "3"],
                "did you mean '--shutdown-grace'?",
            ),
        ] {
            let line = line(args).expect("an error line");
            assert!(line.contains(says), "{args:?}: {line}");
            assert!(!line.contains('\n'), "{line}");
        }
        // Nothing near enough: no guess.
        let line = line(&["--bogus"]).expect("an error line");
        assert!(!line.contains("did you mean"), "{line}");
    }

    #[test]
    fn help_and_version_are_not_errors() {
        assert_eq!(line(&["--help"]), None);
        assert_eq!(line(&["--version"]), None);
    }
}

//! The `flotilla-loadgen` binary: parses flags, starts logging and hands over to the library.
//! Exit status: 0 when every accepted call completed, 1 when calls were lost or the run failed,
//! 64 for bad flags (one line on stderr).

use flotilla_loadgen::config::{Cli, Command};
use flotilla_runtime::{config_failure, parse_args};

fn main() -> std::process::ExitCode {
    let cli = match parse_args::<Cli>() {
        Ok(c) => c,
        Err(code) => std::process::exit(code),
    };
    let checked = match &cli.command {
        Some(Command::Ceiling(args)) => args.validate(),
        Some(Command::Function(_)) => Ok(()),
        None => cli.run.validate(),
    };
    if let Err(e) = checked {
        std::process::exit(config_failure(e));
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(flotilla_runtime::stderr_is_colour_terminal())
        .with_writer(std::io::stderr)
        .init();
    // A local fleet, its function and its sink hold both ends of every socket in this process.
    if let Err(error) = flotilla_runtime::raise_open_files_limit() {
        tracing::warn!(%error, "cannot raise the open-files limit");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flotilla-loadgen: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome: anyhow::Result<bool> = runtime.block_on(async move {
        match cli.command {
            Some(Command::Function(args)) => {
                flotilla_loadgen::function::serve_alone(&args).await?;
                Ok(true)
            }
            Some(Command::Ceiling(args)) => {
                flotilla_loadgen::ceiling::run_command(&args).await?;
                Ok(true)
            }
            None if cli.run.compare_flow => {
                let reports = flotilla_loadgen::flow::run(&cli.run).await?;
                println!("\n{}", flotilla_loadgen::flow::render(&cli.run, &reports));
                Ok(reports.iter().all(|(_, r)| r.audit.ok))
            }
            None if cli.run.function_counts.len() > 1 => {
                let reports = flotilla_loadgen::sweep::run(&cli.run).await?;
                println!("\n{}", flotilla_loadgen::sweep::render(&reports));
                Ok(reports.iter().all(|r| r.audit.ok))
            }
            None => {
                let report = flotilla_loadgen::run::run(&cli.run).await?;
                Ok(report.audit.ok)
            }
        }
    });
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("flotilla-loadgen: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The one line a failed run ends with: the error's message, then each cause in its chain that
/// the message does not already quote. The fleet's errors write their cause into their own
/// message and keep it as their source too, so printing the whole chain would repeat it.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot bind the sink: {0}")]
        Quoting(#[source] std::io::Error),
        #[error("cannot bind the sink")]
        Silent(#[source] std::io::Error),
    }

    #[test]
    fn a_cause_is_printed_once() {
        let refused = || std::io::Error::other("refused");
        assert_eq!(
            error_line(&Outer::Quoting(refused()).into()),
            "cannot bind the sink: refused"
        );
        assert_eq!(
            error_line(&Outer::Silent(refused()).into()),
            "cannot bind the sink: refused"
        );
    }
}

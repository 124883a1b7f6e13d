//! `--compare-flow`: the same load against a function of bounded capacity three ways (adaptive
//! concurrency; greedy, with no limit; tuned, with a fixed concurrency equal to the capacity),
//! then one table of completion time, ratio to the ideal, refusals and failed calls.

use std::fmt::Write as _;

use crate::config::RunArgs;
use crate::report::Report;
use crate::run::{self, RunError};

/// How the workers meet the function's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each function's limit learned from its refusals (the default).
    Adaptive,
    /// No limit but `--worker-concurrency`: refusals are failed attempts, retried per policy.
    Greedy,
    /// A fixed concurrency equal to the function's first capacity, as set by hand.
    Tuned,
}

impl Mode {
    pub const ALL: [Self; 3] = [Self::Adaptive, Self::Greedy, Self::Tuned];

    fn name(self) -> &'static str {
        match self {
            Self::Adaptive => "adaptive",
            Self::Greedy => "greedy",
            Self::Tuned => "tuned",
        }
    }

    /// `args` set up for this mode.
    pub fn args(self, args: &RunArgs) -> RunArgs {
        let mut one = RunArgs {
            compare_flow: false,
            ..args.clone()
        };
        match self {
            Self::Adaptive => one.adaptive = true,
            Self::Greedy => one.adaptive = false,
            Self::Tuned => {
                one.adaptive = false;
                if let Some(c) = &args.function_capacity {
                    one.worker_concurrency = c.first();
                }
            }
        }
        one
    }
}

/// Runs every mode in turn; the reports in [`Mode::ALL`]'s order.
pub async fn run(args: &RunArgs) -> Result<Vec<(Mode, Report)>, RunError> {
    let mut reports = Vec::new();
    for mode in Mode::ALL {
        reports.push((mode, run::run(&mode.args(args)).await?));
    }
    Ok(reports)
}

/// Calls that ended without a 2xx answer (their retries used up on refusals, most often).
fn failed(r: &Report) -> u64 {
    r.function_status
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n)
        .sum()
}

/// The comparison table.
pub fn render(args: &RunArgs, reports: &[(Mode, Report)]) -> String {
    let mut o = String::new();
    let capacity = args
        .function_capacity
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    let latency = args.function_latency.mean();
    let _ = writeln!(
        o,
        "function capacity {capacity}, latency {}, {} replica(s) per shard",
        args.function_latency, args.replicas
    );
    let _ = writeln!(
        o,
        "| mode | calls completed | time (s) | ideal (s) | time / ideal | 429s answered | 429s per call | failed calls | audit |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (mode, r) in reports {
        let completed = r.completion.completed;
        let ideal = args
            .function_capacity
            .as_ref()
            .map_or(0.0, |c| c.ideal(completed, latency).as_secs_f64());
        let refusals = r.function_refusals.unwrap_or(0);
        let _ = writeln!(
            o,
            "| {} | {completed} | {:.2} | {ideal:.2} | {:.2} | {refusals} | {:.3} | {} | {} |",
            mode.name(),
            r.completion.window_s,
            r.completion.window_s / ideal.max(f64::MIN_POSITIVE),
            refusals as f64 / completed.max(1) as f64,
            failed(r),
            if r.audit.ok { "OK" } else { "CALLS LOST" }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Cli;

    #[test]
    fn each_mode_sets_the_workers_up_its_way() {
        let cli = Cli::try_parse_from([
            "flotilla-loadgen",
            "--compare-flow",
            "--function-capacity",
            "4,16@10s",
            "--count",
            "100",
        ])
        .expect("parses");
        assert!(cli.run.validate().is_ok());
        let [adaptive, greedy, tuned] = Mode::ALL.map(|m| m.args(&cli.run));
        assert!(adaptive.adaptive && !greedy.adaptive && !tuned.adaptive);
        assert_eq!(greedy.worker_concurrency, 100);
        assert_eq!(tuned.worker_concurrency, 4);
        assert!(!adaptive.compare_flow, "each run is one run");
        assert!(
            Cli::try_parse_from(["flotilla-loadgen", "--compare-flow"]).is_err(),
            "a comparison needs a capacity"
        );
    }
}

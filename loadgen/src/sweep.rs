//! `--functions 1,8,32,200,1000`: one run per function count, each measuring its own ceilings in
//! the same run (the single-consumer ones and the one with a consumer per function at that
//! count), then one table of every count's drain as ratios to them.

use std::fmt::Write as _;

use crate::config::RunArgs;
use crate::numbers::thousands;
use crate::report::Report;
use crate::run::{self, RunError};

/// Runs every count of `args.function_counts` in turn; the reports in the same order.
pub async fn run(args: &RunArgs) -> Result<Vec<Report>, RunError> {
    let mut reports = Vec::new();
    for one in args.sweep() {
        reports.push(run::run(&one).await?);
    }
    Ok(reports)
}

/// The table a sweep ends with: per count, the completion rate and its ratio to the matching
/// single-consumer ceiling (pull→POST→ack without callbacks, pull→POST→POST→ack with them) and
/// to pull→POST→ack with a consumer per function, and the audit.
pub fn render(reports: &[Report]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| functions | completed/s | vs single-consumer ceiling | vs consumer-per-function ceiling | audit |"
    );
    let _ = writeln!(o, "|---:|---:|---:|---:|---|");
    for r in reports {
        let (single, per_function) =
            r.ratios
                .as_ref()
                .map_or(("no ceiling".to_owned(), "no ceiling".to_owned()), |x| {
                    (
                        format!("{:.2}", x.completion_vs_matching_ceiling),
                        // One POST per call: like for like only without callbacks.
                        if r.load.callbacks {
                            "— (callbacks)".to_owned()
                        } else if r
                            .ceiling
                            .as_ref()
                            .is_none_or(|c| c.per_function_pull_post_ack_per_s <= 0.0)
                        {
                            "— (not measured)".to_owned()
                        } else {
                            format!("{:.2}", x.completion_vs_per_function_pull_post_ack)
                        },
                    )
                });
        let _ = writeln!(
            o,
            "| {} | {} | {single} | {per_function} | {} |",
            r.load.functions,
            thousands(r.completion.rate_per_s),
            if r.audit.ok { "OK" } else { "CALLS LOST" }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{Cli, RunArgs};

    #[test]
    fn a_list_of_counts_makes_one_run_each() {
        let cli = Cli::try_parse_from(["flotilla-loadgen", "--functions", "1,8,200"])
            .expect("a list of counts parses");
        assert!(cli.run.validate().is_ok());
        let runs = cli.run.sweep();
        let counts: Vec<usize> = runs.iter().map(RunArgs::functions).collect();
        assert_eq!(counts, [1, 8, 200]);
        assert!(runs.iter().all(|r| r.function_counts.len() == 1));
        let bad = Cli::try_parse_from(["flotilla-loadgen", "--functions", "8,0"])
            .expect("parses; refused by validate");
        assert!(bad.run.validate().is_err());
    }
}

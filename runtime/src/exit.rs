//! The process edge of every binary: a command line or configuration that cannot run is one line
//! on stderr and exit status 64, whichever binary and whichever mistake. clap on its own exits 2
//! with a usage block; operators and their scripts should see one line and one status. What
//! clap would print on further lines and helps fix the mistake (the possible values, the flag
//! meant) is folded into that line.

use std::fmt::Display;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Exit status for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Parses the process's arguments (and their `env` twins) as `T`. `Err` carries the status
/// `main` exits with once clap's output is printed: 0 after `--help` or `--version`, 64 after the
/// one line of an unknown flag, a missing or an unparsable value.
pub fn parse_args<T: clap::Parser>() -> Result<T, i32> {
    T::try_parse().map_err(|e| match usage_line(&e, &<T as clap::CommandFactory>::command()) {
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

/// The one line an argument error of `cmd` is reported with, or `None` for the help and version
/// output that clap reports as errors too.
fn usage_line(e: &clap::Error, cmd: &clap::Command) -> Option<String> {
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
    if let Some(flag) = meant_flag(e, cmd) {
        line.push_str(&format!("; did you mean '{flag}'?"));
    }
    Some(line)
}

/// The flag an unknown `--flag` most likely meant: clap's own suggestion when it made one, else
/// the long flag (or visible alias) of `cmd` or of its subcommands nearest by edit distance, when
/// near enough to be a typo. clap's suggestions need its `suggestions` feature and the `strsim`
/// crate, which this tree does not carry; this small search stands in for them.
fn meant_flag(e: &clap::Error, cmd: &clap::Command) -> Option<String> {
    if !matches!(e.kind(), ErrorKind::UnknownArgument) {
        return None;
    }
    if let Some(ContextValue::String(flag)) = e.get(ContextKind::SuggestedArg) {
        return Some(flag.clone());
    }
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let given = given.strip_prefix("--")?;
    let given = given.split_once('=').map_or(given, |(name, _)| name);
    // A typo changes a few characters, not a quarter of the name.
    let budget = (given.chars().count() / 4).clamp(1, 3);
    cmd.get_arguments()
        .chain(cmd.get_subcommands().flat_map(|sub| sub.get_arguments()))
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| arg.get_long_and_visible_aliases())
        .flatten()
        .map(|long| (edit_distance(given, long), long))
        .filter(|&(distance, _)| distance <= budget)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, long)| format!("--{long}"))
}

/// The fewest one-character insertions, deletions, replacements and swaps of two neighbours that
/// turn `a` into `b` (optimal string alignment): a swap, the commonest typo, counts as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Rows i-2, i-1 and i of the table: entry j is the distance from the first chars of `a` to
    // the first j chars of `b`.
    let mut before: Vec<usize> = Vec::new();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut current = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let replace = previous[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let mut best = replace.min(previous[j] + 1).min(current[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        before = std::mem::replace(&mut previous, current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{CommandFactory, Parser};

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
        usage_line(&e, &Probe::command())
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
            (&["--wiat", "1s"], "unexpected argument '--wiat' found; did you mean '--wait'?"),
            (&["--log-fromat=json"], "did you mean '--log-format'?"),
            (&["--shutdown-grase", "3"], "did you mean '--shutdown-grace'?"),
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
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("wait", "wait"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("wiat", "wait"), 1, "a swap is one edit");
        assert_eq!(edit_distance("log-fromat", "log-format"), 1);
        assert_eq!(edit_distance("shutdown-grase", "shutdown-grace"), 1);
    }

    #[test]
    fn help_and_version_are_not_errors() {
        assert_eq!(line(&["--help"]), None);
        assert_eq!(line(&["--version"]), None);
    }
}

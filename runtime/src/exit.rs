//! The process edge of every binary: a configuration that cannot run is one line on stderr and
//! exit status 64, whichever binary and whichever mistake.

use std::fmt::Display;

/// Exit status for bad configuration (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Prints the one line of a configuration error on stderr and returns [`EXIT_CONFIG`], the status
/// `main` exits with.
pub fn config_failure(message: impl Display) -> i32 {
    eprintln!("configuration error: {message}");
    EXIT_CONFIG
}

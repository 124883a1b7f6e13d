//! The open-files limit. Every call or request in flight holds a socket, so the binaries that
//! make many at once (worker, loadgen) raise their soft limit to the hard limit at start and size
//! their caps from what they got.

/// The soft open-files limit now.
pub fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Raises the soft open-files limit to the hard limit and returns the new soft limit. Failure
/// keeps the old limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    if current.current != current.maximum {
        let raised = Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        };
        setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    }
    Ok(open_files_limit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = raise_open_files_limit().expect("raising to the hard limit is allowed");
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX);
        assert_eq!(raised, hard);
        assert_eq!(open_files_limit(), hard);
    }
}

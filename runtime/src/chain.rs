//! An error and its causes on one line, for logs and for reasons stored with a call. For errors
//! whose own message does not quote their cause: many of the fleet's errors (`PullError`,
//! `TopologyError`, the gateway's `CallError`) quote it and keep it as their source, and are
//! shown with `Display` alone.

/// The error and its sources on one line ("client error (Connect): tcp connect error: ...").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_every_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] Middle);
        #[derive(Debug, thiserror::Error)]
        #[error("tcp connect error")]
        struct Middle(#[source] std::io::Error);
        let e = Outer(Middle(std::io::Error::other("refused")));
        assert_eq!(
            super::error_chain(&e),
            "client error (Connect): tcp connect error: refused"
        );
    }
}

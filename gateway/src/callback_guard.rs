//! The gateway's check of an `X-Callback-Url` target against the callback policy, at enqueue: an
//! address at once, a host name by its rules and then by every address it resolves to, verdicts
//! on names kept [`VERDICT_TTL`]. Invariant: no connection is made to the target; a name that
//! does not resolve yet is left to the worker, which checks again right before it connects.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_runtime::{CallbackTargets, Refused};

/// How long a host name's verdict is reused.
pub const VERDICT_TTL: Duration = Duration::from_secs(30);
/// How long a name's lookup may take before the gateway leaves the verdict to the worker.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Names remembered at most; beyond it the memory starts over.
const REMEMBERED: usize = 10_000;

/// A verdict on a host name (the refusal's reason), and when it was reached.
type Verdict = (Instant, Result<(), Refused>);

#[derive(Debug)]
pub struct CallbackGuard {
    policy: CallbackTargets,
    verdicts: Mutex<HashMap<String, Verdict>>,
}

impl CallbackGuard {
    pub fn new(policy: CallbackTargets) -> Self {
        Self {
            policy,
            verdicts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a callback may go to `host` (a URL's host, `[v6]` included); the error says why
    /// not. No connection is ever made to the target.
    pub async fn check(&self, host: &str) -> Result<(), Refused> {
        if let Some(verdict) = self.policy.check_literal(host) {
            return verdict;
        }
        let host = host.to_ascii_lowercase();
        if let Ok(verdicts) = self.verdicts.lock()
            && let Some((at, verdict)) = verdicts.get(&host)
            && at.elapsed() < VERDICT_TTL
        {
            return verdict.clone();
        }
        let verdict = self.judge(&host).await;
        if let Ok(mut verdicts) = self.verdicts.lock() {
            if verdicts.len() >= REMEMBERED {
                verdicts.clear();
            }
            verdicts.insert(host, (Instant::now(), verdict.clone()));
        }
        verdict
    }

    async fn judge(&self, host: &str) -> Result<(), Refused> {
        let named = self.policy.check_name(host)?;
        // A name that does not resolve now (or not quickly) may resolve when the callback is
        // sent: the worker judges its addresses then.
        let Ok(Ok(addrs)) =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, 0))).await
        else {
            return Ok(());
        };
        for addr in addrs {
            self.policy.check_ip(Some(host), addr.ip(), named)?;
        }
        Ok(())
    }
}

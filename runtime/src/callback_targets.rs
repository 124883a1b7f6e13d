//! Where callbacks may go (SSRF). A caller names the callback URL, so without a policy it could
//! point a worker at anything the worker reaches: a cloud metadata endpoint, an internal admin
//! port. Link-local (169.254.0.0/16, fe80::/10) and cloud metadata addresses, unspecified and
//! multicast addresses are refused unless an allow rule names them; `--callback-allow` limits
//! callbacks to the listed networks and host names; `--callback-deny` refuses more. The gateway
//! checks at enqueue (400), the worker again on every resolved address before it connects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The flags of the callback target policy, shared by the gateway and the worker.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Callbacks")]
pub struct CallbackTargetArgs {
    /// Networks (CIDR or single addresses) and host names (`hooks.example.com`,
    /// `*.example.com`) callbacks may go to, comma separated. Unset: anywhere not refused.
    #[arg(long, env = "FLOTILLA_CALLBACK_ALLOW", value_delimiter = ',')]
    pub callback_allow: Vec<String>,
    /// Networks and host names callbacks may never go to, beyond the built-in refusals.
    #[arg(long, env = "FLOTILLA_CALLBACK_DENY", value_delimiter = ',')]
    pub callback_deny: Vec<String>,
}

/// A rule of `--callback-allow` or `--callback-deny` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct RuleError {
    flag: &'static str,
    #[source]
    problem: RuleProblem,
}

/// What is wrong with one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("an empty rule")]
    Empty,
    #[error("{0}: not an address/prefix")]
    BadNetwork(String),
    #[error("{rule}: the prefix must be 0..={max}")]
    BadPrefix { rule: String, max: u8 },
    #[error("{0}: not a network, an address or a host name")]
    BadHost(String),
}

/// Why the callback policy refuses a target (the host name, or the address with the name it was
/// reached through).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} is refused by --callback-deny")]
    Denied(String),
    #[error("{0} is not in --callback-allow")]
    NotAllowed(String),
    #[error("{target} is {why}, refused unless --callback-allow names it")]
    BuiltIn { target: String, why: &'static str },
}

/// One rule: a network, or a host name (exact, or `*.` for any subdomain).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Net { addr: IpAddr, prefix: u8 },
    Host(String),
    AnySubdomainOf(String),
}

impl Rule {
    fn parse(raw: &str) -> Result<Self, RuleProblem> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(RuleProblem::Empty);
        }
        if let Some((addr, prefix)) = raw.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| RuleProblem::BadNetwork(raw.to_owned()))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
                RuleProblem::BadPrefix {
                    rule: raw.to_owned(),
                    max,
                }
            })?;
            return Ok(Self::Net { addr, prefix });
        }
        if let Ok(addr) = raw.trim_matches(['[', ']']).parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Net { addr, prefix });
        }
        let host = raw.to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        match host.strip_prefix("*.") {
            Some(domain) if valid(domain) => Ok(Self::AnySubdomainOf(domain.to_owned())),
            None if valid(&host) => Ok(Self::Host(host)),
            _ => Err(RuleProblem::BadHost(raw.to_owned())),
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            Self::Net { addr, prefix } => in_net(ip, *addr, *prefix),
            _ => false,
        }
    }

    fn matches_host(&self, host: &str) -> bool {
        match self {
            Self::Host(h) => host.eq_ignore_ascii_case(h),
            Self::AnySubdomainOf(domain) => {
                let host = host.to_ascii_lowercase();
                host.strip_suffix(domain.as_str())
                    .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
            }
            Self::Net { .. } => false,
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        // An IPv4 address seen as IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address.
        (IpAddr::V6(ip), IpAddr::V4(_)) => ip
            .to_ipv4_mapped()
            .is_some_and(|v4| in_net(IpAddr::V4(v4), net, prefix)),
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// Why an address is refused whatever the allow list says, unless an allow network names it.
fn built_in_refusal(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                Some("an unspecified address")
            } else if v4.is_link_local() {
                Some("a link-local address (cloud metadata lives there)")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("a multicast or broadcast address")
            } else if v4 == Ipv4Addr::new(100, 100, 100, 200) {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                Some("an unspecified address")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
    }
}

/// The callback target policy.
#[derive(Debug, Clone, Default)]
pub struct CallbackTargets {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl CallbackTargetArgs {
    /// The policy, or why a rule cannot be read.
    pub fn policy(&self) -> Result<CallbackTargets, RuleError> {
        let parse = |flag: &'static str, rules: &[String]| {
            rules
                .iter()
                .map(|r| Rule::parse(r).map_err(|problem| RuleError { flag, problem }))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(CallbackTargets {
            allow: parse("--callback-allow", &self.callback_allow)?,
            deny: parse("--callback-deny", &self.callback_deny)?,
        })
    }
}

impl CallbackTargets {
    /// Whether the host name alone decides: refused by a deny rule, or (with an allow list) not
    /// named by it while no allow network could admit its addresses. `Ok(true)`: admitted by
    /// name, its addresses still to be checked; `Ok(false)`: its addresses decide.
    pub fn check_name(&self, host: &str) -> Result<bool, Refused> {
        if self.deny.iter().any(|r| r.matches_host(host)) {
            return Err(Refused::Denied(host.to_owned()));
        }
        if self.allow.is_empty() {
            return Ok(false);
        }
        if self.allow.iter().any(|r| r.matches_host(host)) {
            return Ok(true);
        }
        if self.allow.iter().any(|r| matches!(r, Rule::Net { .. })) {
            return Ok(false);
        }
        Err(Refused::NotAllowed(host.to_owned()))
    }

    /// Whether a callback may connect to `ip`, reached through `host` (`None` when the URL names
    /// the address itself). `named` is `check_name`'s verdict for `host`.
    pub fn check_ip(&self, host: Option<&str>, ip: IpAddr, named: bool) -> Result<(), Refused> {
        let shown = match host {
            Some(h) => format!("{h} ({ip})"),
            None => ip.to_string(),
        };
        if self.deny.iter().any(|r| r.matches_ip(ip)) {
            return Err(Refused::Denied(shown));
        }
        let allowed_net = self.allow.iter().any(|r| r.matches_ip(ip));
        if let Some(why) = built_in_refusal(ip)
            && !allowed_net
        {
            return Err(Refused::BuiltIn { target: shown, why });
        }
        if self.allow.is_empty() || allowed_net || named {
            return Ok(());
        }
        Err(Refused::NotAllowed(shown))
    }

    /// The verdict on a URL host that is an address literal (`[v6]` included); `None` for a name.
    pub fn check_literal(&self, host: &str) -> Option<Result<(), Refused>> {
        let literal = host.trim_matches(['[', ']']).parse::<IpAddr>().ok()?;
        Some(self.check_ip(None, literal, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> CallbackTargets {
        CallbackTargetArgs {
            callback_allow: allow.iter().map(|s| s.to_string()).collect(),
            callback_deny: deny.iter().map(|s| s.to_string()).collect(),
        }
        .policy()
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_in_refusals_hold_without_rules_and_yield_to_an_allow_network() {
        let open = policy(&[], &[]);
        for bad in [
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "ff02::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "100.100.100.200",
        ] {
            assert!(open.check_ip(None, ip(bad), false).is_err(), "{bad}");
        }
        for good in ["127.0.0.1", "10.1.2.3", "93.184.216.34", "::1"] {
            assert!(open.check_ip(None, ip(good), false).is_ok(), "{good}");
        }
        let metadata_allowed = policy(&["169.254.169.254/32"], &[]);
        assert!(
            metadata_allowed
                .check_ip(None, ip("169.254.169.254"), false)
                .is_ok()
        );
        // A host name rule does not open a built-in refusal.
        let by_name = policy(&["meta.internal"], &[]);
        assert_eq!(by_name.check_name("meta.internal"), Ok(true));
        assert!(
            by_name
                .check_ip(Some("meta.internal"), ip("169.254.169.254"), true)
                .is_err()
        );
    }

    #[test]
    fn an_allow_list_admits_only_what_it_names_and_deny_wins() {
        let p = policy(
            &["127.0.0.1", "10.0.0.0/8", "*.hooks.example.com"],
            &["10.9.0.0/16", "bad.hooks.example.com"],
        );
        assert!(p.check_ip(None, ip("127.0.0.1"), false).is_ok());
        assert_eq!(
            p.check_ip(None, ip("127.0.0.2"), false),
            Err(Refused::NotAllowed("127.0.0.2".into()))
        );
        assert!(p.check_ip(None, ip("10.1.1.1"), false).is_ok());
        assert_eq!(
            p.check_ip(None, ip("10.9.1.1"), false),
            Err(Refused::Denied("10.9.1.1".into()))
        );
        assert_eq!(p.check_name("a.hooks.example.com"), Ok(true));
        assert_eq!(
            p.check_name("hooks.example.com"),
            Ok(false),
            "not a subdomain, but a network may admit it"
        );
        assert!(p.check_name("bad.hooks.example.com").is_err());
        let names_only = policy(&["hooks.example.com"], &[]);
        assert_eq!(
            names_only.check_name("localhost"),
            Err(Refused::NotAllowed("localhost".into()))
        );
        // `localhost` when only 127.0.0.2 is allowed: its address 127.0.0.1 is not.
        let p = policy(&["127.0.0.2"], &[]);
        assert_eq!(p.check_name("localhost"), Ok(false));
        assert!(
            p.check_ip(Some("localhost"), ip("127.0.0.1"), false)
                .is_err()
        );
        assert!(p.check_literal("[::ffff:127.0.0.2]").unwrap().is_ok());
        assert!(p.check_literal("example.com").is_none());
    }

    #[test]
    fn refusals_say_why() {
        let p = policy(&[], &["bad.example"]);
        let text = |r: Result<(), Refused>| r.unwrap_err().to_string();
        assert_eq!(
            text(p.check_ip(Some("meta"), ip("169.254.169.254"), false)),
            "meta (169.254.169.254) is a link-local address (cloud metadata lives there), refused unless --callback-allow names it"
        );
        assert_eq!(
            text(p.check_name("bad.example").map(drop)),
            "bad.example is refused by --callback-deny"
        );
    }

    #[test]
    fn bad_rules_say_why() {
        for (rule, why) in [
            (
                "10.0.0.0/33",
                "--callback-allow: 10.0.0.0/33: the prefix must be 0..=32",
            ),
            ("x/8", "--callback-allow: x/8: not an address/prefix"),
            (
                "exa mple.com",
                "--callback-allow: exa mple.com: not a network, an address or a host name",
            ),
            (
                "*.",
                "--callback-allow: *.: not a network, an address or a host name",
            ),
        ] {
            let args = CallbackTargetArgs {
                callback_allow: vec![rule.into()],
                ..Default::default()
            };
            assert_eq!(args.policy().unwrap_err().to_string(), why);
        }
    }
}

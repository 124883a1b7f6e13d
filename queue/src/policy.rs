//! Per-function policies: where a function lives and how it may be called (concurrency, rate,
//! timeout, retries). Defaults come from flags; an optional TOML file overrides them per function.
//! The worker enforces them; the gateway reads the URL part for synchronous calls.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::duration::{DurationError, parse_duration};
use crate::names::{FunctionName, NameError};

/// Default URL template, as in OpenFaaS: the function's service in the `openfaas-fn` namespace.
pub const DEFAULT_URL_TEMPLATE: &str = "http://{name}.openfaas-fn:8080";

/// Why a policy table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    /// The defaults (`function` is `defaults`) or one function's policy cannot work.
    #[error("function {function}: {source}")]
    Invalid {
        function: String,
        #[source]
        source: InvalidPolicy,
    },
    /// The URL template does not expand to a usable base URL.
    #[error("URL template {template}: {source}")]
    Template {
        template: String,
        #[source]
        source: UrlError,
    },
}

/// Why one policy (the defaults or a function's) cannot work.
#[derive(Debug, thiserror::Error)]
pub enum InvalidPolicy {
    /// A function named in the file is not a valid function name.
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{field}: {source}")]
    Duration {
        field: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("concurrency and max_concurrency name the same bound: give one")]
    ConcurrencyTwice,
    #[error("min_concurrency must be between 1 and the concurrency ceiling {ceiling}, not {min}")]
    MinConcurrency { min: u32, ceiling: u32 },
    #[error("replica_concurrency {replica} exceeds concurrency {cluster}")]
    ReplicaAboveCluster { replica: u32, cluster: u32 },
    #[error("key_concurrency must be at least 1")]
    ZeroKeyConcurrency,
    #[error("rate must be at least 1 per second")]
    ZeroRate,
    #[error("timeout must be above zero")]
    ZeroTimeout,
    #[error("max_age must be above zero")]
    ZeroMaxAge,
    #[error("retry.attempts must be at least 1")]
    ZeroAttempts,
    #[error("retry.min_backoff exceeds retry.max_backoff")]
    BackoffInverted,
    #[error(transparent)]
    Url(#[from] UrlError),
}

/// Why a function base URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("url '{url}': {source}")]
    Unparsable {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("url '{url}' must start with http:// or https://")]
    NotHttp { url: String },
    #[error("url '{url}' has no host")]
    NoHost { url: String },
    #[error("url '{url}' must not carry a query")]
    Query { url: String },
}

/// How a failed call is retried. Used by the worker; lives here so policy files parse in one
/// place.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, the first included; 1 disables retries.
    pub attempts: u32,
    /// Statuses that are retried; others settle the call at once.
    pub statuses: Vec<u16>,
    /// Whether a connection error or a timeout (reported as 502/504) is retried.
    pub retry_unreachable: bool,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            statuses: vec![408, 429, 500, 502, 503, 504],
            retry_unreachable: true,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Everything known about how to call one function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionPolicy {
    /// Base URL of the function; `None` means the URL template applies.
    pub url: Option<String>,
    /// Calls in flight across every replica of the shard: the wait consumer's
    /// `max_ack_pending`, and the sum of the replicas' shares. Under adaptive control it is the
    /// ceiling the learned limit never exceeds (`max_concurrency` in the policy file).
    pub concurrency: u32,
    /// Learn the function's limit from its answers (429, 503 with `Retry-After`) between
    /// `min_concurrency` and `concurrency`: on unless the policy fixes `concurrency` or says
    /// `adaptive = false`. A fixed limit set by hand goes stale as replicas come and go.
    pub adaptive: bool,
    /// Under adaptive control, the calls in flight each replica keeps trying whatever the
    /// function answers, so a function that refused everything is found again once it recovers.
    pub min_concurrency: u32,
    /// Calls in flight in one replica, so one replica cannot take the whole cluster budget
    /// while others idle.
    pub replica_concurrency: u32,
    /// Calls of one fairness key in flight across every replica (`key_concurrency`); `None`:
    /// only the function's own limits apply.
    pub key_concurrency: Option<u32>,
    /// Calls started per second across every replica of the shard: each live replica runs a
    /// token bucket of an equal share. `None` is unlimited.
    pub rate_per_second: Option<u32>,
    /// Deadline of one attempt; past it the attempt counts as a 504.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// File of `whsec_` secrets the function's callbacks are signed with, instead of the
    /// worker's own (`--callback-signing-secrets-file`).
    pub callback_signing_secrets_file: Option<String>,
    /// Keep the final answer for `GET /async-call/<id>/result` (for the status retention).
    pub keep_results: bool,
    /// A call not started within this long of being accepted is dead-lettered as `expired`
    /// instead (its callback says 410). `None`: no limit.
    pub max_age: Option<Duration>,
    /// Larger answers are not kept (their status says so).
    pub max_result_bytes: u64,
}

/// The default cap on a kept result: well inside NATS's default 1 MiB message.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 256 * 1024;

impl Default for FunctionPolicy {
    fn default() -> Self {
        Self {
            url: None,
            concurrency: 100,
            adaptive: true,
            min_concurrency: 1,
            replica_concurrency: 100,
            key_concurrency: None,
            rate_per_second: None,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            callback_signing_secrets_file: None,
            keep_results: false,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_age: None,
        }
    }
}

/// The policy table: defaults plus per-function overrides.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub defaults: FunctionPolicy,
    pub url_template: String,
    functions: HashMap<FunctionName, FunctionPolicy>,
    /// Policies of name patterns (`*` matches any run of characters), most specific first: the
    /// longer a pattern's literal part, the earlier it is tried.
    patterns: Vec<(String, FunctionPolicy)>,
}

/// The TOML shape. Every field is optional and falls back to the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    defaults: Override,
    #[serde(default)]
    functions: HashMap<String, Override>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    url: Option<String>,
    concurrency: Option<u32>,
    adaptive: Option<bool>,
    min_concurrency: Option<u32>,
    max_concurrency: Option<u32>,
    replica_concurrency: Option<u32>,
    key_concurrency: Option<u32>,
    rate: Option<u32>,
    timeout: Option<String>,
    retry: Option<RetryOverride>,
    callback_signing_secrets_file: Option<String>,
    keep_results: Option<bool>,
    max_result_bytes: Option<u64>,
    max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryOverride {
    attempts: Option<u32>,
    statuses: Option<Vec<u16>>,
    retry_unreachable: Option<bool>,
    min_backoff: Option<String>,
    max_backoff: Option<String>,
}

impl Override {
    fn apply(self, base: &FunctionPolicy) -> Result<FunctionPolicy, InvalidPolicy> {
        let mut p = base.clone();
        if let Some(url) = self.url {
            p.url = Some(url);
        }
        if self.concurrency.is_some() && self.max_concurrency.is_some() {
            return Err(InvalidPolicy::ConcurrencyTwice);
        }
        if let Some(c) = self.concurrency.or(self.max_concurrency) {
            p.concurrency = c;
            // A lower cluster budget caps the replica one unless that is set too.
            p.replica_concurrency = p.replica_concurrency.min(c);
        }
        // A concurrency written down is a fixed limit, unless the same table asks for adaptive
        // control in so many words (then it is the ceiling).
        p.adaptive = match (self.adaptive, self.concurrency) {
            (Some(a), _) => a,
            (None, Some(_)) => false,
            (None, None) => p.adaptive,
        };
        if let Some(m) = self.min_concurrency {
            p.min_concurrency = m;
        }
        if let Some(c) = self.replica_concurrency {
            p.replica_concurrency = c;
        }
        if let Some(k) = self.key_concurrency {
            p.key_concurrency = Some(k);
        }
        if let Some(r) = self.rate {
            p.rate_per_second = Some(r);
        }
        if let Some(t) = self.timeout {
            p.timeout = duration("timeout", &t)?;
        }
        if let Some(f) = self.callback_signing_secrets_file {
            p.callback_signing_secrets_file = Some(f);
        }
        if let Some(k) = self.keep_results {
            p.keep_results = k;
        }
        if let Some(m) = self.max_result_bytes {
            p.max_result_bytes = m;
        }
        if let Some(a) = self.max_age {
            p.max_age = Some(duration("max_age", &a)?);
        }
        if let Some(r) = self.retry {
            if let Some(a) = r.attempts {
                p.retry.attempts = a;
            }
            if let Some(s) = r.statuses {
                p.retry.statuses = s;
            }
            if let Some(u) = r.retry_unreachable {
                p.retry.retry_unreachable = u;
            }
            if let Some(d) = r.min_backoff {
                p.retry.min_backoff = duration("retry.min_backoff", &d)?;
            }
            if let Some(d) = r.max_backoff {
                p.retry.max_backoff = duration("retry.max_backoff", &d)?;
            }
        }
        p.validate()?;
        Ok(p)
    }
}

/// A duration field of the file, named in its error.
fn duration(field: &'static str, text: &str) -> Result<Duration, InvalidPolicy> {
    parse_duration(text).map_err(|source| InvalidPolicy::Duration { field, source })
}

impl FunctionPolicy {
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.concurrency == 0 || self.replica_concurrency == 0 {
            return Err(InvalidPolicy::ZeroConcurrency);
        }
        if self.min_concurrency == 0 || self.min_concurrency > self.concurrency {
            return Err(InvalidPolicy::MinConcurrency {
                min: self.min_concurrency,
                ceiling: self.concurrency,
            });
        }
        if self.replica_concurrency > self.concurrency {
            return Err(InvalidPolicy::ReplicaAboveCluster {
                replica: self.replica_concurrency,
                cluster: self.concurrency,
            });
        }
        if self.key_concurrency == Some(0) {
            return Err(InvalidPolicy::ZeroKeyConcurrency);
        }
        if self.rate_per_second == Some(0) {
            return Err(InvalidPolicy::ZeroRate);
        }
        if self.max_age == Some(Duration::ZERO) {
            return Err(InvalidPolicy::ZeroMaxAge);
        }
        if self.timeout.is_zero() {
            return Err(InvalidPolicy::ZeroTimeout);
        }
        if self.retry.attempts == 0 {
            return Err(InvalidPolicy::ZeroAttempts);
        }
        if self.retry.min_backoff > self.retry.max_backoff {
            return Err(InvalidPolicy::BackoffInverted);
        }
        if let Some(url) = &self.url {
            check_base_url(url)?;
        }
        Ok(())
    }
}

/// A function base URL must be `http://host[:port][/path]` or `https://...`: the worker and the
/// gateway speak HTTP/1.1, in the clear or over TLS (`--function-ca-file` and friends).
pub fn check_base_url(url: &str) -> Result<(), UrlError> {
    let uri: http::Uri = url.parse().map_err(|source| UrlError::Unparsable {
        url: url.to_owned(),
        source,
    })?;
    let url = || url.to_owned();
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(UrlError::NotHttp { url: url() });
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost { url: url() });
    }
    if uri.query().is_some() {
        return Err(UrlError::Query { url: url() });
    }
    Ok(())
}

impl Policies {
    /// Policies with no file: the defaults apply to every function.
    pub fn new(
        defaults: FunctionPolicy,
        url_template: impl Into<String>,
    ) -> Result<Self, PolicyError> {
        let p = Self {
            defaults,
            url_template: url_template.into(),
            functions: HashMap::new(),
            patterns: Vec::new(),
        };
        p.check_defaults()?;
        Ok(p)
    }

    fn check_defaults(&self) -> Result<(), PolicyError> {
        self.defaults
            .validate()
            .map_err(|source| PolicyError::Invalid {
                function: "defaults".into(),
                source,
            })?;
        // A template without `{name}` sends every function to one address: allowed, as
        // single-function set-ups and tests do that on purpose.
        check_base_url(&expand(
            &self.url_template,
            &FunctionName::parse("probe").expect("valid"),
        ))
        .map_err(|source| PolicyError::Template {
            template: self.url_template.clone(),
            source,
        })
    }

    /// Reads a TOML policy file over `defaults`.
    pub fn from_file(
        path: &str,
        defaults: FunctionPolicy,
        url_template: impl Into<String>,
    ) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(path, &text, defaults, url_template)
    }

    pub fn from_toml(
        path: &str,
        text: &str,
        defaults: FunctionPolicy,
        url_template: impl Into<String>,
    ) -> Result<Self, PolicyError> {
        let shape: FileShape = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: path.into(),
            source,
        })?;
        let defaults = shape
            .defaults
            .apply(&defaults)
            .map_err(|source| PolicyError::Invalid {
                function: "defaults".into(),
                source,
            })?;
        let mut p = Self::new(defaults, url_template)?;
        for (name, o) in shape.functions {
            let invalid = |source| PolicyError::Invalid {
                function: name.clone(),
                source,
            };
            if name.contains('*') {
                // A pattern holds the characters a name may hold, plus `*`.
                FunctionName::parse(&name.replace('*', "x")).map_err(|e| invalid(e.into()))?;
                let policy = o.apply(&p.defaults).map_err(invalid)?;
                p.patterns.push((name, policy));
                continue;
            }
            let f = FunctionName::parse(&name).map_err(|e| invalid(e.into()))?;
            let policy = o.apply(&p.defaults).map_err(invalid)?;
            p.functions.insert(f, policy);
        }
        p.patterns.sort_by(|(a, _), (b, _)| {
            let literal = |s: &str| s.len() - s.matches('*').count();
            literal(b).cmp(&literal(a)).then_with(|| a.cmp(b))
        });
        Ok(p)
    }

    /// The function's policy: its own, else that of the most specific pattern it matches, else
    /// the defaults.
    pub fn get(&self, function: &FunctionName) -> &FunctionPolicy {
        self.functions
            .get(function)
            .or_else(|| self.pattern_of(function))
            .unwrap_or(&self.defaults)
    }

    /// Whether the policy file names the function, exactly or by a pattern.
    pub fn knows(&self, function: &FunctionName) -> bool {
        self.functions.contains_key(function) || self.pattern_of(function).is_some()
    }

    fn pattern_of(&self, function: &FunctionName) -> Option<&FunctionPolicy> {
        self.patterns
            .iter()
            .find(|(pattern, _)| glob_matches(pattern, function.as_str()))
            .map(|(_, p)| p)
    }

    /// Every policy the table holds: the defaults, each function's and each pattern's.
    pub fn every_policy(&self) -> impl Iterator<Item = &FunctionPolicy> {
        std::iter::once(&self.defaults)
            .chain(self.functions.values())
            .chain(self.patterns.iter().map(|(_, p)| p))
    }

    /// Functions the policy file names exactly (patterns left out).
    pub fn configured(&self) -> impl Iterator<Item = (&FunctionName, &FunctionPolicy)> {
        self.functions.iter()
    }

    /// The full URL of a call: the function's base URL (from its policy or the template), then the
    /// call's path suffix, then `?query` when there is one.
    pub fn url_for(&self, function: &FunctionName, path: &str, query: &str) -> String {
        let base = match &self.get(function).url {
            Some(u) => u.clone(),
            None => expand(&self.url_template, function),
        };
        join_url(&base, path, query)
    }
}

/// `{name}` is the full name as called (`fn` or `fn.ns`), `{base}` the name without namespace,
/// `{namespace}` the namespace (empty when none).
pub fn expand(template: &str, function: &FunctionName) -> String {
    template
        .replace("{name}", function.as_str())
        .replace("{base}", function.base())
        .replace("{namespace}", function.namespace().unwrap_or(""))
}

/// Appends a call's path suffix and query to a function's base URL. An empty suffix leaves a base
/// that has a path of its own as it is (`http://gw/function/echo`), and gives a bare host the
/// root path (`http://echo:8080/`).
pub fn join_url(base: &str, path: &str, query: &str) -> String {
    let base = base.trim_end_matches('/');
    let mut url = String::with_capacity(base.len() + path.len() + query.len() + 2);
    url.push_str(base);
    if !path.is_empty() {
        url.push_str(path);
    } else if !has_path(base) {
        url.push('/');
    }
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn has_path(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.contains('/')
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (none included).
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name must match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> FunctionName {
        FunctionName::parse(s).unwrap()
    }

    /// A policy file's text over the built-in defaults.
    fn parse(text: &str) -> Result<Policies, PolicyError> {
        Policies::from_toml(
            "t.toml",
            text,
            FunctionPolicy::default(),
            DEFAULT_URL_TEMPLATE,
        )
    }

    #[test]
    fn key_concurrency_is_at_least_one_and_off_by_default() {
        let p = parse("[functions.tenants]\nkey_concurrency = 2\n").unwrap();
        assert_eq!(p.get(&f("tenants")).key_concurrency, Some(2));
        assert_eq!(p.get(&f("other")).key_concurrency, None);
        let e = parse("[functions.tenants]\nkey_concurrency = 0\n").unwrap_err();
        assert!(
            e.to_string().contains("key_concurrency must be at least 1"),
            "{e}"
        );
    }

    #[test]
    fn adaptive_unless_a_concurrency_is_written_down() {
        let text = r#"
            [functions.open]
            timeout = "5s"
            [functions.fixed]
            concurrency = 4
            [functions.ceiling]
            max_concurrency = 40
            min_concurrency = 2
            [functions.both]
            concurrency = 8
            adaptive = true
            [functions.off]
            adaptive = false
        "#;
        let p = parse(text).unwrap();
        let of = |n: &str| {
            let x = p.get(&f(n));
            (x.adaptive, x.concurrency, x.min_concurrency)
        };
        assert_eq!(
            of("open"),
            (true, 100, 1),
            "nothing said: learned, up to the default"
        );
        assert_eq!(of("fixed"), (false, 4, 1));
        assert_eq!(of("ceiling"), (true, 40, 2));
        assert_eq!(
            of("both"),
            (true, 8, 1),
            "asked for: concurrency is the ceiling"
        );
        assert_eq!(of("off"), (false, 100, 1));
        assert_eq!(p.get(&f("ceiling")).replica_concurrency, 40);

        let err = |text: &str| parse(text).unwrap_err().to_string();
        let e = err("[functions.x]\nconcurrency = 4\nmax_concurrency = 8\n");
        assert!(e.contains("give one"), "{e}");
        let e = err("[functions.x]\nmax_concurrency = 4\nmin_concurrency = 5\n");
        assert!(e.contains("min_concurrency must be between 1 and"), "{e}");
        let e = err("[defaults]\nmin_concurrency = 0\n");
        assert!(e.contains("defaults: min_concurrency"), "{e}");
    }

    #[test]
    fn urls_from_template_and_file() {
        let text = r#"
            [defaults]
            timeout = "5s"
            [functions.resize]
            url = "http://10.0.0.1:9000/"
            concurrency = 4
            rate = 50
            [functions.resize.retry]
            attempts = 5
            min_backoff = "100ms"
        "#;
        let p = parse(text).unwrap();
        assert_eq!(
            p.url_for(&f("echo"), "", ""),
            "http://echo.openfaas-fn:8080/"
        );
        assert_eq!(
            p.url_for(&f("echo"), "/a", "b=1"),
            "http://echo.openfaas-fn:8080/a?b=1"
        );
        assert_eq!(p.url_for(&f("resize"), "/x", ""), "http://10.0.0.1:9000/x");
        assert_eq!(p.url_for(&f("resize"), "", "q"), "http://10.0.0.1:9000/?q");
        let gw =
            Policies::new(FunctionPolicy::default(), "http://gw:8080/function/{name}").unwrap();
        assert_eq!(
            gw.url_for(&f("echo"), "", ""),
            "http://gw:8080/function/echo"
        );
        assert_eq!(
            gw.url_for(&f("echo"), "/a", "b"),
            "http://gw:8080/function/echo/a?b"
        );
        let r = p.get(&f("resize"));
        assert_eq!(
            (r.concurrency, r.replica_concurrency, r.rate_per_second),
            (4, 4, Some(50))
        );
        assert_eq!(r.retry.attempts, 5);
        assert_eq!(r.retry.min_backoff, Duration::from_millis(100));
        assert_eq!(r.timeout, Duration::from_secs(5));
        assert_eq!(p.get(&f("other")).timeout, Duration::from_secs(5));
    }

    #[test]
    fn patterns_name_functions_and_the_most_specific_one_wins() {
        let text = r#"
            [functions."img-*"]
            timeout = "7s"
            [functions."img-resize-*"]
            timeout = "9s"
            [functions.img-resize-exact]
            timeout = "11s"
        "#;
        let p = Policies::from_toml("t", text, FunctionPolicy::default(), DEFAULT_URL_TEMPLATE)
            .unwrap();
        let timeout = |n: &str| p.get(&f(n)).timeout.as_secs();
        assert_eq!(timeout("img-crop"), 7);
        assert_eq!(timeout("img-resize-big"), 9);
        assert_eq!(timeout("img-resize-exact"), 11);
        assert_eq!(timeout("video"), 60);
        assert!(p.knows(&f("img-")) && p.knows(&f("img-resize-exact")));
        assert!(!p.knows(&f("video")) && !p.knows(&f("im")));
        assert_eq!(p.configured().count(), 1);
        let bad = Policies::from_toml(
            "t",
            "[functions.\"a b*\"]\n",
            FunctionPolicy::default(),
            DEFAULT_URL_TEMPLATE,
        );
        assert!(bad.unwrap_err().to_string().starts_with("function a b*: "));
    }

    #[test]
    fn globs_match_runs_of_characters() {
        for (pattern, name, want) in [
            ("a*", "a", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("*", "", true),
            ("ab", "ab", true),
            ("ab", "abc", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(glob_matches(pattern, name), want, "{pattern} {name}");
        }
    }

    #[test]
    fn template_placeholders() {
        let n = f("fn.ns");
        assert_eq!(
            expand("http://{base}.{namespace}:8080", &n),
            "http://fn.ns:8080"
        );
        assert_eq!(
            expand("http://gw:8080/function/{name}", &n),
            "http://gw:8080/function/fn.ns"
        );
    }

    #[test]
    fn bad_files_say_why() {
        let d = FunctionPolicy::default;
        let t = DEFAULT_URL_TEMPLATE;
        let e = Policies::from_toml("p", "[functions.x]\nconcurrency = 0", d(), t).unwrap_err();
        assert!(e.to_string().contains("function x: concurrency"), "{e}");
        let e = Policies::from_toml("p", "[functions.x]\nmax_age = \"0s\"", d(), t).unwrap_err();
        assert!(
            e.to_string()
                .contains("function x: max_age must be above zero"),
            "{e}"
        );
        let e = Policies::from_toml("p", "[functions.x]\nmax_age = \"soon\"", d(), t).unwrap_err();
        assert!(e.to_string().contains("function x: max_age"), "{e}");
        let p = Policies::from_toml(
            "p",
            "[defaults]\nkeep_results = true\n[functions.x]\nmax_age = \"90s\"\nmax_result_bytes = 10",
            d(),
            t,
        )
        .unwrap();
        let x = p.get(&f("x"));
        assert_eq!(
            (x.max_age, x.keep_results, x.max_result_bytes),
            (Some(std::time::Duration::from_secs(90)), true, 10)
        );
        let e = Policies::from_toml("p", "[functions.x]\nspeed = 1", d(), t).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Policies::from_toml("p", "[functions.\"a b\"]", d(), t).unwrap_err();
        assert!(e.to_string().contains("a b"), "{e}");
        let e = Policies::from_toml("p", "[functions.x]\nurl = \"ftp://x\"", d(), t).unwrap_err();
        assert!(e.to_string().contains("http:// or https://"), "{e}");
        let p =
            Policies::from_toml("p", "[functions.x]\nurl = \"https://x:8443\"", d(), t).unwrap();
        assert_eq!(p.url_for(&f("x"), "/a", "b=1"), "https://x:8443/a?b=1");
        Policies::new(d(), "https://{name}.fn.example").unwrap();
        let e =
            Policies::from_toml("p", "[functions.x]\ntimeout = \"3 days\"", d(), t).unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
        assert!(matches!(
            e,
            PolicyError::Invalid {
                source: InvalidPolicy::Duration {
                    field: "timeout",
                    ..
                },
                ..
            }
        ));
        let e = Policies::new(d(), "ftp://{name}").unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::Template {
                    source: UrlError::NotHttp { .. },
                    ..
                }
            ),
            "{e}"
        );
        let e = Policies::from_toml(
            "p",
            "[defaults]
rate = 0",
            d(),
            t,
        )
        .unwrap_err();
        assert!(
            matches!(&e, PolicyError::Invalid { function, source: InvalidPolicy::ZeroRate } if function == "defaults"),
            "{e}"
        );
    }

    #[test]
    fn errors_keep_their_cause() {
        use std::error::Error as _;
        let e = Policies::from_toml(
            "p",
            "[functions.x]
retry = { max_backoff = \"1m30\" }",
            FunctionPolicy::default(),
            DEFAULT_URL_TEMPLATE,
        )
        .unwrap_err();
        let cause = e.source().expect("the invalid policy");
        let duration = cause.source().expect("the duration error");
        assert!(
            duration.downcast_ref::<DurationError>().is_some(),
            "{duration}"
        );
        let e = Policies::from_file(
            "/nonexistent/policies.toml",
            FunctionPolicy::default(),
            DEFAULT_URL_TEMPLATE,
        )
        .unwrap_err();
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some(),
            "{e}"
        );
    }

    #[test]
    fn go_style_durations_in_the_file() {
        let text = "[functions.slow]\ntimeout = \"14m55s\"\n[functions.slow.retry]\nmax_backoff = \"1m30s\"";
        let p = Policies::from_toml("p", text, FunctionPolicy::default(), DEFAULT_URL_TEMPLATE)
            .unwrap();
        let slow = p.get(&f("slow"));
        assert_eq!(slow.timeout, Duration::from_secs(895));
        assert_eq!(slow.retry.max_backoff, Duration::from_secs(90));
    }
}

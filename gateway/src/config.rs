//! The gateway's configuration: one typed struct parsed by clap, every flag with an `env` twin,
//! turned by `check` into a `ValidConfig` (files read once, every rule checked) before anything
//! starts, so a bad value exits 64 with one clear line and later code cannot get it wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_queue::{FunctionPolicy, Policies, PolicyError};
use flotilla_runtime::{CommonArgs, duration_arg};

/// Everything `flotilla-gateway` can be told.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flotilla-gateway",
    version,
    about = "Flotilla's HTTP gateway: forwards synchronous calls, enqueues asynchronous ones into JetStream"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address the HTTP server binds: the call routes, `/healthz`, `/readyz`, `/metrics` and
    /// `/system/*` all share it.
    // Only `main` reads it: tests hand `serve` a listener on port 0.
    #[arg(
        long,
        env = "FLOTILLA_GATEWAY_LISTEN",
        default_value = "0.0.0.0:8080",
        help_heading = "HTTP server"
    )]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes; a larger one is refused with 413 before it is
    /// read. An asynchronous call's body larger than one NATS message holds (`max_payload` minus
    /// room for the envelope's headers) travels through the `FLOTILLA_BODIES` object store.
    #[arg(long, env = "FLOTILLA_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          help_heading = "Limits")]
    pub max_body_bytes: usize,

    /// The longest `X-Delay` (or `X-Not-Before` ahead of now) an asynchronous call may ask for;
    /// beyond it the call is refused with 400.
    #[arg(long, env = "FLOTILLA_MAX_DELAY", default_value = "168h", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Limits")]
    pub max_delay: Duration,

    /// How long a synchronous call may take to produce its response head before the gateway
    /// answers 504. A function's own `timeout` in the policy file lowers it for that function.
    #[arg(long, env = "FLOTILLA_SYNC_TIMEOUT", default_value = "60s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Functions")]
    pub sync_timeout: Duration,

    /// How long an asynchronous call waits for JetStream's PubAck before the gateway answers 503.
    /// The client then retries with the same `Idempotency-Key`, so a late ack never doubles work.
    #[arg(long, env = "FLOTILLA_PUBLISH_TIMEOUT", default_value = "5s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Limits")]
    pub publish_timeout: Duration,

    /// Asynchronous calls awaiting their PubAck at once. Beyond it JetStream is not keeping up
    /// and further calls are answered 503 with `Retry-After` at once (load shedding) rather than
    /// queued inside the gateway.
    #[arg(
        long,
        env = "FLOTILLA_MAX_PUBLISH_INFLIGHT",
        default_value_t = 16_384,
        help_heading = "Limits"
    )]
    pub max_publish_inflight: usize,

    /// A client must send its complete request head within this time, else the connection is
    /// closed: a slow or idle client cannot pin a connection. It also bounds how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "FLOTILLA_HEADER_READ_TIMEOUT", default_value = "10s",
          value_parser = duration_arg, allow_hyphen_values = true, help_heading = "HTTP server")]
    pub header_read_timeout: Duration,

    /// Answer 404 `function <name> not found` for a function the policy file does not name
    /// (exactly or by a pattern), synchronous and asynchronous, before anything is enqueued.
    #[arg(
        long,
        env = "FLOTILLA_KNOWN_FUNCTIONS_ONLY",
        help_heading = "Functions"
    )]
    pub known_functions_only: bool,

    /// On shutdown, how long the gateway goes on accepting requests after `/readyz` starts failing,
    /// so load balancers stop sending before it stops listening. Then the shutdown grace runs.
    #[arg(long, env = "FLOTILLA_DRAIN_DELAY", default_value = "5s", value_parser = duration_arg,
          allow_hyphen_values = true, help_heading = "Shutdown")]
    pub drain_delay: Duration,

    /// On shutdown, how long in-flight requests may take to finish before the gateway returns
    /// regardless. Keep it below the orchestrator's kill timeout. `--grace` is the same flag, the
    /// worker's name for it.
    #[arg(long, env = "FLOTILLA_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration_arg,
          allow_hyphen_values = true, visible_alias = "grace", help_heading = "Shutdown")]
    pub shutdown_grace: Duration,

    /// Seconds a client is told to wait (`Retry-After`) when NATS is unavailable.
    #[arg(
        long,
        env = "FLOTILLA_RETRY_AFTER_SECONDS",
        default_value_t = 1,
        help_heading = "HTTP server"
    )]
    pub retry_after_seconds: u32,

    /// User name that `/system/*` requires. Unset (with no password): `/system/*` is open.
    #[arg(
        long,
        env = "FLOTILLA_BASIC_AUTH_USER",
        help_heading = "Basic auth for /system/*"
    )]
    pub basic_auth_user: Option<String>,

    /// Password that `/system/*` requires. Prefer the file flag: values in the environment or on
    /// the command line are visible to other processes.
    #[arg(
        long,
        env = "FLOTILLA_BASIC_AUTH_PASSWORD",
        hide_env_values = true,
        help_heading = "Basic auth for /system/*"
    )]
    pub basic_auth_password: Option<String>,

    /// File holding the `/system/*` password (a mounted secret); one trailing newline is ignored.
    #[arg(
        long,
        env = "FLOTILLA_BASIC_AUTH_PASSWORD_FILE",
        help_heading = "Basic auth for /system/*"
    )]
    pub basic_auth_password_file: Option<PathBuf>,
}

/// Why a gateway configuration cannot run. Each message is one line that names the flag.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The NATS URL, credential or TLS flags cannot work.
    #[error(transparent)]
    Nats(#[from] flotilla_runtime::NatsConnectError),
    /// A `--callback-allow` or `--callback-deny` rule cannot be read.
    #[error(transparent)]
    CallbackTargets(flotilla_runtime::RuleError),
    #[error("{flag} must be at least 1")]
    Zero { flag: &'static str },
    #[error("{flag} must be above zero")]
    ZeroDuration { flag: &'static str },
    #[error("give --basic-auth-password or --basic-auth-password-file, not both")]
    TwoPasswords,
    #[error("--basic-auth-password-file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--basic-auth-user must be non-empty and hold no ':'")]
    BadUser,
    #[error("the basic auth password is empty")]
    EmptyPassword,
    #[error("--basic-auth-user needs --basic-auth-password or --basic-auth-password-file")]
    UserWithoutPassword,
    #[error("a basic auth password needs --basic-auth-user")]
    PasswordWithoutUser,
    /// The URL template or the policy file.
    #[error(transparent)]
    Policies(#[from] PolicyError),
    /// A function TLS file (CA, client certificate or key) cannot be read or parsed.
    #[error(transparent)]
    FunctionTls(#[from] flotilla_runtime::FunctionTlsError),
}

/// A configuration that passed every check, with the files it names read once: what `serve`
/// runs on. Only [`Config::check`] makes one.
#[derive(Debug)]
pub struct ValidConfig {
    config: Config,
    policies: Policies,
    auth: Option<(String, String)>,
    callback_targets: flotilla_runtime::CallbackTargets,
    function_tls: flotilla_runtime::FunctionTls,
}

/// A checked configuration taken apart for `serve`.
pub(crate) struct Parts {
    pub config: Config,
    pub policies: Policies,
    /// The `/system/*` user and password, when configured.
    pub auth: Option<(String, String)>,
    pub callback_targets: flotilla_runtime::CallbackTargets,
    /// How `https://` functions are reached on the synchronous route, their files read once.
    pub function_tls: flotilla_runtime::FunctionTls,
}

impl ValidConfig {
    /// The flags as given.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Everything `serve` needs, read once.
    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            config: self.config,
            policies: self.policies,
            auth: self.auth,
            callback_targets: self.callback_targets,
            function_tls: self.function_tls,
        }
    }
}

impl Config {
    /// Checks what clap cannot (ranges, combinations) and reads the policy and password files,
    /// once.
    pub fn check(self) -> Result<ValidConfig, ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "--max-body-bytes",
            });
        }
        for (flag, d) in [
            ("--sync-timeout", self.sync_timeout),
            ("--publish-timeout", self.publish_timeout),
            ("--header-read-timeout", self.header_read_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration { flag });
            }
        }
        if self.max_publish_inflight == 0 {
            return Err(ConfigError::Zero {
                flag: "--max-publish-inflight",
            });
        }
        let auth = self.basic_auth()?;
        self.common.nats.check()?;
        let callback_targets = self
            .common
            .callbacks
            .policy()
            .map_err(ConfigError::CallbackTargets)?;
        // Synchronous calls use the URLs and timeouts; the defaults are the built-in ones.
        let policies = self.common.functions.load(FunctionPolicy::default())?;
        let function_tls = self.common.functions.tls()?;
        Ok(ValidConfig {
            config: self,
            policies,
            auth,
            callback_targets,
            function_tls,
        })
    }

    /// The `/system/*` credentials, when configured.
    fn basic_auth(&self) -> Result<Option<(String, String)>, ConfigError> {
        let password = match (&self.basic_auth_password, &self.basic_auth_password_file) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoPasswords),
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Some(text.strip_suffix('\r').unwrap_or(text).to_owned())
            }
            (None, None) => None,
        };
        match (&self.basic_auth_user, password) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) => {
                if user.is_empty() || user.contains(':') {
                    return Err(ConfigError::BadUser);
                }
                if password.is_empty() {
                    return Err(ConfigError::EmptyPassword);
                }
                Ok(Some((user.clone(), password)))
            }
            (Some(_), None) => Err(ConfigError::UserWithoutPassword),
            (None, Some(_)) => Err(ConfigError::PasswordWithoutUser),
        }
    }
}

flotilla_runtime::server_config!(Config, ValidConfig, ConfigError);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec!["flotilla-gateway"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.sync_timeout, Duration::from_secs(60));
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert_eq!(c.check().unwrap().into_parts().auth, None);
    }

    #[test]
    fn refuses_bad_combinations() {
        let check = |args: &[&str]| parse(args).check().unwrap_err();
        let e = check(&["--basic-auth-user", "admin"]);
        assert!(matches!(e, ConfigError::UserWithoutPassword), "{e}");
        assert!(e.to_string().contains("--basic-auth-password"), "{e}");
        let e = check(&["--basic-auth-password", "x"]);
        assert!(matches!(e, ConfigError::PasswordWithoutUser), "{e}");
        let e = check(&["--sync-timeout", "0s"]);
        assert!(
            matches!(
                e,
                ConfigError::ZeroDuration {
                    flag: "--sync-timeout"
                }
            ),
            "{e}"
        );
        let e = check(&["--function-url-template", "ftp://{name}"]);
        assert!(matches!(e, ConfigError::Policies(_)), "{e}");
        assert!(e.to_string().contains("http://"), "{e}");
        let e = check(&["--function-ca-file", "/nonexistent/ca.pem"]);
        assert!(matches!(e, ConfigError::FunctionTls(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("--function-ca-file /nonexistent/ca.pem"),
            "{e}"
        );
        let e = check(&[
            "--basic-auth-user",
            "a",
            "--basic-auth-password-file",
            "/nonexistent/x",
        ]);
        assert!(matches!(e, ConfigError::PasswordFile { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/x"), "{e}");
        assert!(
            std::error::Error::source(&e).is_some(),
            "the io error is kept"
        );
        let e = check(&["--nats-url", "nats://127.0.0.1:42x22"]);
        assert!(matches!(e, ConfigError::Nats(_)), "{e}");
        assert!(e.to_string().starts_with("--nats-url "), "{e}");
        let e = check(&["--max-publish-inflight", "0"]);
        assert!(
            matches!(
                e,
                ConfigError::Zero {
                    flag: "--max-publish-inflight"
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn help_groups_the_flags_for_operators() {
        use clap::CommandFactory;
        Config::command().debug_assert();
        let help = Config::command().render_long_help().to_string();
        for heading in [
            "NATS:",
            "Logging and metrics:",
            "Functions:",
            "Callbacks:",
            "HTTP server:",
            "Limits:",
            "Shutdown:",
            "Basic auth for /system/*:",
        ] {
            assert!(help.contains(heading), "{heading} missing:\n{help}");
        }
        assert!(!help.contains("tests"), "help speaks of tests:\n{help}");
        // The worker's name for the shutdown grace works here too.
        assert_eq!(
            parse(&["--grace", "7s"]).shutdown_grace,
            Duration::from_secs(7)
        );
    }

    #[test]
    fn files_are_read_once_into_the_valid_config() {
        let dir = std::env::temp_dir().join(format!("flotilla-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policies = dir.join("policies.toml");
        std::fs::write(&policies, "[functions.resize]\ntimeout = \"1m30s\"\n").unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let valid = parse(&[
            "--policies",
            policies.to_str().unwrap(),
            "--basic-auth-user",
            "admin",
            "--basic-auth-password-file",
            password.to_str().unwrap(),
        ])
        .check()
        .unwrap();
        // What was read is held: the files may go (or change) without the gateway noticing.
        std::fs::remove_dir_all(&dir).unwrap();
        let super::Parts { policies, auth, .. } = valid.into_parts();
        let resize = flotilla_queue::FunctionName::parse("resize").unwrap();
        assert_eq!(policies.get(&resize).timeout, Duration::from_secs(90));
        assert_eq!(auth, Some(("admin".into(), "s3cret".into())));
    }
}

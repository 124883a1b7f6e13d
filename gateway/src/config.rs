//! The gateway's configuration: one typed struct parsed by clap, every flag with an `env` twin,
//! checked by `validate` before anything starts so a bad value exits 64 with one clear line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_queue::{FunctionPolicy, Policies};
use flotilla_runtime::{FunctionArgs, LogArgs, NatsArgs, duration_arg};

/// Everything `flotilla-gateway` can be told.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "flotilla-gateway",
    version,
    about = "Flotilla's HTTP gateway: forwards synchronous calls, enqueues asynchronous ones into JetStream"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub functions: FunctionArgs,

    /// Address the HTTP server binds. Only `main` reads it: tests hand `run` a listener on port 0.
    #[arg(long, env = "FLOTILLA_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes. An asynchronous call travels as one NATS message,
    /// so the limit actually applied is also capped by the server's `max_payload` minus room for
    /// the envelope headers; a larger body is refused with 413 before it is read.
    #[arg(long, env = "FLOTILLA_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a synchronous call may take to produce its response head before the gateway
    /// answers 504. A function's own `timeout` in the policy file lowers it for that function.
    #[arg(long, env = "FLOTILLA_SYNC_TIMEOUT", default_value = "60s", value_parser = duration_arg)]
    pub sync_timeout: Duration,

    /// How long an asynchronous call waits for JetStream's PubAck before the gateway answers 503.
    /// The client then retries with the same `Idempotency-Key`, so a late ack never doubles work.
    #[arg(long, env = "FLOTILLA_PUBLISH_TIMEOUT", default_value = "5s", value_parser = duration_arg)]
    pub publish_timeout: Duration,

    /// Asynchronous calls awaiting their PubAck at once. Beyond it JetStream is not keeping up
    /// and further calls are answered 503 with `Retry-After` at once (load shedding) rather than
    /// queued inside the gateway.
    #[arg(long, env = "FLOTILLA_MAX_PUBLISH_INFLIGHT", default_value_t = 16_384)]
    pub max_publish_inflight: usize,

    /// A client must send its complete request head within this time, else the connection is
    /// closed: a slow or idle client cannot pin a connection. It also bounds how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "FLOTILLA_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration_arg)]
    pub header_read_timeout: Duration,

    /// On shutdown, how long in-flight requests may take to finish before the gateway returns
    /// regardless. Keep it below the orchestrator's kill timeout.
    #[arg(long, env = "FLOTILLA_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration_arg)]
    pub shutdown_grace: Duration,

    /// Seconds a client is told to wait (`Retry-After`) when NATS is unavailable.
    #[arg(long, env = "FLOTILLA_RETRY_AFTER_SECONDS", default_value_t = 1)]
    pub retry_after_seconds: u32,

    /// User name that `/system/*` requires. Unset (with no password): `/system/*` is open.
    #[arg(long, env = "FLOTILLA_BASIC_AUTH_USER")]
    pub basic_auth_user: Option<String>,

    /// Password that `/system/*` requires. Prefer the file flag: values in the environment or on
    /// the command line are visible to other processes.
    #[arg(long, env = "FLOTILLA_BASIC_AUTH_PASSWORD", hide_env_values = true)]
    pub basic_auth_password: Option<String>,

    /// File holding the `/system/*` password (a mounted secret); one trailing newline is ignored.
    #[arg(long, env = "FLOTILLA_BASIC_AUTH_PASSWORD_FILE")]
    pub basic_auth_password_file: Option<PathBuf>,
}

impl Config {
    /// Checks what clap cannot: ranges, combinations, the policy file, the password file.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes must be at least 1".into());
        }
        for (flag, d) in [
            ("--sync-timeout", self.sync_timeout),
            ("--publish-timeout", self.publish_timeout),
            ("--header-read-timeout", self.header_read_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be above zero"));
            }
        }
        if self.max_publish_inflight == 0 {
            return Err("--max-publish-inflight must be at least 1".into());
        }
        self.basic_auth()?;
        self.policies()?;
        Ok(())
    }

    /// The function policy table (URLs and timeouts for synchronous calls).
    pub(crate) fn policies(&self) -> Result<Policies, String> {
        self.functions
            .load(FunctionPolicy::default())
            .map_err(|e| e.to_string())
    }

    /// The `/system/*` credentials, when configured.
    pub(crate) fn basic_auth(&self) -> Result<Option<(String, String)>, String> {
        let password = match (&self.basic_auth_password, &self.basic_auth_password_file) {
            (Some(_), Some(_)) => {
                return Err(
                    "give --basic-auth-password or --basic-auth-password-file, not both".into(),
                );
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--basic-auth-password-file {}: {e}", path.display()))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                Some(text.strip_suffix('\r').unwrap_or(text).to_owned())
            }
            (None, None) => None,
        };
        match (&self.basic_auth_user, password) {
            (None, None) => Ok(None),
            (Some(user), Some(password)) => {
                if user.is_empty() || user.contains(':') {
                    return Err("--basic-auth-user must be non-empty and hold no ':'".into());
                }
                if password.is_empty() {
                    return Err("the basic auth password is empty".into());
                }
                Ok(Some((user.clone(), password)))
            }
            (Some(_), None) => Err(
                "--basic-auth-user needs --basic-auth-password or --basic-auth-password-file"
                    .into(),
            ),
            (None, Some(_)) => Err("a basic auth password needs --basic-auth-user".into()),
        }
    }
}

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
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.sync_timeout, Duration::from_secs(60));
        assert_eq!(c.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn refuses_bad_combinations() {
        let e = parse(&["--basic-auth-user", "admin"])
            .validate()
            .unwrap_err();
        assert!(e.contains("--basic-auth-password"), "{e}");
        let e = parse(&["--basic-auth-password", "x"])
            .validate()
            .unwrap_err();
        assert!(e.contains("--basic-auth-user"), "{e}");
        let e = parse(&["--sync-timeout", "0s"]).validate().unwrap_err();
        assert!(e.contains("--sync-timeout"), "{e}");
        let e = parse(&["--function-url-template", "ftp://{name}"])
            .validate()
            .unwrap_err();
        assert!(e.contains("http://"), "{e}");
        let e = parse(&[
            "--basic-auth-user",
            "a",
            "--basic-auth-password-file",
            "/nonexistent/x",
        ])
        .validate()
        .unwrap_err();
        assert!(e.contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn password_file_drops_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("flotilla-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        let c = parse(&[
            "--basic-auth-user",
            "admin",
            "--basic-auth-password-file",
            file.to_str().unwrap(),
        ]);
        assert_eq!(
            c.basic_auth().unwrap(),
            Some(("admin".into(), "s3cret".into()))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

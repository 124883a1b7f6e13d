//! How a binary proves itself to NATS and secures the connection: a credentials file (user JWT
//! and NKey seed), an NKey seed file, a user with a password file, or a token file, plus TLS with
//! a CA file and a client certificate. Secrets are read from files, never from flags or the
//! environment themselves, and never logged: flags and errors name paths only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_nats::{ConnectOptions, Event, ServerError};

/// The NATS credential and TLS flags of every binary that talks to NATS.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsAuthArgs {
    /// NATS credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// File holding an NKey user seed (`SU...`).
    #[arg(long, env = "NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// NATS user name; its password comes from `--nats-password-file`.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS user's password (one trailing newline ignored).
    #[arg(long, env = "NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding a NATS authentication token (one trailing newline ignored).
    #[arg(long, env = "NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS servers' certificates; turns TLS on.
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS TLS (with `--nats-key-file`); turns TLS on.
    #[arg(long, env = "NATS_CERT_FILE", requires = "nats_key_file")]
    pub nats_cert_file: Option<PathBuf>,
    /// PEM private key of `--nats-cert-file`.
    #[arg(long, env = "NATS_KEY_FILE", requires = "nats_cert_file")]
    pub nats_key_file: Option<PathBuf>,
}

/// Why the NATS flags cannot work (exit 64), or the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("--nats-url names no server")]
    NoNatsUrl,
    #[error("--nats-ping-interval must be above zero")]
    NoPings,
    /// A server URL the client cannot parse; `url` has any user and password cut out.
    #[error("--nats-url {url}: {source}")]
    BadNatsUrl {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("give one way to authenticate to NATS, not several: {0}")]
    SeveralMethods(String),
    #[error("--nats-user needs --nats-password-file, and the reverse")]
    UserWithoutPassword,
    #[error("{flag} {}: {source}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: the file is empty", path.display())]
    Empty { flag: &'static str, path: PathBuf },
    #[error("--nats-creds-file {}: not a NATS credentials file ({source})", path.display())]
    BadCreds {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Connect(async_nats::ConnectError),
}

impl NatsConnectError {
    /// Whether the flags are at fault (exit 64) rather than the connection.
    pub fn is_config(&self) -> bool {
        !matches!(self, Self::Connect(_))
    }
}

fn read_secret(flag: &'static str, path: &Path) -> Result<String, NatsConnectError> {
    let text = std::fs::read_to_string(path).map_err(|source| NatsConnectError::Unreadable {
        flag,
        path: path.into(),
        source,
    })?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text)
        .to_owned();
    if text.is_empty() {
        return Err(NatsConnectError::Empty {
            flag,
            path: path.into(),
        });
    }
    Ok(text)
}

fn readable(flag: &'static str, path: &Path) -> Result<(), NatsConnectError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|source| NatsConnectError::Unreadable {
            flag,
            path: path.into(),
            source,
        })
}

impl NatsAuthArgs {
    /// Checks the flags and that every file they name can be read, without connecting.
    pub fn check(&self) -> Result<(), NatsConnectError> {
        self.apply(ConnectOptions::new()).map(drop)
    }

    /// `options` with the credentials and TLS the flags ask for, their files read now.
    pub fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, NatsConnectError> {
        let methods: Vec<&str> = [
            (self.nats_creds_file.is_some(), "--nats-creds-file"),
            (self.nats_nkey_file.is_some(), "--nats-nkey-file"),
            (
                self.nats_user.is_some() || self.nats_password_file.is_some(),
                "--nats-user",
            ),
            (self.nats_token_file.is_some(), "--nats-token-file"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if methods.len() > 1 {
            return Err(NatsConnectError::SeveralMethods(methods.join(", ")));
        }
        if let Some(path) = &self.nats_creds_file {
            let creds = read_secret("--nats-creds-file", path)?;
            options = options
                .credentials(&creds)
                .map_err(|source| NatsConnectError::BadCreds {
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(path) = &self.nats_nkey_file {
            options = options.nkey(read_secret("--nats-nkey-file", path)?);
        }
        match (&self.nats_user, &self.nats_password_file) {
            (Some(user), Some(path)) => {
                let password = read_secret("--nats-password-file", path)?;
                options = options.user_and_password(user.clone(), password);
            }
            (None, None) => {}
            _ => return Err(NatsConnectError::UserWithoutPassword),
        }
        if let Some(path) = &self.nats_token_file {
            options = options.token(read_secret("--nats-token-file", path)?);
        }
        if let Some(path) = &self.nats_ca_file {
            readable("--nats-ca-file", path)?;
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_cert_file, &self.nats_key_file) {
            readable("--nats-cert-file", cert)?;
            readable("--nats-key-file", key)?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// Why NATS last refused or dropped the connection, for readiness answers and logs; cleared when
/// a connection is made.
#[derive(Debug, Clone, Default)]
pub struct NatsProblems {
    last: Arc<Mutex<Option<String>>>,
}

impl NatsProblems {
    /// The latest problem, while not connected.
    pub fn last(&self) -> Option<String> {
        self.last.lock().ok().and_then(|p| p.clone())
    }

    fn set(&self, problem: Option<String>) {
        if let Ok(mut p) = self.last.lock() {
            *p = problem;
        }
    }

    /// `options` reporting connection events here, and in the log: one line per event, naming
    /// `servers` (the `--nats-url` list without credentials, from `redacted_urls`), since the
    /// client's events do not say which server they concern. The client's own event lines
    /// repeat these without the servers; `LogArgs::init` quiets them.
    pub fn watch(&self, options: ConnectOptions, servers: &str) -> ConnectOptions {
        let problems = self.clone();
        let servers: Arc<str> = servers.into();
        options.event_callback(move |event| {
            let problems = problems.clone();
            let servers = servers.clone();
            async move {
                match event {
                    Event::Connected => {
                        tracing::info!(nats_url = %servers, "NATS connected");
                        problems.set(None);
                    }
                    Event::ServerError(ServerError::AuthorizationViolation) => {
                        tracing::error!(
                            nats_url = %servers,
                            "NATS refused this client's credentials: authorization violation"
                        );
                        problems.set(Some(
                            "NATS refused the credentials (authorization violation)".into(),
                        ));
                    }
                    Event::ServerError(error) => {
                        tracing::warn!(nats_url = %servers, %error, "NATS server error");
                        problems.set(Some(format!("NATS server error: {error}")));
                    }
                    Event::ClientError(error) => {
                        tracing::warn!(nats_url = %servers, %error, "NATS connection error");
                        problems.set(Some(error.to_string()));
                    }
                    other => tracing::info!(nats_url = %servers, event = %other, "NATS"),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_that_cannot_work_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let token = file(dir.path(), "token", "s3cret\n");
        let empty = file(dir.path(), "empty", "\n");
        let both = NatsAuthArgs {
            nats_token_file: Some(token.clone()),
            nats_nkey_file: Some(token.clone()),
            ..Default::default()
        };
        assert_eq!(
            both.check().unwrap_err().to_string(),
            "give one way to authenticate to NATS, not several: --nats-nkey-file, --nats-token-file"
        );
        let user_only = NatsAuthArgs {
            nats_user: Some("gw".into()),
            ..Default::default()
        };
        assert!(matches!(
            user_only.check(),
            Err(NatsConnectError::UserWithoutPassword)
        ));
        let missing = NatsAuthArgs {
            nats_token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = missing.check().unwrap_err();
        assert!(
            e.is_config() && e.to_string().starts_with("--nats-token-file "),
            "{e}"
        );
        let blank = NatsAuthArgs {
            nats_token_file: Some(empty),
            ..Default::default()
        };
        assert!(
            blank
                .check()
                .unwrap_err()
                .to_string()
                .ends_with("the file is empty")
        );
        let bad_creds = NatsAuthArgs {
            nats_creds_file: Some(token.clone()),
            ..Default::default()
        };
        let e = bad_creds.check().unwrap_err().to_string();
        assert!(e.contains("not a NATS credentials file"), "{e}");
        // The secret never shows in an error.
        assert!(!e.contains("s3cret"), "{e}");
        let fine = NatsAuthArgs {
            nats_token_file: Some(token),
            ..Default::default()
        };
        fine.check().unwrap();
    }
}

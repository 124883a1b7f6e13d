//! Signed callbacks, per Standard Webhooks: each callback carries `webhook-id` (the call id),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature`, `v1,<base64 HMAC-SHA256>` over
//! `<id>.<timestamp>.<body>`, one per secret (space separated), so a receiver can rotate secrets
//! without a gap. Secrets are `whsec_<base64>` lines in a file: the worker's
//! `--callback-signing-secrets-file`, or a function's `callback_signing_secrets_file` in the
//! policy file.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use flotilla_queue::{FunctionPolicy, Policies};
use ring::hmac;

pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// Why a secrets file's text holds no usable secret. Never quotes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("line {line}: a secret starts with whsec_")]
    NoPrefix { line: usize },
    #[error("line {line}: the secret after whsec_ is not base64")]
    NotBase64 { line: usize },
    #[error("line {line}: the secret is {bytes} bytes; at least 24 are needed")]
    TooShort { line: usize, bytes: usize },
    #[error("holds no secret")]
    Empty,
}

/// Why a secrets file named by a flag or a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsFileError {
    #[error("{flag} {path}: {source}")]
    Unreadable {
        flag: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path}: {source}")]
    Invalid {
        flag: &'static str,
        path: String,
        #[source]
        source: SecretError,
    },
}

/// The keys callbacks are signed with.
pub(crate) struct Signer {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Signer {
    /// Secrets, one `whsec_<base64>` per line; blank lines and `#` comments are skipped. The
    /// error never quotes a secret.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(encoded) = line.strip_prefix("whsec_") else {
                return Err(SecretError::NoPrefix { line: n + 1 });
            };
            let key = BASE64
                .decode(encoded)
                .map_err(|_| SecretError::NotBase64 { line: n + 1 })?;
            if key.len() < 24 {
                return Err(SecretError::TooShort {
                    line: n + 1,
                    bytes: key.len(),
                });
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &key));
        }
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { keys })
    }

    /// The `webhook-signature` value of a message.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mut out = String::new();
        for key in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.as_bytes());
            ctx.update(b".");
            ctx.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&BASE64.encode(ctx.sign().as_ref()));
        }
        out
    }
}

/// Every signer a worker needs, read once at start: the default one and one per secrets file
/// the policy file names.
#[derive(Debug, Default, Clone)]
pub(crate) struct Signers {
    default: Option<Arc<Signer>>,
    by_file: HashMap<String, Arc<Signer>>,
}

fn read(flag: &'static str, path: &str) -> Result<Arc<Signer>, SecretsFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretsFileError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })?;
    Signer::parse(&text)
        .map(Arc::new)
        .map_err(|source| SecretsFileError::Invalid {
            flag,
            path: path.to_owned(),
            source,
        })
}

impl Signers {
    /// Reads the default secrets file (when given) and every one the policies name.
    pub fn load(default_file: Option<&str>, policies: &Policies) -> Result<Self, SecretsFileError> {
        let mut signers = Self {
            default: default_file
                .map(|p| read("--callback-signing-secrets-file", p))
                .transpose()?,
            by_file: HashMap::new(),
        };
        for policy in policies.every_policy() {
            if let Some(path) = &policy.callback_signing_secrets_file
                && !signers.by_file.contains_key(path)
            {
                let signer = read("callback_signing_secrets_file", path)?;
                signers.by_file.insert(path.clone(), signer);
            }
        }
        Ok(signers)
    }

    /// The signer of a function's callbacks: its policy's, else the default one, else none.
    pub fn for_policy(&self, policy: &FunctionPolicy) -> Option<Arc<Signer>> {
        policy
            .callback_signing_secrets_file
            .as_ref()
            .and_then(|p| self.by_file.get(p))
            .or(self.default.as_ref())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn the_specifications_example_verifies() {
        let s = Signer::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        assert_eq!(
            s.signature(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_sign_twice_and_bad_files_say_why_without_the_secret() {
        let two = "# current\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n\nwhsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQQ==\n";
        let sig = Signer::parse(two).unwrap().signature("id", 1, b"x");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        for (text, why) in [
            ("", "holds no secret"),
            ("sk_live_abc\n", "line 1: a secret starts with whsec_"),
            (
                "whsec_***\n",
                "line 1: the secret after whsec_ is not base64",
            ),
            (
                "whsec_c2hvcnQ=\n",
                "line 1: the secret is 5 bytes; at least 24 are needed",
            ),
        ] {
            assert_eq!(Signer::parse(text).unwrap_err().to_string(), why);
        }
    }
}

//! TLS to `https://` functions: one rustls client configuration, built at start from the function
//! flags and shared by the worker's own HTTP/1.1 client and the gateway's pooled client. The roots
//! are the system's (rustls-native-certs, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`) plus
//! `--function-ca-file`; `--function-cert-file` and `--function-key-file` add a client
//! certificate for functions that ask for one. ring is the provider, as for NATS.
//!
//! Invariant: a file that cannot be read or parsed is a configuration error found at start
//! (exit 64), never a failing call later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why the function TLS flags cannot work (exit 64). Messages name paths, never contents.
/// rustls's errors are boxed: unboxed they would make this (and the binaries' configuration
/// errors that hold it) over a hundred bytes on every `Result` that carries it.
#[derive(Debug, thiserror::Error)]
pub enum FunctionTlsError {
    #[error("{flag} {}: {source}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: {what}", path.display())]
    Unparsable {
        flag: &'static str,
        path: PathBuf,
        what: String,
    },
    /// The key does not fit the certificate, or is of a kind ring cannot sign with.
    #[error("--function-cert-file {} with --function-key-file {}: {source}", cert.display(), key.display())]
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: Box<rustls::Error>,
    },
    #[error("TLS to functions: {0}")]
    Setup(#[source] Box<rustls::Error>),
}

/// The TLS set-up of calls to `https://` functions, read once at start. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FunctionTls {
    config: Arc<ClientConfig>,
    /// Roots trusted in all (system and CA file), for the start-up log line.
    roots: usize,
    /// Why some of the system's roots could not be read, logged once logging is up (the flags
    /// are checked before).
    system_errors: Vec<String>,
}

impl FunctionTls {
    /// The system's roots plus the certificates of `ca_file`, and the client certificate chain
    /// and key of `client` when given; every file read now.
    pub fn load(
        ca_file: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, FunctionTlsError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        // Stores often hold a few certificates webpki cannot parse; the rest still serve.
        roots.add_parsable_certificates(native.certs);
        let system_errors = native.errors.iter().map(ToString::to_string).collect();
        if let Some(path) = ca_file {
            const FLAG: &str = "--function-ca-file";
            for cert in read_certs(FLAG, path)? {
                roots.add(cert).map_err(|e| FunctionTlsError::Unparsable {
                    flag: FLAG,
                    path: path.to_owned(),
                    what: format!("not a CA certificate webpki accepts ({e})"),
                })?;
            }
        }
        let count = roots.len();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| FunctionTlsError::Setup(Box::new(e)))?
                .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs("--function-cert-file", cert)?;
                let key_der = read_key("--function-key-file", key)?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|source| FunctionTlsError::ClientCert {
                        cert: cert.to_owned(),
                        key: key.to_owned(),
                        source: Box::new(source),
                    })?
            }
        };
        Ok(Self {
            config: Arc::new(config),
            roots: count,
            system_errors,
        })
    }

    /// The rustls configuration every TLS connection to a function is made with. Its ALPN list
    /// is empty: functions are spoken to in HTTP/1.1.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Logs what the roots came to. Called once the binary's logging is up.
    pub fn log(&self) {
        for error in &self.system_errors {
            tracing::warn!(%error, "reading the system's root certificates for https:// functions");
        }
        if self.roots == 0 {
            tracing::warn!(
                "no root certificates for https:// functions (the system has none and no --function-ca-file is given): calls to https:// functions will fail"
            );
        } else {
            tracing::debug!(
                roots = self.roots,
                "root certificates for https:// functions"
            );
        }
    }
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, FunctionTlsError> {
    std::fs::read(path).map_err(|source| FunctionTlsError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file; none at all is an error.
fn read_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, FunctionTlsError> {
    let pem = read_file(flag, path)?;
    let unparsable = |what: String| FunctionTlsError::Unparsable {
        flag,
        path: path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unparsable(format!("not PEM ({e})")))?;
    if certs.is_empty() {
        return Err(unparsable(
            "no certificate in it (PEM, -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, FunctionTlsError> {
    let pem = read_file(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| FunctionTlsError::Unparsable {
        flag,
        path: path.to_owned(),
        what: format!("no PEM private key in it ({e})"),
    })
}

/// The TLS error somewhere in `error`'s causes (an untrusted or expired certificate, a name the
/// certificate does not cover, a handshake the function refused), so a caller can say that TLS
/// is why a call failed. `std::io::Error` hides the error it wraps from `source()`, and both
/// tokio-rustls and hyper-rustls wrap rustls's error in one (or two), so those are looked into.
pub fn tls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(tls) = tls_cause(inner)
        {
            return Some(tls);
        }
        cause = e.source();
    }
    None
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
    fn files_that_cannot_be_read_or_parsed_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = FunctionTls::load(Some(&missing), None).unwrap_err();
        assert!(
            e.to_string().starts_with("--function-ca-file ") && e.to_string().contains("nope.pem"),
            "{e}"
        );
        let garbage = file(dir.path(), "garbage.pem", "not a certificate\n");
        let e = FunctionTls::load(Some(&garbage), None).unwrap_err();
        assert!(e.to_string().contains("no certificate in it"), "{e}");
        let broken = file(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = FunctionTls::load(Some(&broken), None).unwrap_err();
        assert!(e.to_string().starts_with("--function-ca-file "), "{e}");
        let e = FunctionTls::load(None, Some((&garbage, &garbage))).unwrap_err();
        assert!(e.to_string().starts_with("--function-cert-file "), "{e}");
    }

    #[test]
    fn no_flags_is_the_system_roots_alone() {
        let tls = FunctionTls::load(None, None).unwrap();
        assert!(tls.config().alpn_protocols.is_empty());
    }

    #[test]
    fn a_tls_error_is_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let outer = std::io::Error::other(inner);
        assert!(matches!(
            tls_cause(&outer),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        let plain = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(tls_cause(&plain).is_none());
    }
}

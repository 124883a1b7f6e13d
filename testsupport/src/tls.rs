//! Certificates for TLS tests, made by `openssl` in a temporary folder: a private CA and, signed
//! by it, a function certificate for 127.0.0.1 (also what the NATS TLS tests' server shows), one
//! for another host, an expired one, and a client certificate.
//! Plus the rustls server configuration a [`crate::RecordingServer`] serves `https://` with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// P-256 keys, unencrypted: fast to make, and what rustls on ring signs with.
const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// The certificates `Certificates::make` writes, each as `<name>.pem` with its key in
/// `<name>.key`, and their extensions.
const SIGNED: [(&str, &str); 4] = [
    // The function's certificate, valid for the address tests call.
    (
        "function",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    ),
    // Valid, but for another host: a name check must refuse it at 127.0.0.1.
    (
        "other-host",
        "subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth\n",
    ),
    // The right name, valid for one day in 2020 (see `EXPIRED`).
    (
        "expired",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    ),
    // What the fleet shows a function that asks for a client certificate.
    ("client", "extendedKeyUsage=clientAuth\n"),
];

/// The certificate signed with past dates. `openssl x509 -req` (OpenSSL 3.0) only counts days
/// from now, and a negative count makes a certificate whose end precedes its start, which
/// webpki refuses as malformed rather than expired; `openssl ca` takes both dates.
const EXPIRED: &str = "expired";

/// The least `openssl ca` needs: where its database and serial live, and a policy that takes the
/// request's name as it is.
const CA_CONFIG: &str = "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\n\
    new_certs_dir = .\ncertificate = ca.pem\nprivate_key = ca.key\nserial = serial\n\
    default_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n";

/// A private CA and the certificates it signed, in a folder removed on drop.
#[derive(Debug)]
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    /// Makes the CA (`ca.pem`, `ca.key`) and the certificates `function`, `other-host`,
    /// `expired` and `client` (`<name>.pem`, `<name>.key`). Panics when `openssl` fails.
    pub fn make() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=flotilla-test-ca",
        ];
        ca.extend(EC);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(dir.path(), &ca);
        let file = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write a certificate input");
        };
        file("ca.cnf", CA_CONFIG);
        file("index.txt", "");
        file("serial", "1000\n");
        for (name, ext) in SIGNED {
            let extfile = format!("{name}.ext");
            file(&extfile, ext);
            let (key, csr, pem, subj) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("/CN=flotilla-test-{name}"),
            );
            let mut req = vec!["req", "-subj", subj.as_str()];
            req.extend(EC);
            req.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
            openssl(dir.path(), &req);
            if name == EXPIRED {
                openssl(
                    dir.path(),
                    &[
                        "ca",
                        "-batch",
                        "-notext",
                        "-config",
                        "ca.cnf",
                        "-in",
                        &csr,
                        "-out",
                        &pem,
                        "-startdate",
                        "20200101000000Z",
                        "-enddate",
                        "20200102000000Z",
                        "-extfile",
                        &extfile,
                    ],
                );
            } else {
                openssl(
                    dir.path(),
                    &[
                        "x509",
                        "-req",
                        "-days",
                        "1",
                        "-in",
                        &csr,
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                        "-extfile",
                        &extfile,
                        "-out",
                        &pem,
                    ],
                );
            }
        }
        Self { dir }
    }

    /// A file of the folder: `ca.pem`, `function.pem`, `client.key`, ...
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The flags that make a gateway or a worker trust the CA (`--function-ca-file`) and, with
    /// `client`, show the client certificate a function may ask for (`--function-cert-file`,
    /// `--function-key-file`).
    pub fn function_flags(&self, client: bool) -> Vec<String> {
        let mut flags = vec!["--function-ca-file".to_owned(), self.text_path("ca.pem")];
        if client {
            flags.extend([
                "--function-cert-file".to_owned(),
                self.text_path("client.pem"),
                "--function-key-file".to_owned(),
                self.text_path("client.key"),
            ]);
        }
        flags
    }

    fn text_path(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// A server configuration presenting certificate `name` (`function`, `other-host`,
    /// `expired`). With `client_auth`, a client must show a certificate the CA signed.
    pub fn server_config(&self, name: &str, client_auth: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring's protocol versions");
        let builder = if client_auth {
            let mut roots = RootCertStore::empty();
            for cert in certs(&self.path("ca.pem")) {
                roots.add(cert).expect("the CA certificate");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key")))
            .expect("the certificate's key");
        let config = builder
            .with_single_cert(certs(&self.path(&format!("{name}.pem"))), key)
            .expect("certificate and key agree");
        Arc::new(config)
    }
}

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

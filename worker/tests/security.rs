//! NATS with users, least permissions and mutual TLS, all made here: a nats-server runs with
//! `docs/nats/permissions.conf` as shipped, certificates come from `openssl` (testsupport's
//! `Certificates`), and the gateway and the worker connect with their own users over TLS and run
//! a call end to end. A worker's user cannot publish a call; wrong credentials leave a worker not
//! ready with the reason.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gateway, Worker, get};
use flotilla_fleet::NatsServer;
use flotilla_runtime::NatsAuthArgs;
use flotilla_testsupport::{Certificates, RecordingServer};

const T: Duration = Duration::from_secs(30);

struct Secured {
    server: NatsServer,
    /// A private CA; the server shows its `function` certificate (for 127.0.0.1), the binaries
    /// its `client` one. The password files are written beside them.
    certs: Certificates,
}

impl Secured {
    fn start() -> Self {
        let certs = Certificates::make();
        for (user, password) in [
            ("gateway", "gw-secret"),
            ("worker", "wk-secret"),
            ("wrong", "nope"),
        ] {
            std::fs::write(
                certs.path(&format!("{user}.password")),
                format!("{password}\n"),
            )
            .unwrap();
        }
        let permissions = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/nats/permissions.conf"),
        )
        .unwrap();
        let p = |f: &str| certs.path(f).display().to_string();
        let config = format!(
            "{permissions}\n\
             authorization {{\n  users = [\n\
             {{ user: flotilla-gateway, password: gw-secret, permissions: $FLOTILLA_GATEWAY }}\n\
             {{ user: flotilla-worker, password: wk-secret, permissions: $FLOTILLA_WORKER }}\n\
             {{ user: observer, password: ob-secret }}\n  ]\n}}\n\
             tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            p("function.pem"),
            p("function.key"),
            p("ca.pem"),
        );
        let server = NatsServer::start_with_config(&config).unwrap();
        Self { server, certs }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.certs.path(name)
    }

    /// The NATS flags of a binary logging in as `user` with its password file, over mutual TLS.
    fn flags(&self, user: &str, password_file: &str) -> Vec<String> {
        let f = |n: &str| self.file(n).display().to_string();
        vec![
            "--nats-url".into(),
            self.server.url(),
            "--nats-user".into(),
            user.into(),
            "--nats-password-file".into(),
            f(password_file),
            "--nats-ca-file".into(),
            f("ca.pem"),
            "--nats-cert-file".into(),
            f("client.pem"),
            "--nats-key-file".into(),
            f("client.key"),
        ]
    }

    /// A client logged in as `user`, whose server errors land in `errors`.
    async fn client(
        &self,
        user: &str,
        password_file: &str,
        errors: Arc<Mutex<Vec<String>>>,
    ) -> async_nats::Client {
        let auth = NatsAuthArgs {
            nats_user: Some(user.into()),
            nats_password_file: Some(self.file(password_file)),
            nats_ca_file: Some(self.file("ca.pem")),
            nats_cert_file: Some(self.file("client.pem")),
            nats_key_file: Some(self.file("client.key")),
            ..Default::default()
        };
        auth.apply(async_nats::ConnectOptions::new())
            .unwrap()
            .event_callback(move |event| {
                let errors = errors.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        errors.lock().unwrap().push(e.to_string());
                    }
                }
            })
            .connect(self.server.url())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_permission_users_over_mutual_tls_run_a_call_and_a_worker_cannot_publish_one() {
    let nats = Secured::start();
    std::fs::write(nats.file("observer.password"), "ob-secret\n").unwrap();
    let function = RecordingServer::answering(200).await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());

    let mut gateway_args = nats.flags("flotilla-gateway", "gateway.password");
    gateway_args.extend([
        "--shards".into(),
        "1".into(),
        "--function-url-template".into(),
        template.clone(),
    ]);
    let gateway_args: Vec<&str> = gateway_args.iter().map(String::as_str).collect();
    let gw = Gateway::start(&gateway_args).await;
    let mut worker_args = nats.flags("flotilla-worker", "worker.password");
    // Keyed calls under key_concurrency are parked, claimed and hold key slots: the worker's
    // least permissions cover those steps too.
    let policies = nats.file("policies.toml");
    std::fs::write(&policies, "[functions.secured]\nkey_concurrency = 1\n").unwrap();
    worker_args.extend([
        "--function-url-template".into(),
        template,
        "--policies".into(),
        policies.to_string_lossy().into_owned(),
    ]);
    // `Worker::start` gives the URL itself.
    let worker_args: Vec<&str> = worker_args[2..].iter().map(String::as_str).collect();
    let worker = Worker::start_ready(&nats.server.url(), &worker_args).await;

    let callback = format!("{}/cb", sink.url());
    let a = gw
        .post(
            "/async-function/secured",
            &[("x-callback-url", &callback)],
            "x",
        )
        .await
        .unwrap();
    assert_eq!(a.status, 202);
    sink.wait_for(1, T).await;
    assert_eq!(sink.requests()[0].header("x-function-status"), "200");
    assert_eq!(function.count(), 1);

    // Call status and cancel work under the same least permissions: the gateway writes and
    // announces, the worker follows the cancels and writes the states.
    let id = a.call_id.unwrap();
    flotilla_testsupport::wait_until_async(T, "the call's status is succeeded", || async {
        let s = gw
            .send(http::Method::GET, &format!("/async-call/{id}"), &[], "")
            .await
            .unwrap();
        s.status == 200 && String::from_utf8_lossy(&s.body).contains("\"succeeded\"")
    })
    .await;
    for i in 0..4 {
        let keyed = gw
            .post(
                "/async-function/secured",
                &[("x-callback-url", &callback), ("x-fairness-key", "tenant")],
                format!("keyed-{i}"),
            )
            .await
            .unwrap();
        assert_eq!(keyed.status, 202);
    }
    sink.wait_for(5, T).await;
    assert_eq!(function.count(), 5, "every keyed call ran");
    let slow = gw
        .post(
            "/async-function/secured",
            &[
                ("x-callback-url", &callback),
                ("x-call-id", "secured-cancel"),
            ],
            "x",
        )
        .await
        .unwrap();
    assert_eq!(slow.status, 202);
    let cancel = gw
        .send(http::Method::DELETE, "/async-call/secured-cancel", &[], "")
        .await
        .unwrap();
    // Cancelled before or after it ran: either way one consistent answer.
    assert!(matches!(cancel.status, 202 | 409), "{}", cancel.status);
    assert_eq!(
        metric(&worker, "worker_status_write_failures_total").await,
        0.0
    );

    // The worker's user publishing a call: the server refuses it, and the stream stays empty.
    let errors = Arc::new(Mutex::new(Vec::new()));
    let as_worker = nats
        .client("flotilla-worker", "worker.password", errors.clone())
        .await;
    as_worker
        .publish("flotilla.call.0.secured", "forged".into())
        .await
        .unwrap();
    as_worker.flush().await.unwrap();
    flotilla_testsupport::wait_until(T, "the server refuses the publish", || {
        errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("Permissions Violation for Publish to \"flotilla.call.0.secured\""))
    })
    .await;
    let observer = nats
        .client("observer", "observer.password", Arc::default())
        .await;
    let js = async_nats::jetstream::new(observer);
    let info = js
        .get_stream("FLOTILLA_CALLS_0")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 0, "the forged call was stored");
    worker.stop(T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_leave_a_worker_not_ready_with_the_reason() {
    let nats = Secured::start();
    let flags = nats.flags("flotilla-worker", "wrong.password");
    let args: Vec<&str> = flags[2..].iter().map(String::as_str).collect();
    let worker = Worker::start(&nats.server.url(), &args).await;
    flotilla_testsupport::wait_until_async(T, "readyz names the refusal", || async {
        let (status, body) = get(worker.admin, "/readyz").await;
        status == 503 && body.contains("authorization violation")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_leave_a_gateway_not_ready_with_the_reason() {
    let nats = Secured::start();
    let mut args = vec![
        "--log".to_owned(),
        "warn".into(),
        "--drain-delay".into(),
        "0s".into(),
    ];
    args.extend(nats.flags("flotilla-gateway", "wrong.password"));
    let gateway = flotilla_fleet::Gateway::start(args).await.unwrap();
    let addr = gateway.addr();
    flotilla_testsupport::wait_until_async(T, "readyz names the refusal", || async {
        let (status, body) = get(addr, "/readyz").await;
        status == 503 && body.contains("authorization violation")
    })
    .await;
}

/// A counter from the worker's `/metrics` (0 when absent).
async fn metric(worker: &Worker, name: &str) -> f64 {
    let (_, body) = common::get(worker.admin, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

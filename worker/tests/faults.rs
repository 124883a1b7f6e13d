//! Faults across hosts: a three-node NATS cluster (R3 streams), a gateway, two workers, a
//! function, a callback receiver and the clients, each in a network namespace of its own
//! (`flotilla_testsupport::Lab`), under steady load while links are cut, made lossy and slow,
//! and NATS nodes are killed. Every call is audited: each one the gateway accepted (202) is
//! called back or dead-lettered, its final status agrees with its callback, duplicate runs are
//! counted, and the queues empty again.
//!
//! The short mode (the default, run by `scripts/test`) partitions the call stream's leader and
//! cuts the gateway off from NATS. `FLOTILLA_FAULTS=long` runs every fault with more load
//! (`scripts/faults`); `FLOTILLA_FAULTS_REPORT=<file>` writes the report as JSON. Without root
//! or iproute2 the test says why on one line and passes without running.

// A failed unwrap is the test failure we want.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_fleet::{Gateway, Worker};
use flotilla_testsupport::{Host, Impairment, Lab, NsRuntime, RecordingServer, Reply};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

/// How long the audit asks again for a call's status while the gateway answers 503.
const STATUS_PATIENCE: Duration = Duration::from_secs(20);

const STREAM: &str = "FLOTILLA_CALLS_0";
const FUNCTION: &str = "work";
const GATEWAY_PORT: u16 = 8080;
const FUNCTION_PORT: u16 = 9000;
const CALLBACK_PORT: u16 = 9001;
/// How long the audit waits for every accepted call to end.
const SETTLE: Duration = Duration::from_secs(120);
/// How long the audit waits for the queues to empty: past the workers' `ack_wait` (30 s), after
/// which a call whose ack a fault lost is delivered again.
const QUEUES_EMPTY: Duration = Duration::from_secs(50);

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
struct Mode {
    long: bool,
    /// Calls posted per second, steadily, before, during and after each fault.
    rate: u32,
}

impl Mode {
    fn from_env() -> Self {
        let long = std::env::var("FLOTILLA_FAULTS").is_ok_and(|m| m == "long");
        Self {
            long,
            rate: if long { 50 } else { 20 },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster and the fleet

struct Node {
    host: Host,
    conf: PathBuf,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
}

impl Node {
    async fn start(&self, bin: &std::path::Path) {
        let child = self
            .host
            .command(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        *self.child.lock().await = Some(child);
    }

    /// SIGKILL, as when the node's machine dies.
    async fn kill(&self) {
        if let Some(mut c) = self.child.lock().await.take() {
            c.kill().await.unwrap();
        }
    }
}

/// Everything the faults act on, and the records the audit reads.
struct Fleet {
    lab: Lab,
    bin: PathBuf,
    nodes: Vec<Node>,
    gw_host: Host,
    workers: Vec<Host>,
    urls: String,
    gateway: SocketAddr,
    /// Runtimes of the namespaces, kept alive with what runs on them.
    _runtimes: Vec<NsRuntime>,
    client: NsRuntime,
    function: Arc<RecordingServer>,
    callbacks: Arc<RecordingServer>,
    callback_url: String,
    _services: (Gateway, Vec<Worker>),
    _store: tempfile::TempDir,
}

fn node_conf(store: &std::path::Path, name: &str, host: &Host, peers: &[&Host]) -> String {
    let routes: Vec<String> = peers
        .iter()
        .map(|p| format!("nats-route://{}:6222", p.ip))
        .collect();
    format!(
        "server_name: {name}\nlisten: \"{ip}:4222\"\nhttp: \"{ip}:8222\"\n\
         jetstream {{ store_dir: \"{dir}\" }}\n\
         cluster {{ name: flotilla, listen: \"{ip}:6222\", routes: [{routes}] }}\n",
        ip = host.ip,
        dir = store.join(name).display(),
        routes = routes.join(", "),
    )
}

impl Fleet {
    async fn start(lab: Lab) -> Self {
        let mut lab = lab;
        let bin = flotilla_fleet::nats_server_bin().unwrap();
        let store = tempfile::tempdir().unwrap();
        let hosts: Vec<Host> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| lab.host(n).unwrap())
            .collect();
        let mut nodes = Vec::new();
        for host in &hosts {
            let peers: Vec<&Host> = hosts.iter().filter(|h| h.ip != host.ip).collect();
            let conf = store.path().join(format!("{}.conf", host.name));
            std::fs::write(&conf, node_conf(store.path(), &host.name, host, &peers)).unwrap();
            let node = Node {
                host: host.clone(),
                conf,
                child: tokio::sync::Mutex::new(None),
            };
            node.start(&bin).await;
            nodes.push(node);
        }
        let urls = hosts
            .iter()
            .map(|h| format!("nats://{}:4222", h.ip))
            .collect::<Vec<_>>()
            .join(",");
        let gw_host = lab.host("gw").unwrap();
        let workers = vec![lab.host("w1").unwrap(), lab.host("w2").unwrap()];
        let fn_host = lab.host("fn").unwrap();
        let cb_host = lab.host("cb").unwrap();
        let client_host = lab.host("client").unwrap();

        let fn_rt = fn_host.runtime().unwrap();
        let fn_addr = SocketAddr::from((fn_host.ip, FUNCTION_PORT));
        let function = Arc::new(
            fn_rt
                .run(async move {
                    RecordingServer::start_at(
                        Arc::new(|_| {
                            Reply::status(200)
                                .body("done")
                                .delay(Duration::from_millis(20))
                        }),
                        fn_addr,
                    )
                    .await
                })
                .await,
        );
        let cb_rt = cb_host.runtime().unwrap();
        let cb_addr = SocketAddr::from((cb_host.ip, CALLBACK_PORT));
        let callbacks = Arc::new(
            cb_rt
                .run(async move {
                    RecordingServer::start_at(Arc::new(|_| Reply::status(200)), cb_addr).await
                })
                .await,
        );

        let common = |extra: &[&str]| {
            let mut args: Vec<String> = [
                "--nats-url",
                &urls,
                "--shards",
                "1",
                "--stream-replicas",
                "3",
                "--log",
                "warn",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        };
        let gw_rt = gw_host.runtime().unwrap();
        let gw_args = common(&["--drain-delay", "0s"]);
        let gateway_addr = SocketAddr::from((gw_host.ip, GATEWAY_PORT));
        let gateway = gw_rt
            .run(async move {
                let mut g = Gateway::start_at(gw_args, gateway_addr).await.unwrap();
                g.wait_ready(Duration::from_secs(60)).await.unwrap();
                g
            })
            .await;
        let template = format!("http://{fn_addr}/{{name}}");
        let mut worker_handles = Vec::new();
        let mut runtimes = vec![fn_rt, cb_rt, gw_rt];
        for w in &workers {
            let rt = w.runtime().unwrap();
            let args = common(&["--function-url-template", &template]);
            let addr = SocketAddr::from((w.ip, 0));
            let worker = rt
                .run(async move {
                    let mut w = Worker::start_at(args, addr).await.unwrap();
                    w.wait_ready(Duration::from_secs(60)).await.unwrap();
                    w
                })
                .await;
            worker_handles.push(worker);
            runtimes.push(rt);
        }
        let client = client_host.runtime().unwrap();
        Self {
            lab,
            bin,
            nodes,
            gw_host,
            workers,
            urls,
            gateway: gateway_addr,
            _runtimes: runtimes,
            client,
            function,
            callbacks,
            callback_url: format!("http://{cb_addr}/cb"),
            _services: (gateway, worker_handles),
            _store: store,
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.host.name == name).unwrap()
    }

    /// When every stream was created, by name: a stream re-created by mistake (it only seemed
    /// missing during a fault) shows a later time.
    async fn streams_created(&self) -> Vec<(String, String)> {
        let urls = self.urls.clone();
        self.client
            .run(async move {
                let servers: Vec<&str> = urls.split(',').collect();
                let client = async_nats::connect(servers).await.unwrap();
                let js = async_nats::jetstream::new(client);
                let mut out = Vec::new();
                let mut names = js.stream_names();
                use futures_util::StreamExt;
                while let Some(name) = names.next().await {
                    let name = name.unwrap();
                    let mut stream = js.get_stream(&name).await.unwrap();
                    let created = stream.info().await.unwrap().created;
                    out.push((name, created.to_string()));
                }
                out.sort();
                out
            })
            .await
    }

    /// Moves the call stream's leader to node `to` (stepping the leader down until the election
    /// picks it), so the partition hits the worst case: the gateway's own node.
    async fn lead_from(&self, to: &str) {
        for _ in 0..20 {
            if self.leader(self.urls.clone()).await.as_deref() == Some(to) {
                return;
            }
            let urls = self.urls.clone();
            self.client
                .run(async move {
                    let servers: Vec<&str> = urls.split(',').collect();
                    let client = async_nats::connect(servers).await.unwrap();
                    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}");
                    let _ = client.request(subject, Bytes::new()).await;
                })
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("the call stream's leader never moved to {to}");
    }

    /// The name of the call stream's leader, asked of the nodes in `urls`.
    async fn leader(&self, urls: String) -> Option<String> {
        self.client
            .run(async move {
                let opts = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(1))
                    .request_timeout(Some(Duration::from_secs(1)));
                let servers: Vec<&str> = urls.split(',').collect();
                let client = opts.connect(servers).await.ok()?;
                let js = async_nats::jetstream::new(client);
                let mut stream = js.get_stream(STREAM).await.ok()?;
                let info = stream.info().await.ok()?;
                info.cluster.as_ref()?.leader.clone()
            })
            .await
    }

    fn urls_without(&self, name: &str) -> String {
        self.nodes
            .iter()
            .filter(|n| n.host.name != name)
            .map(|n| format!("nats://{}:4222", n.host.ip))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node each fleet process is connected to, from the nodes' `/connz`.
    async fn connections(&self) -> HashMap<String, String> {
        self.connections_except("").await
    }

    /// [`Fleet::connections`], not asking the node named `cut` (it would not answer).
    async fn connections_except(&self, cut: &str) -> HashMap<String, String> {
        let nodes: Vec<(String, SocketAddr)> = self
            .nodes
            .iter()
            .filter(|n| n.host.name != cut)
            .map(|n| (n.host.name.clone(), SocketAddr::from((n.host.ip, 8222))))
            .collect();
        self.client
            .run(async move {
                let mut seen = HashMap::new();
                for (node, addr) in nodes {
                    let Ok((200, body)) = http(addr, "GET", "/connz?limit=1024", None).await else {
                        continue;
                    };
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    for c in v["connections"].as_array().into_iter().flatten() {
                        if let Some(name) = c["name"].as_str() {
                            let ip = c["ip"].as_str().unwrap_or("");
                            seen.insert(format!("{name}@{ip}"), node.clone());
                        }
                    }
                }
                seen
            })
            .await
    }
}

/// One HTTP/1.1 request on a fresh connection (in the caller's namespace): status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: Option<Vec<(String, String)>>,
) -> Result<(u16, Bytes), String> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (k, v) in headers.unwrap_or_default() {
            req = req.header(k, v);
        }
        let resp = sender
            .send_request(
                req.body(Full::new(if method == "POST" {
                    Bytes::from_static(b"payload")
                } else {
                    Bytes::new()
                }))
                .unwrap(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        let call_id = resp
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        // 503 must say when to come back; the caller sees the id of an accepted call.
        let body = match (status, retry_after, call_id) {
            (503, false, _) => Bytes::from_static(b"503 without Retry-After"),
            (202, _, Some(id)) => Bytes::from(id),
            _ => body,
        };
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
}

// ---------------------------------------------------------------------------------------------
// Load and audit

/// What the clients saw.
#[derive(Debug, Default)]
struct Sent {
    /// Accepted calls: call id and when the 202 came.
    accepted: Vec<(String, Instant)>,
    /// Calls the clients gave up on (never accepted within their deadline).
    given_up: u64,
    /// Answers that were neither 202 nor a retryable refusal, and 503s without `Retry-After`.
    wrong: Vec<String>,
}

/// Posts `rate` calls a second for `span`, each retried with its own `Idempotency-Key` until it
/// is accepted (at most 60 s), from the client host.
async fn load(fleet: &Fleet, tag: &str, rate: u32, span: Duration) -> Arc<Mutex<Sent>> {
    let sent = Arc::new(Mutex::new(Sent::default()));
    let total = (f64::from(rate) * span.as_secs_f64()) as u64;
    let gateway = fleet.gateway;
    let callback = fleet.callback_url.clone();
    let tag = tag.to_owned();
    let s = sent.clone();
    fleet
        .client
        .run(async move {
            let mut calls = tokio::task::JoinSet::new();
            let every = Duration::from_secs_f64(1.0 / f64::from(rate));
            let mut tick = tokio::time::interval(every);
            for n in 0..total {
                tick.tick().await;
                let key = format!("{tag}-{n}");
                let (s, callback) = (s.clone(), callback.clone());
                calls.spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let headers = vec![
                            ("idempotency-key".to_owned(), key.clone()),
                            ("x-callback-url".to_owned(), callback.clone()),
                        ];
                        let path = format!("/async-function/{FUNCTION}");
                        match http(gateway, "POST", &path, Some(headers)).await {
                            Ok((202, id)) => {
                                let id = String::from_utf8_lossy(&id).into_owned();
                                s.lock().unwrap().accepted.push((id, Instant::now()));
                                return;
                            }
                            Ok((503, body)) if body.as_ref() != b"503 without Retry-After" => {}
                            Ok((status, body)) => {
                                let line = format!("{status} {}", String::from_utf8_lossy(&body));
                                s.lock().unwrap().wrong.push(line);
                                if status != 503 {
                                    return;
                                }
                            }
                            // The gateway is up; a connection that fails is the fault's doing.
                            Err(_) => {}
                        }
                        if Instant::now() > deadline {
                            s.lock().unwrap().given_up += 1;
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
            }
            while calls.join_next().await.is_some() {}
        })
        .await;
    sent
}

/// One fault's audit, as the report shows it.
#[derive(Debug)]
struct Audit {
    fault: String,
    accepted: usize,
    lost: usize,
    dead_lettered: u64,
    duplicate_runs: usize,
    duplicate_callbacks: usize,
    status_disagreements: usize,
    wrong_answers: usize,
    given_up: u64,
    /// The longest time without a call accepted, from the fault's start to the end of the load.
    longest_refusal_s: f64,
    /// For a partitioned leader: when the other nodes had a new one, and the first call
    /// accepted after that, counted from the new leader.
    new_leader_s: Option<f64>,
    accepted_after_new_leader_s: Option<f64>,
    /// Which node each fleet process was connected to when the fault began.
    connected_to: HashMap<String, String>,
    /// The partitioned leader, and when each process that was connected to it showed up on
    /// another node (NaN: not within the cut).
    leader: Option<String>,
    moved_after_s: HashMap<String, f64>,
    queues_empty: bool,
    /// When each call was accepted.
    accepted_at: Vec<Instant>,
}

impl Audit {
    fn json(&self) -> Value {
        json!({
            "fault": self.fault,
            "accepted": self.accepted,
            "lost": self.lost,
            "dead_lettered": self.dead_lettered,
            "duplicate_runs": self.duplicate_runs,
            "duplicate_callbacks": self.duplicate_callbacks,
            "status_disagreements": self.status_disagreements,
            "wrong_answers": self.wrong_answers,
            "given_up": self.given_up,
            "longest_refusal_s": self.longest_refusal_s,
            "new_leader_s": self.new_leader_s,
            "accepted_after_new_leader_s": self.accepted_after_new_leader_s,
            "connected_to": self.connected_to,
            "leader": self.leader,
            "moved_after_s": self.moved_after_s,
            "queues_empty": self.queues_empty,
        })
    }
}

async fn audit(fleet: &Fleet, fault: &str, sent: &Sent, since: Instant) -> Audit {
    let ids: HashSet<String> = sent.accepted.iter().map(|(id, _)| id.clone()).collect();
    let called_back = |f: &Fleet| -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for r in f.callbacks.requests() {
            *n.entry(r.header("x-call-id").to_owned()).or_default() += 1;
        }
        n
    };
    let gateway = fleet.gateway;
    let dead_letters = || async {
        fleet
            .client
            .run(async move {
                let (_, body) = http(gateway, "GET", "/system/dead-letters?limit=1000", None)
                    .await
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                v["dead_letters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["call_id"].as_str().map(str::to_owned))
                    .collect::<HashSet<String>>()
            })
            .await
    };
    let deadline = Instant::now() + SETTLE;
    let (callbacks, dead) = loop {
        let callbacks = called_back(fleet);
        let dead = dead_letters().await;
        let ended = ids
            .iter()
            .filter(|id| callbacks.contains_key(*id) || dead.contains(*id))
            .count();
        if ended == ids.len() || Instant::now() > deadline {
            break (callbacks, dead);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The queues empty before runs are counted: a call whose ack was lost in the fault runs
    // again after `ack_wait`, and that run is a duplicate to count.
    let queues_empty = fleet
        .client
        .run(async move {
            let deadline = Instant::now() + QUEUES_EMPTY;
            loop {
                let (_, body) = http(gateway, "GET", "/system/queues", None)
                    .await
                    .unwrap_or_default();
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                let busy = v.as_array().is_none_or(|rows| {
                    rows.iter().any(|r| {
                        ["pending", "in_flight", "retrying"]
                            .iter()
                            .any(|f| r[*f].as_u64() != Some(0))
                    })
                });
                if !busy {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
    let lost = ids
        .iter()
        .filter(|id| !callbacks.contains_key(*id) && !dead.contains(*id))
        .count();
    let mut runs: HashMap<String, usize> = HashMap::new();
    for r in fleet.function.requests() {
        let id = r.header("x-call-id");
        if ids.contains(id) {
            *runs.entry(id.to_owned()).or_default() += 1;
        }
    }
    let duplicate_runs = runs.values().map(|n| n.saturating_sub(1)).sum();
    let duplicate_callbacks = ids
        .iter()
        .filter_map(|id| callbacks.get(id))
        .map(|n| n.saturating_sub(1))
        .sum();
    // Every call's status: `succeeded`, as its callback (200) says; `dead` for a dead letter.
    let checks: Vec<(String, &'static str)> = ids
        .iter()
        .map(|id| {
            let want = if dead.contains(id) {
                "dead"
            } else {
                "succeeded"
            };
            (id.clone(), want)
        })
        .collect();
    let status_disagreements = fleet
        .client
        .run(async move {
            let mut wrong = 0;
            // A 503 tells the client to ask again: right after a fault the status stream may
            // still be electing its leader. The audit asks again as a client would, within a
            // bound; only another answer, or a 503 past the bound, disagrees.
            let patience = tokio::time::Instant::now() + STATUS_PATIENCE;
            for (id, want) in checks {
                let answer = loop {
                    let answer = http(gateway, "GET", &format!("/async-call/{id}"), None).await;
                    if matches!(answer, Ok((503, _))) && tokio::time::Instant::now() < patience {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    break answer;
                };
                let v: Value = answer
                    .as_ref()
                    .ok()
                    .and_then(|(_, body)| serde_json::from_slice(body).ok())
                    .unwrap_or_default();
                if v["state"] != want {
                    eprintln!("status of {id} disagrees with its end ({want}): {answer:?}");
                    wrong += 1;
                }
            }
            wrong
        })
        .await;
    let mut times: Vec<Instant> = sent.accepted.iter().map(|(_, at)| *at).collect();
    times.sort();
    let mut last = since;
    let mut longest = Duration::ZERO;
    for at in times.iter().filter(|at| **at > since) {
        longest = longest.max(at.duration_since(last));
        last = *at;
    }
    Audit {
        fault: fault.to_owned(),
        accepted: ids.len(),
        lost,
        dead_lettered: dead.iter().filter(|id| ids.contains(*id)).count() as u64,
        duplicate_runs,
        duplicate_callbacks,
        status_disagreements,
        wrong_answers: sent.wrong.len(),
        given_up: sent.given_up,
        longest_refusal_s: longest.as_secs_f64(),
        new_leader_s: None,
        accepted_after_new_leader_s: None,
        connected_to: HashMap::new(),
        leader: None,
        moved_after_s: HashMap::new(),
        queues_empty,
        accepted_at: times,
    }
}

// ---------------------------------------------------------------------------------------------
// The faults

/// Runs the load around `fault` (which returns once the fault is over): `before` of calm, then
/// the fault, then three seconds of calm, and audits every call.
async fn under_load<F, Fut>(
    fleet: &Fleet,
    mode: Mode,
    name: &str,
    span: Duration,
    fault: F,
) -> (Audit, Instant)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let before = Duration::from_secs(2);
    let total = before + span + Duration::from_secs(3);
    let connected_to = fleet.connections().await;
    let load = load(fleet, name, mode.rate, total);
    let fault = async {
        tokio::time::sleep(before).await;
        let at = Instant::now();
        fault().await;
        at
    };
    let (sent, at) = tokio::join!(load, fault);
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let mut a = audit(fleet, name, &sent, at).await;
    a.connected_to = connected_to;
    eprintln!("{}", a.json());
    (a, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_call_survives_partitions_loss_and_node_kills() {
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(why) => {
            eprintln!("fault tests skipped: {why}");
            return;
        }
    };
    let mode = Mode::from_env();
    let fleet = Fleet::start(lab).await;
    let created = fleet.streams_created().await;
    let mut report = Vec::new();

    // The call stream's leader, cut off from the other nodes and from every client, on the node
    // the gateway is connected to (the case where the gateway must move to go on).
    let gateway_node = fleet
        .connections()
        .await
        .into_iter()
        .find(|(p, _)| p.starts_with("flotilla-gateway"))
        .map(|(_, node)| node)
        .expect("the gateway is connected");
    fleet.lead_from(&gateway_node).await;
    let leader = fleet
        .leader(fleet.urls.clone())
        .await
        .expect("a stream leader");
    let survivors = fleet.urls_without(&leader);
    let cut_host = fleet.node(&leader).host.clone();
    let new_leader = Arc::new(Mutex::new(None));
    let moved: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let before = fleet.connections().await;
    let on_cut: Vec<String> = before
        .iter()
        .filter(|(_, node)| **node == leader)
        .map(|(p, _)| p.clone())
        .collect();
    let (mut a, at) = under_load(
        &fleet,
        mode,
        "leader-partition",
        Duration::from_secs(10),
        || async {
            fleet.lab.cut(&cut_host).unwrap();
            let cut_at = Instant::now();
            let deadline = cut_at + Duration::from_secs(10);
            while Instant::now() < deadline {
                if new_leader.lock().unwrap().is_none()
                    && let Some(l) = fleet.leader(survivors.clone()).await
                    && l != leader
                {
                    *new_leader.lock().unwrap() = Some(Instant::now());
                }
                // When each process that was on the cut node shows up on another.
                let now = fleet.connections_except(&leader).await;
                for p in &on_cut {
                    if now.contains_key(p) {
                        moved
                            .lock()
                            .unwrap()
                            .entry(p.clone())
                            .or_insert_with(Instant::now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            fleet.lab.heal(&cut_host).unwrap();
        },
    )
    .await;
    let elected = new_leader
        .lock()
        .unwrap()
        .expect("the other nodes elect a new leader");
    a.new_leader_s = Some(elected.duration_since(at).as_secs_f64());
    a.leader = Some(leader.clone());
    a.moved_after_s = moved
        .lock()
        .unwrap()
        .iter()
        .map(|(p, t)| (p.clone(), t.duration_since(at).as_secs_f64()))
        .collect();
    for p in on_cut {
        a.moved_after_s.entry(p).or_insert(f64::NAN);
    }
    a.accepted_after_new_leader_s = a
        .accepted_at
        .iter()
        .find(|t| **t > elected)
        .map(|t| t.duration_since(elected).as_secs_f64());
    eprintln!("{}", a.json());
    report.push(a);

    if mode.long {
        let w1 = fleet.workers[0].clone();
        let (a, _) = under_load(
            &fleet,
            mode,
            "worker-partition",
            Duration::from_secs(10),
            || async {
                fleet.lab.cut(&w1).unwrap();
                tokio::time::sleep(Duration::from_secs(10)).await;
                fleet.lab.heal(&w1).unwrap();
            },
        )
        .await;
        report.push(a);

        let impaired = Mutex::new(None);
        let (a, _) = under_load(
            &fleet,
            mode,
            "loss-and-delay",
            Duration::from_secs(20),
            || async {
                let applied = fleet.lab.impair(5, 50).unwrap();
                *impaired.lock().unwrap() = Some(applied);
                tokio::time::sleep(Duration::from_secs(20)).await;
                fleet.lab.unimpair(applied).unwrap();
            },
        )
        .await;
        let mut a = a;
        if *impaired.lock().unwrap() == Some(Impairment::LossOnly) {
            a.fault = "loss-5%-no-delay (kernel without netem)".into();
        }
        report.push(a);

        let (a, _) = under_load(
            &fleet,
            mode,
            "node-kills",
            Duration::from_secs(30),
            || async {
                for node in &fleet.nodes {
                    node.kill().await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    node.start(&fleet.bin).await;
                    tokio::time::sleep(Duration::from_secs(7)).await;
                }
            },
        )
        .await;
        report.push(a);
    }

    // The gateway cut off from every NATS node while clients still reach it: 503 with
    // Retry-After, and nothing accepted that is not stored.
    let gw = fleet.gw_host.clone();
    let nodes: Vec<Host> = fleet.nodes.iter().map(|n| n.host.clone()).collect();
    let (a, _) = under_load(
        &fleet,
        mode,
        "gateway-cut-from-nats",
        Duration::from_secs(10),
        || async {
            let to: Vec<&Host> = nodes.iter().collect();
            fleet.lab.sever(&gw, &to).unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            fleet.lab.mend(&gw, &to).unwrap();
        },
    )
    .await;
    report.push(a);

    print_report(&report);
    if let Some(path) = std::env::var_os("FLOTILLA_FAULTS_REPORT") {
        let json: Vec<Value> = report.iter().map(Audit::json).collect();
        std::fs::write(path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
    for a in &report {
        assert!(a.accepted > 0, "{}: nothing accepted", a.fault);
        assert_eq!(a.lost, 0, "{}: accepted calls lost", a.fault);
        assert_eq!(a.given_up, 0, "{}: clients gave up", a.fault);
        assert!(a.wrong_answers == 0, "{}: wrong answers", a.fault);
        assert_eq!(
            a.status_disagreements, 0,
            "{}: status disagrees with the callback",
            a.fault
        );
        assert!(a.queues_empty, "{}: queues not empty", a.fault);
    }
    assert_eq!(
        fleet.streams_created().await,
        created,
        "a stream was re-created during the faults"
    );
    let leader = &report[0];
    let after = leader.accepted_after_new_leader_s;
    assert!(
        after.is_some_and(|s| s <= 2.0),
        "accepting again {after:?} s after the new leader (at most 2 s)"
    );
}

fn print_report(report: &[Audit]) {
    eprintln!(
        "{:<22} {:>8} {:>5} {:>10} {:>10} {:>9} {:>12} {:>12}",
        "fault", "accepted", "lost", "dup runs", "dup cbs", "status≠", "refused s", "after leader"
    );
    for a in report {
        let s = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        eprintln!(
            "{:<22} {:>8} {:>5} {:>10} {:>10} {:>9} {:>12} {:>12}",
            a.fault,
            a.accepted,
            a.lost,
            a.duplicate_runs,
            a.duplicate_callbacks,
            a.status_disagreements,
            s(Some(a.longest_refusal_s)),
            s(a.accepted_after_new_leader_s),
        );
    }
}

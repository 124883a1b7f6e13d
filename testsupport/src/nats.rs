//! nats-server processes for tests. The binary comes from `NATS_SERVER_BIN`, else `PATH`, else the
//! copy `scripts/setup` installs under `.tools/` in the workspace. Every server picks its own
//! ports (`-1`) and reports them in a ports file, so no port is chosen here and released before
//! the server binds it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the nats-server binary is; panics with the fix when there is none.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats/bin/nats-server");
    if local.exists() {
        return local;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("nats-server");
            if p.exists() {
                return p;
            }
        }
    }
    panic!("no nats-server: run scripts/setup, or set NATS_SERVER_BIN");
}

/// What nats-server writes to `<dir>/<executable>_<pid>.ports` once its listeners are bound.
#[derive(Debug, serde::Deserialize)]
struct PortsFile {
    nats: Vec<String>,
    #[serde(default)]
    cluster: Vec<String>,
}

/// The port of the first URL in `urls` (`nats://127.0.0.1:4222`).
fn first_port(urls: &[String]) -> Option<u16> {
    urls.first()?.rsplit_once(':')?.1.parse().ok()
}

/// The ports a server reported, once its ports file is whole.
fn read_ports(dir: &Path, pid: u32) -> Option<(u16, Option<u16>)> {
    let suffix = format!("_{pid}.ports");
    let path = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&suffix))?;
    // The file may be caught half written: unparsable counts as not there yet.
    let ports: PortsFile = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some((first_port(&ports.nats)?, first_port(&ports.cluster)))
}

/// How one node of a cluster routes to the others.
#[derive(Debug, Clone)]
struct Routing {
    /// Server name, as NATS reports stream leaders.
    name: String,
    /// Route port, chosen by the server at its first start and kept for `resume`.
    port: Option<u16>,
    routes: Vec<String>,
}

/// One nats-server with JetStream, its store in a temporary folder. Killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    /// Chosen by the server at its first start and kept for `resume`, so clients reconnect.
    port: Option<u16>,
    routing: Option<Routing>,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// A single server on a port of its choosing.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    fn spawn(routing: Option<Routing>) -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(store.path().join("ports")).expect("ports dir");
        let mut s = Self {
            child: None,
            port: None,
            routing,
            store,
        };
        s.resume();
        s
    }

    fn args(&self) -> Vec<String> {
        let port = |p: Option<u16>| p.map_or("-1".to_owned(), |p| p.to_string());
        let mut args = vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port(self.port),
            "-sd".into(),
            self.store.path().display().to_string(),
            "--ports_file_dir".into(),
            self.store.path().join("ports").display().to_string(),
        ];
        if let Some(r) = &self.routing {
            args.extend([
                "-n".into(),
                r.name.clone(),
                "--cluster_name".into(),
                "flotilla".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", port(r.port)),
                "--routes".into(),
                r.routes.join(","),
            ]);
        }
        args
    }

    /// Starts the process again on the same ports and store, after `kill`.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let args = self.args();
        let child = Command::new(nats_server_bin())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        self.wait_listening(&args, Duration::from_secs(15));
    }

    /// Waits for the ports file, then for the client port to accept a connection.
    fn wait_listening(&mut self, args: &[String], timeout: Duration) {
        let start = Instant::now();
        let ports_dir = self.store.path().join("ports");
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nats-server exited with {status} (args {args:?})");
            }
            if let Some((port, route_port)) = read_ports(&ports_dir, child.id())
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                self.port = Some(port);
                if let Some(r) = self.routing.as_mut() {
                    r.port = route_port;
                }
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "nats-server did not report a listening port within {timeout:?} (args {args:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process at once (SIGKILL), keeping its store for `resume`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port.expect("known once started")
    }

    /// The route port of a cluster node.
    fn route_port(&self) -> Option<u16> {
        self.routing.as_ref().and_then(|r| r.port)
    }

    /// The process id while it runs (to read its memory and CPU from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// A client connection with JetStream ready to answer.
    pub async fn client(&self) -> async_nats::Client {
        connect_ready(&self.url()).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects and waits until JetStream answers (a cluster needs a moment to elect its leader).
pub async fn connect_ready(urls: &str) -> async_nats::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let servers: Vec<&str> = urls.split(',').collect();
        if let Ok(client) = async_nats::connect(servers).await {
            let js = async_nats::jetstream::new(client.clone());
            if js.query_account().await.is_ok() {
                return client;
            }
        }
        assert!(
            Instant::now() < deadline,
            "JetStream at {urls} not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A route no server can ever listen on: connecting to port 0 is refused at once.
const NO_ROUTE_YET: &str = "nats://127.0.0.1:0";

/// Three nats-servers routed into one JetStream cluster on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts the nodes one after another, each on ports of its choosing, each routed to the
    /// route ports the earlier ones reported. JetStream refuses to start a clustered server with
    /// no route at all, and the first node cannot know a route port no server has chosen yet: it
    /// gets `NO_ROUTE_YET`, a route that can never connect (so never a race), and learns of the
    /// others when they connect to it. The later nodes route to it (and to each other), so the
    /// cluster stays whole when any one node is killed, and a resumed node keeps its ports.
    pub fn start() -> Self {
        let mut nodes: Vec<NatsServer> = Vec::with_capacity(3);
        for i in 0..3 {
            let mut routes: Vec<String> = nodes
                .iter()
                .filter_map(NatsServer::route_port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            if routes.is_empty() {
                routes.push(NO_ROUTE_YET.into());
            }
            nodes.push(NatsServer::spawn(Some(Routing {
                name: format!("n{i}"),
                port: None,
                routes,
            })));
        }
        Self { nodes }
    }

    /// Every node's URL, comma separated, as clients take them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client once the cluster is whole: JetStream answers and a stream with three replicas
    /// can be placed (so every node has joined the meta group, not just a quorum).
    pub async fn client(&self) -> async_nats::Client {
        let client = connect_ready(&self.urls()).await;
        let js = async_nats::jetstream::new(client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "TESTSUPPORT_PROBE".into(),
                    subjects: vec!["testsupport.probe".into()],
                    num_replicas: 3,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await;
            if probe.is_ok() {
                let _ = js.delete_stream("TESTSUPPORT_PROBE").await;
                return client;
            }
            assert!(
                Instant::now() < deadline,
                "cluster at {} did not place three replicas in 30 s",
                self.urls()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node a server name (`n0`, `n1`, `n2`, as NATS reports leaders) belongs to.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        server_name
            .strip_prefix('n')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.nodes.len())
    }
}

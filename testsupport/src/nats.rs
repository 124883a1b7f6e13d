//! nats-server processes for tests. The binary comes from `NATS_SERVER_BIN`, else `PATH`, else the
//! copy `scripts/setup` installs under `.tools/` in the workspace.

use std::net::TcpListener;
use std::path::PathBuf;
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// One nats-server with JetStream, its store in a temporary folder. Killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// A single server on a free port.
    pub fn start() -> Self {
        let store = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let args = vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            store.path().display().to_string(),
        ];
        Self::spawn(port, args, store)
    }

    fn spawn(port: u16, args: Vec<String>, store: tempfile::TempDir) -> Self {
        let mut s = Self {
            child: None,
            port,
            args,
            _store: store,
        };
        s.resume();
        s
    }

    /// Starts the process again on the same port and store, after `kill`.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(15));
    }

    fn wait_listening(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("nats-server exited with {status} (args {:?})", self.args);
            }
            assert!(
                start.elapsed() < timeout,
                "nats-server did not listen on {}",
                self.port
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
        self.port
    }

    /// The process id while it runs (to read its memory and CPU from `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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

/// Three nats-servers routed into one JetStream cluster on loopback.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start() -> Self {
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..3)
            .map(|i| {
                let store = tempfile::tempdir().expect("temp dir");
                let args = vec![
                    "-js".into(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    client_ports[i].to_string(),
                    "-sd".into(),
                    store.path().display().to_string(),
                    "-n".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "flotilla".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".into(),
                    routes.clone(),
                ];
                NatsServer::spawn(client_ports[i], args, store)
            })
            .collect();
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

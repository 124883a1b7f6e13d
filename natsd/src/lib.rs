//! nats-server processes with JetStream and a temporary store, alone or as a cluster of three.
//! The binary comes from `NATS_SERVER_BIN`, else the copy `scripts/setup` installs under `.tools/`
//! in the workspace, else `PATH`. Every server picks its own ports (`-1`) and reports them in a
//! ports file, so no port is chosen here and released before the server binds it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a nats-server could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("no nats-server: run scripts/setup, or set NATS_SERVER_BIN")]
    NoBinary,
    #[error("cannot make a temporary store for nats-server: {0}")]
    Store(#[source] std::io::Error),
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server exited with {status} (args {args:?})")]
    Exited {
        status: ExitStatus,
        args: Vec<String>,
    },
    #[error("nats-server did not report a listening port within {within:?} (args {args:?})")]
    NotListening { within: Duration, args: Vec<String> },
    #[error("nats-server is already running")]
    AlreadyRunning,
    #[error("nats-server is not running")]
    NotRunning,
    #[error("the task starting nats-server failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("JetStream at {urls} not ready within {within:?}: {last}")]
    NotReady {
        urls: String,
        within: Duration,
        #[source]
        last: BoxError,
    },
    #[error("the cluster at {urls} did not place three replicas within {within:?}: {last}")]
    NotWhole {
        urls: String,
        within: Duration,
        #[source]
        last: BoxError,
    },
}

/// Where the nats-server binary is.
pub fn nats_server_bin() -> Result<PathBuf, NatsError> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats/bin/nats-server");
    if local.exists() {
        return Ok(local);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|p| p.exists())
        })
        .ok_or(NatsError::NoBinary)
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

/// The client and route ports a server reported, once its ports file is whole.
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
    port: u16,
    routing: Option<Routing>,
    store: tempfile::TempDir,
    /// A configuration file given with `-c` (users, permissions, TLS), kept in the store.
    config: Option<std::path::PathBuf>,
}

impl NatsServer {
    /// A single server on a port of its choosing. Blocks until it listens.
    pub fn start() -> Result<Self, NatsError> {
        Self::spawn(None, None)
    }

    /// A single server that also reads `config` (nats-server's configuration syntax: users,
    /// permissions, TLS). The command line still sets the address, port and store.
    pub fn start_with_config(config: &str) -> Result<Self, NatsError> {
        Self::spawn(None, Some(config))
    }

    /// `start` on a blocking thread, for async callers (the start polls with sleeps).
    pub async fn launch() -> Result<Self, NatsError> {
        tokio::task::spawn_blocking(Self::start)
            .await
            .map_err(NatsError::Task)?
    }

    fn spawn(routing: Option<Routing>, config: Option<&str>) -> Result<Self, NatsError> {
        let store = tempfile::tempdir().map_err(NatsError::Store)?;
        std::fs::create_dir(store.path().join("ports")).map_err(NatsError::Store)?;
        let config = match config {
            Some(text) => {
                let path = store.path().join("nats.conf");
                std::fs::write(&path, text).map_err(NatsError::Store)?;
                Some(path)
            }
            None => None,
        };
        let mut s = Self {
            child: None,
            port: 0,
            routing,
            store,
            config,
        };
        s.resume()?;
        Ok(s)
    }

    fn args(&self) -> Vec<String> {
        // 0 is never a port a server had: ask for one of its choosing.
        let port = |p: u16| if p == 0 { "-1".into() } else { p.to_string() };
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
        if let Some(config) = &self.config {
            args.extend(["-c".into(), config.display().to_string()]);
        }
        if let Some(r) = &self.routing {
            args.extend([
                "-n".into(),
                r.name.clone(),
                "--cluster_name".into(),
                "flotilla".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", port(r.port.unwrap_or(0))),
                "--routes".into(),
                r.routes.join(","),
            ]);
        }
        args
    }

    /// Starts the process again on the same ports and store, after `kill`. Blocks until it
    /// listens.
    pub fn resume(&mut self) -> Result<(), NatsError> {
        if self.child.is_some() {
            return Err(NatsError::AlreadyRunning);
        }
        let bin = nats_server_bin()?;
        let args = self.args();
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| NatsError::Spawn { bin, source })?;
        self.child = Some(child);
        let listening = self.wait_listening(args, Duration::from_secs(15));
        if listening.is_err() {
            self.kill();
        }
        listening
    }

    /// Waits for the ports file, then for the client port to accept a connection.
    fn wait_listening(&mut self, args: Vec<String>, within: Duration) -> Result<(), NatsError> {
        let start = Instant::now();
        let ports_dir = self.store.path().join("ports");
        loop {
            let child = self.child.as_mut().ok_or(NatsError::NotRunning)?;
            if let Ok(Some(status)) = child.try_wait() {
                return Err(NatsError::Exited { status, args });
            }
            if let Some((port, route_port)) = read_ports(&ports_dir, child.id())
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                self.port = port;
                if let Some(r) = self.routing.as_mut() {
                    r.port = route_port;
                }
                return Ok(());
            }
            if start.elapsed() >= within {
                return Err(NatsError::NotListening { within, args });
            }
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
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client connection with JetStream ready to answer.
    pub async fn client(&self) -> Result<async_nats::Client, NatsError> {
        connect_ready(&self.url()).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Connects to `urls` (comma separated) and waits until JetStream answers (a cluster needs a
/// moment to elect its leader).
pub async fn connect_ready(urls: &str) -> Result<async_nats::Client, NatsError> {
    let within = Duration::from_secs(30);
    let deadline = Instant::now() + within;
    let servers: Vec<&str> = urls.split(',').collect();
    loop {
        let last: BoxError = match async_nats::connect(servers.clone()).await {
            Ok(client) => match jetstream::new(client.clone()).query_account().await {
                Ok(_) => return Ok(client),
                Err(e) => e.into(),
            },
            Err(e) => e.into(),
        };
        if Instant::now() >= deadline {
            return Err(NatsError::NotReady {
                urls: urls.to_owned(),
                within,
                last,
            });
        }
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
    /// Blocks until every node listens.
    pub fn start() -> Result<Self, NatsError> {
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
            nodes.push(NatsServer::spawn(
                Some(Routing {
                    name: format!("n{i}"),
                    port: None,
                    routes,
                }),
                None,
            )?);
        }
        Ok(Self { nodes })
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
    pub async fn client(&self) -> Result<async_nats::Client, NatsError> {
        let urls = self.urls();
        let client = connect_ready(&urls).await?;
        let js = jetstream::new(client.clone());
        let within = Duration::from_secs(30);
        let deadline = Instant::now() + within;
        loop {
            let probe = js
                .create_stream(jetstream::stream::Config {
                    name: "FLEET_PROBE".into(),
                    subjects: vec!["fleet.probe".into()],
                    num_replicas: 3,
                    storage: jetstream::stream::StorageType::Memory,
                    ..Default::default()
                })
                .await;
            let last = match probe {
                Ok(_) => {
                    let _ = js.delete_stream("FLEET_PROBE").await;
                    return Ok(client);
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(NatsError::NotWhole {
                    urls,
                    within,
                    last: last.into(),
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_read_from_the_servers_own_file_once_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = |pid: u32| dir.path().join(format!("nats-server_{pid}.ports"));
        assert_eq!(read_ports(dir.path(), 7), None, "no file yet");
        std::fs::write(file(7), r#"{"nats":["nats://127.0.0.1:4"#).unwrap();
        assert_eq!(read_ports(dir.path(), 7), None, "half written");
        std::fs::write(file(7), r#"{"nats":["nats://127.0.0.1:4222"]}"#).unwrap();
        assert_eq!(read_ports(dir.path(), 7), Some((4222, None)));
        assert_eq!(read_ports(dir.path(), 8), None, "another process's file");
        std::fs::write(
            file(8),
            r#"{"nats":["nats://127.0.0.1:4223"],"cluster":["nats://127.0.0.1:6222"]}"#,
        )
        .unwrap();
        assert_eq!(read_ports(dir.path(), 8), Some((4223, Some(6222))));
    }
}

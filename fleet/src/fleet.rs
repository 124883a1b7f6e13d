//! A whole fleet in this process: NATS (a nats-server started here, or one that runs), the shard
//! count agreed and the streams created, a gateway and workers, all on 127.0.0.1 port 0.
//! Stopped workers first, so they drain and flush their callbacks while the gateway still runs.

use std::time::Duration;

use async_nats::jetstream::{self, stream::StorageType};
use flotilla_queue::Topology;
use flotilla_queue::topology::StreamSettings;

use crate::error::FleetError;
use crate::process::{Gateway, Worker};
use flotilla_natsd::{NatsServer, connect_ready};

/// What to start. The defaults start a nats-server and agree one shard, with no gateway and no
/// worker: add what the caller needs.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// NATS that runs already (URLs comma separated). `None` starts a nats-server with
    /// JetStream and a temporary store, stopped with the fleet.
    pub nats_url: Option<String>,
    /// Agreed before anything else starts, then given to every process as `--shards`.
    pub shards: u32,
    /// `--memory-streams` for every process, and the streams created that way.
    pub memory_streams: bool,
    /// `--call-status` for every process.
    pub call_status: bool,
    /// `--function-url-template` for every process; `None` keeps the binaries' default.
    pub function_url_template: Option<String>,
    /// `--log` for every process (their logs share this process's output).
    pub log: String,
    /// Start a gateway.
    pub gateway: bool,
    /// Workers to start with the fleet; more can follow with `Fleet::start_workers`.
    pub workers: Vec<WorkerSpec>,
    /// How long each process may take before `/readyz` answers 200.
    pub ready_within: Duration,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            nats_url: None,
            shards: 1,
            memory_streams: false,
            call_status: true,
            function_url_template: None,
            log: "warn".into(),
            gateway: false,
            workers: Vec::new(),
            ready_within: Duration::from_secs(30),
        }
    }
}

/// One worker of a fleet: a name for errors and its flags beyond the fleet's own.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub name: String,
    /// For example `["--shard", "1", "--replica-concurrency", "8"]`.
    pub args: Vec<String>,
}

impl WorkerSpec {
    pub fn new<I, T>(name: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self {
            name: name.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

/// A running fleet. Dropping it asks every process to stop and kills the nats-server it
/// started; `stop` drains them in order first.
#[derive(Debug)]
pub struct Fleet {
    // Declared (so dropped) before the nats-server, which they need while they stop.
    workers: Vec<Worker>,
    gateway: Option<Gateway>,
    nats_server: Option<NatsServer>,
    nats_url: String,
    client: async_nats::Client,
    topology: Topology,
    options: FleetOptions,
}

impl Fleet {
    /// Starts what `options` asks for and waits until every process is ready.
    pub async fn start(mut options: FleetOptions) -> Result<Self, FleetError> {
        let (nats_server, nats_url) = match options.nats_url.clone() {
            Some(url) => (None, url),
            None => {
                let server = NatsServer::launch().await?;
                let url = server.url();
                (Some(server), url)
            }
        };
        let client = connect_ready(&nats_url).await?;
        let settings = StreamSettings {
            storage: if options.memory_streams {
                StorageType::Memory
            } else {
                StorageType::File
            },
            ..StreamSettings::default()
        };
        let js = jetstream::new(client.clone());
        let topology = Topology::agree(&js, Some(options.shards), &settings).await?;
        topology.ensure_streams(&js, &settings).await?;
        let workers = std::mem::take(&mut options.workers);
        let mut fleet = Self {
            workers: Vec::new(),
            gateway: None,
            nats_server,
            nats_url,
            client,
            topology,
            options,
        };
        if fleet.options.gateway {
            // No load balancer sends to a fleet started here, so there is nothing to drain for.
            let mut args = fleet.common_args();
            args.extend(["--drain-delay".into(), "0s".into()]);
            let mut gateway = Gateway::start(args).await?;
            gateway.wait_ready(fleet.options.ready_within).await?;
            fleet.gateway = Some(gateway);
        }
        fleet.start_workers(workers).await?;
        Ok(fleet)
    }

    /// The flags every process of this fleet gets before its own.
    fn common_args(&self) -> Vec<String> {
        let mut args = vec![
            "--nats-url".to_owned(),
            self.nats_url.clone(),
            "--shards".into(),
            self.topology.shards.to_string(),
            "--log".into(),
            self.options.log.clone(),
        ];
        if let Some(template) = &self.options.function_url_template {
            args.extend(["--function-url-template".into(), template.clone()]);
        }
        if self.options.memory_streams {
            args.push("--memory-streams".into());
        }
        args.push(format!("--call-status={}", self.options.call_status));
        args
    }

    /// Starts `specs` together and waits until each is ready.
    pub async fn start_workers(
        &mut self,
        specs: impl IntoIterator<Item = WorkerSpec>,
    ) -> Result<(), FleetError> {
        let first_new = self.workers.len();
        for spec in specs {
            let args = self.common_args().into_iter().chain(spec.args);
            self.workers
                .push(Worker::start(args).await?.named(spec.name));
        }
        for worker in &mut self.workers[first_new..] {
            worker.wait_ready(self.options.ready_within).await?;
        }
        Ok(())
    }

    /// Stops every worker (they drain and flush their callbacks), each within `grace`; the
    /// gateway and NATS keep running. Every worker is stopped even when one fails; the first
    /// failure is returned and the others logged.
    pub async fn stop_workers(&mut self, grace: Duration) -> Result<(), FleetError> {
        for worker in &self.workers {
            worker.shutdown();
        }
        let mut first = Ok(());
        for worker in self.workers.drain(..) {
            let stopped = worker.stop_cleanly(grace).await;
            keep_first(&mut first, stopped);
        }
        first
    }

    /// Stops the workers, then the gateway, each within `grace`, then the nats-server it
    /// started. Everything is stopped even when a part fails; the first failure is returned and
    /// the others logged.
    pub async fn stop(mut self, grace: Duration) -> Result<(), FleetError> {
        let mut first = self.stop_workers(grace).await;
        if let Some(gateway) = self.gateway.take() {
            let stopped = gateway.stop_cleanly(grace).await;
            keep_first(&mut first, stopped);
        }
        first
    }

    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The nats-server this fleet started (none when it was given a URL).
    pub fn nats_server(&self) -> Option<&NatsServer> {
        self.nats_server.as_ref()
    }

    /// The nats-server this fleet started, to kill and resume it.
    pub fn nats_server_mut(&mut self) -> Option<&mut NatsServer> {
        self.nats_server.as_mut()
    }

    /// A client of the fleet's NATS, connected once JetStream answered.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    pub fn gateway(&self) -> Option<&Gateway> {
        self.gateway.as_ref()
    }

    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }
}

/// Keeps the first error in `first`; a later one is logged, so none goes unseen.
fn keep_first(first: &mut Result<(), FleetError>, next: Result<(), FleetError>) {
    if let Err(e) = next {
        if first.is_ok() {
            *first = Err(e);
        } else {
            tracing::warn!(error = %e, "fleet process did not stop cleanly");
        }
    }
}

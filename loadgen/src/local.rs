//! `--local`: a whole fleet in this process on 127.0.0.1 free ports: the gateway and shards ×
//! replicas workers through their libraries (as their binaries run them), against the
//! nats-server and function server the run started. Stopped, workers first, at the end.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot bind a local port: {0}")]
    Bind(#[from] std::io::Error),
    #[error("{which} configuration: {message}")]
    Config {
        which: &'static str,
        message: String,
    },
    #[error("{which} did not become ready within {within:?}: {last}")]
    NotReady {
        which: String,
        within: Duration,
        last: String,
    },
    #[error("{which} stopped early: {message}")]
    Died { which: String, message: String },
}

/// What the local fleet is made of.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub nats_url: String,
    pub function_url_template: String,
    pub shards: u32,
    pub replicas: u32,
    /// Per-function concurrency across a shard's replicas.
    pub concurrency: u32,
    pub memory_streams: bool,
}

type Task = JoinHandle<Result<(), String>>;

/// A running fleet.
#[derive(Debug)]
pub struct LocalFleet {
    pub gateway_url: String,
    spec: FleetSpec,
    gateway_stop: CancellationToken,
    gateway: Option<Task>,
    workers_stop: CancellationToken,
    workers: Vec<(String, Task)>,
    client: crate::net::HttpClient,
}

fn common_args(spec: &FleetSpec) -> Vec<String> {
    let mut a = vec![
        "--nats-url".to_owned(),
        spec.nats_url.clone(),
        "--shards".into(),
        spec.shards.to_string(),
        "--function-url-template".into(),
        spec.function_url_template.clone(),
        "--log".into(),
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    ];
    if spec.memory_streams {
        a.push("--memory-streams".into());
    }
    a
}

impl LocalFleet {
    /// Starts the gateway and waits for it to be ready. Workers start with `start_workers`.
    pub async fn start_gateway(spec: FleetSpec) -> Result<Self, LocalError> {
        let mut args = vec!["flotilla-gateway".to_owned()];
        args.extend(common_args(&spec));
        let config =
            <flotilla_gateway::Config as clap::Parser>::try_parse_from(&args).map_err(|e| {
                LocalError::Config {
                    which: "gateway",
                    message: e.to_string(),
                }
            })?;
        let config = config.check().map_err(|e| LocalError::Config {
            which: "gateway",
            message: e.to_string(),
        })?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let gateway_url = format!("http://{}", listener.local_addr()?);
        let gateway_stop = CancellationToken::new();
        let stop = gateway_stop.clone();
        let gateway = tokio::spawn(async move {
            flotilla_gateway::serve(config, listener, stop.cancelled_owned())
                .await
                .map_err(|e| e.to_string())
        });
        let mut fleet = Self {
            gateway_url,
            spec,
            gateway_stop,
            gateway: Some(gateway),
            workers_stop: CancellationToken::new(),
            workers: Vec::new(),
            client: crate::net::client(),
        };
        let url = format!("{}/readyz", fleet.gateway_url);
        fleet.wait_ready("gateway".into(), &url).await?;
        Ok(fleet)
    }

    /// Starts shards × replicas workers and waits until each is ready.
    pub async fn start_workers(&mut self) -> Result<(), LocalError> {
        let per_replica = self.spec.concurrency.div_ceil(self.spec.replicas).max(1);
        let mut ready_urls = Vec::new();
        for shard in 0..self.spec.shards {
            for replica in 0..self.spec.replicas {
                let mut args = vec!["flotilla-worker".to_owned()];
                args.extend(common_args(&self.spec));
                args.extend([
                    "--shard".into(),
                    shard.to_string(),
                    "--concurrency".into(),
                    self.spec.concurrency.to_string(),
                    "--replica-concurrency".into(),
                    per_replica.to_string(),
                    // Short enough that the end of a run does not wait on an idle drain.
                    "--grace".into(),
                    "5s".into(),
                ]);
                let config = <flotilla_worker::Config as clap::Parser>::try_parse_from(&args)
                    .map_err(|e| LocalError::Config {
                        which: "worker",
                        message: e.to_string(),
                    })?;
                config.validate().map_err(|e| LocalError::Config {
                    which: "worker",
                    message: e.to_string(),
                })?;
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let name = format!("worker shard {shard} replica {replica}");
                ready_urls.push((
                    name.clone(),
                    format!("http://{}/readyz", listener.local_addr()?),
                ));
                let stop = self.workers_stop.clone();
                let task = tokio::spawn(async move {
                    flotilla_worker::run(config, listener, stop.cancelled_owned())
                        .await
                        .map_err(|e| e.to_string())
                });
                self.workers.push((name, task));
            }
        }
        for (name, url) in ready_urls {
            self.wait_ready(name, &url).await?;
        }
        Ok(())
    }

    /// Polls `url` until it answers 200; fails at once if a fleet task ended.
    async fn wait_ready(&mut self, which: String, url: &str) -> Result<(), LocalError> {
        let within = Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + within;
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| LocalError::Config {
                    which: "local fleet",
                    message: e.to_string(),
                })?;
        loop {
            self.check_alive().await?;
            let req = hyper::Request::get(uri.clone())
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("static request parts are valid");
            let last = match tokio::time::timeout(Duration::from_secs(2), self.client.request(req))
                .await
            {
                Ok(Ok(resp)) if resp.status() == 200 => return Ok(()),
                Ok(Ok(resp)) => format!("status {}", resp.status()),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timeout".into(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(LocalError::NotReady {
                    which,
                    within,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An error when the gateway or a worker already returned.
    pub async fn check_alive(&mut self) -> Result<(), LocalError> {
        let mut tasks: Vec<(String, &mut Task)> = self
            .workers
            .iter_mut()
            .map(|(n, t)| (n.clone(), t))
            .collect();
        if let Some(g) = self.gateway.as_mut() {
            tasks.push(("gateway".into(), g));
        }
        for (name, task) in tasks {
            if task.is_finished() {
                let message = match task.await {
                    Ok(Ok(())) => "returned without being asked to".into(),
                    Ok(Err(e)) => e,
                    Err(e) => e.to_string(),
                };
                return Err(LocalError::Died {
                    which: name,
                    message,
                });
            }
        }
        Ok(())
    }

    /// Stops the workers (they drain and flush their callbacks), then the gateway; each gets
    /// `grace` before it is abandoned.
    pub async fn stop(mut self, grace: Duration) {
        self.workers_stop.cancel();
        for (name, task) in self.workers.drain(..) {
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(worker = %name, error = %e, "worker ended with an error")
                }
                Ok(Err(e)) => tracing::warn!(worker = %name, error = %e, "worker task failed"),
                Err(_) => tracing::warn!(worker = %name, "worker did not stop in time"),
            }
        }
        self.gateway_stop.cancel();
        if let Some(task) = self.gateway.take() {
            match tokio::time::timeout(grace, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gateway ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "gateway task failed"),
                Err(_) => tracing::warn!("gateway did not stop in time"),
            }
        }
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        // Stops everything even when `stop` was not reached (an error on the way).
        self.workers_stop.cancel();
        self.gateway_stop.cancel();
    }
}

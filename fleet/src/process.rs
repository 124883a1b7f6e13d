//! The gateway and the worker run in this process through their libraries, exactly as their
//! binaries run them: flags parsed by their own `Config`, a listener on 127.0.0.1 port 0, and a
//! shutdown future. One handle type serves both, so starting, probing and stopping them is
//! written once.

use std::ffi::OsString;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::{FleetError, ProbeError};

/// A Flotilla binary as a library: its name, its flags and its `run`.
pub trait Service {
    /// The binary's name: first in its argument list, and how errors name it.
    const NAME: &'static str;
    type Config: clap::Parser + Send + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    fn run(
        config: Self::Config,
        listener: TcpListener,
        shutdown: WaitForCancellationFutureOwned,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static;
}

/// A `Service` for a binary whose library exports `Config`, its error type and `run`.
macro_rules! service {
    ($(#[$doc:meta])* $marker:ident, $name:literal, $lib:ident, $error:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $marker {}

        impl Service for $marker {
            const NAME: &'static str = $name;
            type Config = $lib::Config;
            type Error = $lib::$error;

            fn run(
                config: Self::Config,
                listener: TcpListener,
                shutdown: WaitForCancellationFutureOwned,
            ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
                $lib::run(config, listener, shutdown)
            }
        }
    };
}

service!(
    /// `flotilla-gateway`: the listener serves the HTTP API.
    GatewayService,
    "flotilla-gateway",
    flotilla_gateway,
    GatewayError
);
service!(
    /// `flotilla-worker`: the listener serves `/healthz`, `/readyz` and `/metrics`.
    WorkerService,
    "flotilla-worker",
    flotilla_worker,
    WorkerError
);

pub type Gateway = InProcess<GatewayService>;
pub type Worker = InProcess<WorkerService>;

/// How often readiness is probed; a probe gets `PROBE_TIMEOUT` to answer.
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One gateway or worker running in a task of this process. Dropping it asks `run` to stop (the
/// shutdown future resolves) without waiting; `stop` waits.
pub struct InProcess<S: Service> {
    name: String,
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), S::Error>>>,
}

impl<S: Service> InProcess<S> {
    /// Parses `args` as the binary would (they follow its name), binds 127.0.0.1 port 0 and
    /// starts `run`. Returns at once: see `wait_ready`.
    pub async fn start<I, T>(args: I) -> Result<Self, FleetError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::start_at(args, (Ipv4Addr::LOCALHOST, 0).into()).await
    }

    /// Like `start`, listening on `addr` instead (an address of a test's network namespace).
    pub async fn start_at<I, T>(args: I, addr: SocketAddr) -> Result<Self, FleetError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv = std::iter::once(OsString::from(S::NAME)).chain(args.into_iter().map(Into::into));
        let config = <S::Config as clap::Parser>::try_parse_from(argv).map_err(|source| {
            FleetError::Config {
                which: S::NAME,
                source,
            }
        })?;
        Self::serve(config, addr).await
    }

    /// Like `start`, with a configuration already parsed.
    pub async fn start_with(config: S::Config) -> Result<Self, FleetError> {
        Self::serve(config, (Ipv4Addr::LOCALHOST, 0).into()).await
    }

    async fn serve(config: S::Config, addr: SocketAddr) -> Result<Self, FleetError> {
        let listener = TcpListener::bind(addr).await.map_err(FleetError::Bind)?;
        let addr = listener.local_addr().map_err(FleetError::Bind)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(S::run(config, listener, stop.clone().cancelled_owned()));
        Ok(Self {
            name: S::NAME.to_owned(),
            addr,
            stop,
            task: Some(task),
        })
    }

    /// Names it in errors (`worker shard 1 replica 0`) instead of the binary's name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its listener is: the gateway's API, the worker's admin server.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Probes `/readyz` until it answers 200; an error at once if `run` returned meanwhile, or
    /// after `within` with the last answer.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), FleetError> {
        let deadline = tokio::time::Instant::now() + within;
        let url = format!("{}/readyz", self.url());
        let uri: http::Uri = url
            .parse()
            .map_err(|source| FleetError::Url { url, source })?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<Bytes>>();
        loop {
            self.check_alive().await?;
            let last = match tokio::time::timeout(PROBE_TIMEOUT, client.get(uri.clone())).await {
                Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => return Ok(()),
                Ok(Ok(resp)) => ProbeError::Status(resp.status()),
                Ok(Err(e)) => ProbeError::Unreachable(e),
                Err(_) => ProbeError::Silent(PROBE_TIMEOUT),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(FleetError::NotReady {
                    which: self.name.clone(),
                    within,
                    last,
                });
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// An error when `run` already returned (with what it returned) or was waited for.
    pub async fn check_alive(&mut self) -> Result<(), FleetError> {
        match self.task.take() {
            Some(task) if task.is_finished() => Err(match task.await {
                Ok(Ok(())) => FleetError::Returned {
                    which: self.name.clone(),
                },
                Ok(Err(e)) => FleetError::Failed {
                    which: self.name.clone(),
                    source: Box::new(e),
                },
                Err(source) => FleetError::Panicked {
                    which: self.name.clone(),
                    source,
                },
            }),
            Some(task) => {
                self.task = Some(task);
                Ok(())
            }
            None => Err(FleetError::Joined {
                which: self.name.clone(),
            }),
        }
    }

    /// Asks `run` to stop (its shutdown future resolves) without waiting.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits up to `within` for `run` to return, without asking it to, and gives back what it
    /// returned. The outer error is the launcher's: `run` did not return in time, panicked, or
    /// was already waited for.
    pub async fn join(&mut self, within: Duration) -> Result<Result<(), S::Error>, FleetError> {
        let which = || self.name.clone();
        let task = self
            .task
            .as_mut()
            .ok_or_else(|| FleetError::Joined { which: which() })?;
        let joined =
            tokio::time::timeout(within, task)
                .await
                .map_err(|_| FleetError::StopTimeout {
                    which: which(),
                    within,
                })?;
        self.task = None;
        joined.map_err(|source| FleetError::Panicked {
            which: which(),
            source,
        })
    }

    /// Asks `run` to stop and waits up to `within` for it to drain; gives back what it returned.
    pub async fn stop(mut self, within: Duration) -> Result<Result<(), S::Error>, FleetError> {
        self.shutdown();
        self.join(within).await
    }

    /// `stop`, with an error of `run` turned into `FleetError::Failed`.
    pub async fn stop_cleanly(self, within: Duration) -> Result<(), FleetError> {
        let which = self.name.clone();
        self.stop(within).await?.map_err(|e| FleetError::Failed {
            which,
            source: Box::new(e),
        })
    }
}

impl<S: Service> std::fmt::Debug for InProcess<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field(
                "running",
                &self.task.as_ref().is_some_and(|t| !t.is_finished()),
            )
            .finish()
    }
}

impl<S: Service> Drop for InProcess<S> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

//! Hosts of their own for the fault tests: Linux network namespaces, each joined to one bridge by
//! a veth pair, with an address on a private subnet that exists only inside them. A [`Lab`]
//! creates them with `ip` (iproute2, as root) and removes every one of them when dropped; nothing
//! is added to the host's own namespace, so no traffic can leave the lab.
//!
//! Faults act on the bridge side of a host's link: [`Lab::cut`] takes it down (the host hears
//! nothing and nobody hears it, connections hang as on a real partition), [`Lab::impair`] adds
//! loss and delay with `tc netem`, and [`Lab::sever`] has some hosts drop what they send to
//! another (blackhole routes in their namespaces).
//!
//! Code runs in a host as a process (`ip netns exec`, [`Host::command`]) or on a tokio runtime
//! whose threads all live in the host's namespace ([`Host::runtime`]), so in-process services bind
//! and connect there.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lab's subnet: 10.99.0.0/24, inside its namespaces only.
const SUBNET: [u8; 3] = [10, 99, 0];

static LABS: AtomicU32 = AtomicU32::new(0);

/// Why no lab could be made: the tests that need one skip, saying this.
#[derive(Debug, thiserror::Error)]
pub enum NoLab {
    #[error("network namespaces need root (running as uid {0})")]
    NotRoot(u32),
    #[error("`ip` (iproute2) is not usable: {0}")]
    NoIp(String),
}

/// A command of the lab's set-up that failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {output}")]
pub struct LabError {
    command: String,
    output: String,
}

/// Runs `ip`/`tc` with `args`; its error output on failure.
fn run(program: &str, args: &[&str]) -> Result<(), LabError> {
    let failed = |output: String| LabError {
        command: format!("{program} {}", args.join(" ")),
        output,
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

/// What [`Lab::impair`] could apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impairment {
    LossAndDelay,
    /// The kernel has no netem: packets are lost, none delayed.
    LossOnly,
}

/// One host: a namespace, its address, and the bridge side of its link.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The veth end on the bridge, in the lab's hub namespace.
    link: String,
}

/// A set of hosts on one bridge; every namespace is deleted on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hub: String,
    hosts: Vec<Host>,
}

impl Lab {
    /// A lab with its bridge and no host yet.
    pub fn new() -> Result<Self, NoLab> {
        let uid = rustix::process::getuid().as_raw();
        if uid != 0 {
            return Err(NoLab::NotRoot(uid));
        }
        run("ip", &["-V"]).map_err(|e| NoLab::NoIp(e.to_string()))?;
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        // Short: interface names hold 15 bytes.
        let prefix = format!("fl{:x}{n}", std::process::id() % 0xffff);
        let hub = format!("{prefix}-hub");
        let lab = Self {
            hub: hub.clone(),
            prefix,
            hosts: Vec::new(),
        };
        let made = run("ip", &["netns", "add", &hub])
            .and_then(|()| run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]))
            .and_then(|()| run("ip", &["-n", &hub, "link", "set", "br0", "up"]));
        made.map_err(|e| NoLab::NoIp(e.to_string()))?;
        Ok(lab)
    }

    /// Adds a host named `name` with the next address of the subnet.
    pub fn host(&mut self, name: &str) -> Result<Host, LabError> {
        let index = self.hosts.len() + 1;
        let ns = format!("{}-{name}", self.prefix);
        let link = format!("{}v{index}", self.prefix);
        let ip = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], 10 + index as u8);
        let cidr = format!("{ip}/24");
        let hub = self.hub.as_str();
        run("ip", &["netns", "add", &ns])?;
        let host = Host {
            name: name.to_owned(),
            ns: ns.clone(),
            ip,
            link: link.clone(),
        };
        self.hosts.push(host.clone());
        run(
            "ip",
            &[
                "-n", hub, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ],
        )?;
        run(
            "ip",
            &["-n", hub, "link", "set", &link, "master", "br0", "up"],
        )?;
        run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// Cuts `host` off from every other host: its link goes down. Open connections hang, as
    /// when a cable is pulled or a zone is partitioned.
    pub fn cut(&self, host: &Host) -> Result<(), LabError> {
        run("ip", &["-n", &self.hub, "link", "set", &host.link, "down"])
    }

    /// Undoes [`Lab::cut`].
    pub fn heal(&self, host: &Host) -> Result<(), LabError> {
        run("ip", &["-n", &self.hub, "link", "set", &host.link, "up"])
    }

    /// Loses `loss_percent` of the packets towards every host and delays the rest by `delay_ms`
    /// (`tc netem` on the bridge side of every link: each packet crosses one such link). A
    /// kernel without netem gets the loss alone, from nftables in each host (`nft`, when
    /// present); the answer says what was applied.
    pub fn impair(&self, loss_percent: u32, delay_ms: u32) -> Result<Impairment, LabError> {
        let loss = format!("{loss_percent}%");
        let delay = format!("{delay_ms}ms");
        let mut netem = true;
        for h in &self.hosts {
            let added = run(
                "tc",
                &[
                    "-n", &self.hub, "qdisc", "replace", "dev", &h.link, "root", "netem", "loss",
                    &loss, "delay", &delay,
                ],
            );
            match added {
                Ok(()) => {}
                Err(e) if e.output.contains("qdisc kind is unknown") => {
                    netem = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if netem {
            return Ok(Impairment::LossAndDelay);
        }
        let rule = format!("numgen random mod 100 < {loss_percent} drop");
        for h in &self.hosts {
            run(
                "ip",
                &[
                    "netns", "exec", &h.ns, "nft", "add", "table", "inet", "impair",
                ],
            )?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &h.ns,
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    "impair",
                    "out",
                    "{ type filter hook output priority 0 ; }",
                ],
            )?;
            run(
                "ip",
                &[
                    "netns", "exec", &h.ns, "nft", "add", "rule", "inet", "impair", "out", &rule,
                ],
            )?;
        }
        Ok(Impairment::LossOnly)
    }

    /// Undoes [`Lab::impair`].
    pub fn unimpair(&self, applied: Impairment) -> Result<(), LabError> {
        for h in &self.hosts {
            match applied {
                Impairment::LossAndDelay => {
                    run(
                        "tc",
                        &["-n", &self.hub, "qdisc", "del", "dev", &h.link, "root"],
                    )?;
                }
                Impairment::LossOnly => run(
                    "ip",
                    &[
                        "netns", "exec", &h.ns, "nft", "delete", "table", "inet", "impair",
                    ],
                )?,
            }
        }
        Ok(())
    }

    /// Severs `host` from `peers` one way: each of them drops what it would send to `host`
    /// (a blackhole route), so `host`'s requests reach them and no answer comes back, and its
    /// connections to them hang as on a real partition, while every other host still reaches it.
    pub fn sever(&self, host: &Host, peers: &[&Host]) -> Result<(), LabError> {
        let dst = format!("{}/32", host.ip);
        for p in peers {
            run("ip", &["-n", &p.ns, "route", "add", "blackhole", &dst])?;
        }
        Ok(())
    }

    /// Undoes [`Lab::sever`].
    pub fn mend(&self, host: &Host, peers: &[&Host]) -> Result<(), LabError> {
        let dst = format!("{}/32", host.ip);
        for p in peers {
            run("ip", &["-n", &p.ns, "route", "del", "blackhole", &dst])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The veth pairs and the bridge go with their namespaces.
        for h in &self.hosts {
            let _ = run("ip", &["netns", "del", &h.ns]);
        }
        let _ = run("ip", &["netns", "del", &self.hub]);
    }
}

impl Host {
    /// A process to start in the host's namespace.
    pub fn command(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// A tokio runtime whose threads all live in the host's namespace: sockets its tasks open
    /// bind and connect there. It stops when the returned value is dropped.
    pub fn runtime(&self) -> std::io::Result<NsRuntime> {
        let path = format!("/var/run/netns/{}", self.ns);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ns-{}", self.name))
            .spawn(move || {
                let entered = File::open(&path).and_then(|f| {
                    rustix::thread::move_into_link_name_space(
                        f.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(std::io::Error::from)
                });
                // Worker threads are spawned from this thread, so they inherit its namespace.
                let runtime = entered.and_then(|()| {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                });
                match runtime {
                    Ok(rt) => {
                        let _ = ready_tx.send(Ok(rt.handle().clone()));
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                        rt.shutdown_timeout(std::time::Duration::from_secs(2));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        let handle = ready_rx
            .recv()
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(NsRuntime {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A runtime living in one namespace (see [`Host::runtime`]).
#[derive(Debug)]
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Runs `work` there and waits for its output.
    pub async fn run<F>(&self, work: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(work)
            .await
            .expect("task in the namespace")
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! Starting and stopping a broker: binds one `SO_REUSEPORT` listener per shard (a port shared
//! with no other process: see [`crate::listeners`]), builds the ring mesh, spawns the shard
//! threads (pinned to their cores) and hands back a [`Broker`] that knows the bound addresses
//! and can stop them.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Poll, Waker};

use crate::config::Config;
use crate::ids::ShardId;
use crate::mesh;
use crate::shard::{Shard, ShardCounters, ShardSetup};

/// A running broker.
pub struct Broker {
    native_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    resp_addr: Option<SocketAddr>,
    shutdown: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<io::Result<ShardCounters>>>,
}

impl Broker {
    /// Binds, spawns every shard and returns once all listeners are bound (connections made
    /// from then on wait in the backlog until their shard accepts them).
    pub fn start(config: Config) -> io::Result<Broker> {
        let launched = launch(config, true, Vec::new())?;
        Ok(Broker {
            native_addr: launched
                .native_addr
                .ok_or_else(|| io::Error::other("the native port was not bound"))?,
            http_addr: launched.http_addr,
            resp_addr: launched.resp_addr,
            shutdown: launched.shutdown,
            wakers: launched.wakers,
            threads: launched.threads,
        })
    }

    pub fn native_addr(&self) -> SocketAddr {
        self.native_addr
    }

    /// The HTTP port (REST and WebSocket), unless it is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The Redis protocol port, unless it is off.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    /// The line `serve` prints once it is listening; scripts and tests wait for it.
    pub fn ready_line(&self) -> String {
        let mut line = format!("corebus ready native={}", self.native_addr);
        if let Some(http) = self.http_addr {
            line.push_str(&format!(" http={http}"));
        }
        if let Some(resp) = self.resp_addr {
            line.push_str(&format!(" resp={resp}"));
        }
        line
    }

    /// Asks every shard to stop: stop accepting, tell clients, flush, close.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    /// Waits for every shard to stop and sums their counters.
    pub fn join(mut self) -> io::Result<ShardCounters> {
        let mut total = ShardCounters::default();
        for thread in self.threads.drain(..) {
            let counters = thread
                .join()
                .map_err(|_| io::Error::other("a shard thread panicked"))??;
            total.add(&counters);
        }
        Ok(total)
    }

    /// Stops the broker and waits for it.
    pub fn shutdown(self) -> io::Result<ShardCounters> {
        self.begin_shutdown();
        self.join()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.begin_shutdown();
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        }
    }
}

/// The shards of one broker, running, and the ports they listen on: what a network broker and
/// an embedded bus ([`crate::bus::Bus`]) both hold.
pub(crate) struct Launched {
    pub native_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub resp_addr: Option<SocketAddr>,
    pub shutdown: Arc<AtomicBool>,
    pub wakers: Vec<Arc<Waker>>,
    pub threads: Vec<JoinHandle<io::Result<ShardCounters>>>,
}

/// Validates the config, binds the ports (none unless `network`), spawns every shard. Shard
/// `i` gets `doorbells[i]`, where in-process handles ring, if there is one.
pub(crate) fn launch(
    config: Config,
    network: bool,
    doorbells: Vec<crossbeam_channel::Receiver<crate::bus::link::Doorbell>>,
) -> io::Result<Launched> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let config = Arc::new(config);
    let mut listeners: Vec<Option<std::net::TcpListener>> = if network {
        crate::listeners::bind_shared(config.listen, config.shards)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        (0..config.shards).map(|_| None).collect()
    };
    let native_addr = match &listeners[0] {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let (http_listen, resp_listen) = match network {
        true => (config.http_listen, config.resp_listen),
        false => (None, None),
    };
    let mut http_listeners: Vec<Option<std::net::TcpListener>> = match http_listen {
        Some(addr) => crate::listeners::bind_shared(addr, config.shards)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..config.shards).map(|_| None).collect(),
    };
    let http_addr = match &http_listeners[0] {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };
    let mut resp_listeners: Vec<Option<std::net::TcpListener>> = match resp_listen {
        Some(addr) => crate::listeners::bind_shared(addr, config.shards)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..config.shards).map(|_| None).collect(),
    };
    let resp_addr = match &resp_listeners[0] {
        Some(listener) => Some(listener.local_addr()?),
        None => None,
    };

    let mut polls = Vec::with_capacity(config.shards);
    let mut wakers = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let poll = Poll::new()?;
        wakers.push(Arc::new(Waker::new(
            poll.registry(),
            crate::shard::WAKER_TOKEN,
        )?));
        polls.push(poll);
    }
    let links = mesh::build_mesh(
        &wakers,
        mesh::ring::RingSizes {
            slots: config.ring_slots,
            batch_max: config.ring_batch_max,
            bytes_max: config.ring_bytes_max,
        },
    );
    let cores = pick_cores(&config);
    let shutdown = Arc::new(AtomicBool::new(false));
    let pressure = Arc::new(crate::mesh::PressureBoard::default());

    log::info!(
        "event=starting shards={} native={:?} memory_budget=\"{}\"",
        config.shards,
        native_addr,
        config.memory_budget()
    );
    let budget = config.memory_budget();
    if let Some(physical) = crate::config::physical_memory_bytes() {
        if budget.total_bytes() > physical {
            // The limits are honest only if they fit. Limits left at their defaults are
            // fitted to the machine by `serve`, so this is about explicit ones: say what
            // each part costs, so the operator sees which knob matters.
            log::warn!(
                "event=memory_budget_exceeds_ram budget_mib={} ram_mib={} \
                 connections_mib={} frames_in_progress_mib={} replay_mib={} \
                 created_topics_mib={} hint=\"the worst case is connections-max x \
                 (outbound-bytes-max + read-chunk-bytes + a largest frame), plus \
                 topics-max x (replay-bytes + 32 x replay-messages), plus created-topics-max \
                 x (topic-replay-bytes-max + 32 x topic-replay-messages-max); lower the \
                 largest until it fits (see tuning.md)\"",
                budget.total_bytes() >> 20,
                physical >> 20,
                budget.connection_bytes_max >> 20,
                budget.frame_in_flight_bytes_max >> 20,
                budget.replay_bytes_max >> 20,
                budget.created_topics_replay_bytes_max >> 20,
            );
        }
    }
    let mut threads = Vec::with_capacity(config.shards);
    let mut doorbells: Vec<Option<_>> = doorbells.into_iter().map(Some).collect();
    doorbells.resize_with(config.shards, || None);
    for (index, ((poll, links), doorbell)) in
        polls.into_iter().zip(links).zip(doorbells).enumerate()
    {
        let setup = ShardSetup {
            id: ShardId(index as u16),
            config: config.clone(),
            poll,
            listener: listeners[index].take().map(mio::net::TcpListener::from_std),
            http_listener: http_listeners[index]
                .take()
                .map(mio::net::TcpListener::from_std),
            resp_listener: resp_listeners[index]
                .take()
                .map(mio::net::TcpListener::from_std),
            links,
            shutdown: shutdown.clone(),
            pressure: pressure.clone(),
            core: cores.get(index).copied(),
            doorbell,
        };
        let thread = std::thread::Builder::new()
            .name(format!("corebus-shard-{index}"))
            .spawn(move || {
                if let Some(core) = setup.core {
                    if !core_affinity::set_for_current(core) {
                        log::warn!("event=pin_failed shard={index} core={}", core.id);
                    }
                }
                Shard::new(setup).run()
            })?;
        threads.push(thread);
    }
    Ok(Launched {
        native_addr,
        http_addr,
        resp_addr,
        shutdown,
        wakers,
        threads,
    })
}

/// The core each shard is pinned to, or none when pinning is off.
fn pick_cores(config: &Config) -> Vec<core_affinity::CoreId> {
    if !config.pin {
        return Vec::new();
    }
    let available = core_affinity::get_core_ids().unwrap_or_default();
    if available.is_empty() {
        log::warn!("event=pin_unavailable reason=\"cannot list cores\"");
        return Vec::new();
    }
    let wanted: Vec<core_affinity::CoreId> = if config.cores.is_empty() {
        available
    } else {
        config
            .cores
            .iter()
            .map(|&id| core_affinity::CoreId { id })
            .collect()
    };
    (0..config.shards)
        .map(|shard| wanted[shard % wanted.len()])
        .collect()
}

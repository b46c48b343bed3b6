//! The shard's reactor: the only code that calls `poll`.
//!
//! One loop turn:
//! 1. poll (block, or spin for `--busy-poll-us`, or return at once when work is left over);
//! 2. readiness events: accept, read and handle frames, note writability;
//! 3. drain the rings (terminal deliveries always; owner requests as room allows);
//! 4. resume connections that were waiting for room, and those whose read budget ran out;
//! 5. timers (handshake and linger deadlines, consumer redeliveries, replay and topic sweeps);
//! 6. hand staged batches to the rings and wake each peer once;
//! 7. flush every dirty connection once; then shutdown.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Token};

use crate::error::{CloseReason, ErrorCode};
use crate::ids::{ConnectionId, ShardId};
use crate::protocol::native::Frame;

use super::connection::{ConnState, Connection, Transport};
use super::wire::{Protocol, Wire};
use super::{Flow, Shard, ShardCounters, HTTP_LISTENER, LISTENER, RESP_LISTENER, WAKER_TOKEN};

/// Which listener a connection came in on, which decides what it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Native,
    Http,
    Resp,
}

/// Longest sleep in `poll`, so the shutdown flag is seen even if a wake-up is lost.
const POLL_TIMEOUT_MAX: Duration = Duration::from_millis(200);
/// Granularity of redelivery timers, and how often idle consumers are checked for
/// `--consumer-ttl` when no redelivery is due sooner.
const CONSUMER_TIMER_INTERVAL: Duration = Duration::from_millis(100);
const CONSUMER_TIMER_RESOLUTION: Duration = Duration::from_millis(1);
/// How often topics are swept for messages past `--replay-ttl` (busy ones are swept on every
/// publish) and for `--topic-idle-ttl`.
const REPLAY_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What a connection's socket is watched for.
const CONNECTION_INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// Tells a connection about to be refused why, in its port's protocol. Best effort: a fresh
/// socket's send buffer takes a small frame whole.
fn refuse(socket: &mut mio::net::TcpStream, port: Port, reason: &str) {
    let mut refusal = Vec::new();
    match port {
        Port::Native => Frame::Err {
            request_id: 0,
            code: ErrorCode::TooManyConnections.as_u16(),
            message: reason.as_bytes(),
        }
        .encode(&mut refusal),
        Port::Resp => refusal.extend_from_slice(
            format!("-ERR max number of clients reached ({reason})\r\n").as_bytes(),
        ),
        Port::Http => {
            let body = format!("{{\"error\":\"{reason}\"}}");
            refusal.extend_from_slice(
                format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    }
    let _ = io::Write::write(socket, &refusal);
}

/// Readable events per turn, on average over about the last 16 turns, from which the shard
/// counts as busy (see [`WriteCoalescing`]).
const COALESCE_BUSY_EVENTS: u32 = 2;

/// `--write-coalesce-us` and `--write-coalesce-bytes`: when a subscriber's next write waits.
///
/// A shard that turns fast under load writes each subscriber every few messages, and every
/// small write costs the reader a wake-up and a read; Redis, slower per turn, batches more
/// by accident. So while the shard is busy (input from two peers or more a turn, on average),
/// deliveries to a connection taking them fast are held until `bytes` are queued or
/// `wait_max` has passed since its last write. "Fast" means that at the pace they have queued
/// since that write, the wait would gather at least a quarter of `bytes`; a slower stream (an
/// open-loop 100k msg/s of 64-byte payloads, about 10 MB/s, against the default 16 KiB per
/// 200 µs, 20 MB/s) is written every turn as before, and so is the first delivery after a
/// quiet spell. A shard serving one peer at a time (a request, its delivery, the next
/// request) is not busy, so nothing there waits. And a held write never waits for a timer
/// (`epoll` would round it up to a millisecond): while something is held the next poll only
/// looks, and a poll that finds nothing ready writes it, so a client that waits for its
/// delivery before sending more is held for one look at the sockets, not for the wait.
#[derive(Clone, Copy, Debug)]
struct WriteCoalescing {
    wait_max: Duration,
    bytes: usize,
}

impl WriteCoalescing {
    /// Whether a connection with `queued` bytes of deliveries, last written at
    /// `last_written`, waits for more (in a busy turn).
    fn holds(self, queued: usize, last_written: Option<Instant>, now: Instant) -> bool {
        if self.wait_max.is_zero() || queued >= self.bytes {
            return false;
        }
        let Some(last_written) = last_written else {
            return false;
        };
        let since_write = now.saturating_duration_since(last_written);
        if since_write >= self.wait_max {
            return false;
        }
        let gathered_by_due = (queued as u128 * self.wait_max.as_nanos())
            .checked_div(since_write.as_nanos())
            .unwrap_or(u128::MAX);
        gathered_by_due >= self.bytes as u128 / 4
    }
}

impl Shard {
    /// Runs until shutdown; returns the shard's counters.
    pub fn run(mut self) -> io::Result<ShardCounters> {
        // Dropped before `self`, whose rings' messages then go back to the allocator.
        let _spare_blocks = crate::message::SpareBlocks::keep();
        if let Some(listener) = self.listener.as_mut() {
            self.poll
                .registry()
                .register(listener, LISTENER, Interest::READABLE)?;
        }
        if let Some(listener) = self.http_listener.as_mut() {
            self.poll
                .registry()
                .register(listener, HTTP_LISTENER, Interest::READABLE)?;
        }
        if let Some(listener) = self.resp_listener.as_mut() {
            self.poll
                .registry()
                .register(listener, RESP_LISTENER, Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(self.config.events_per_poll_max);
        let busy_poll = Duration::from_micros(self.config.busy_poll_us);
        let mut last_work = Instant::now();
        let mut next_replay_sweep = Instant::now() + REPLAY_SWEEP_INTERVAL;
        self.next_consumer_timer = Instant::now() + CONSUMER_TIMER_INTERVAL;
        let mut work_left = false;
        loop {
            let now = Instant::now();
            // A held write never waits for a timer: the next poll only looks, and one that
            // finds nothing writes what is held (see `WriteCoalescing`).
            let timeout =
                if work_left || self.holding_writes || now.duration_since(last_work) < busy_poll {
                    Some(Duration::ZERO)
                } else {
                    Some(self.next_timeout(now))
                };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            self.turn_now = Instant::now();
            if !events.is_empty() {
                last_work = self.turn_now;
            }
            self.clock_ns = super::commands::unix_time_ns();
            // Input only: a subscriber's socket turning writable is not more work arriving.
            let mut ready = 0usize;
            for event in events.iter() {
                ready += usize::from(event.is_readable());
                match event.token() {
                    LISTENER => self.accept(Port::Native),
                    HTTP_LISTENER => self.accept(Port::Http),
                    RESP_LISTENER => self.accept(Port::Resp),
                    WAKER_TOKEN => {}
                    Token(index) => self.on_connection_event(
                        index,
                        event.is_readable(),
                        event.is_read_closed() || event.is_error(),
                        event.is_writable(),
                    ),
                }
            }
            self.drain_doorbell();
            work_left = self.drain_rings();
            work_left |= self.resume_blocked();
            work_left |= self.read_again_after_budget();
            // Timers before the flushes, so what they send (redeliveries, handshake errors)
            // leaves in this turn rather than after the next poll.
            let now = Instant::now();
            self.expire_deadlines(now);
            self.expire_frame_deadlines(now);
            self.expire_gathers(now);
            if now >= self.next_consumer_timer {
                let next_deadline_ns = self.run_consumer_timers();
                let wait = next_deadline_ns.map_or(CONSUMER_TIMER_INTERVAL, |deadline| {
                    Duration::from_nanos(deadline.saturating_sub(super::commands::unix_time_ns()))
                        .clamp(CONSUMER_TIMER_RESOLUTION, CONSUMER_TIMER_INTERVAL)
                });
                self.next_consumer_timer = now + wait;
            }
            if now >= next_replay_sweep {
                next_replay_sweep = now + REPLAY_SWEEP_INTERVAL;
                let now_ns = super::commands::unix_time_ns();
                if self.config.replay_ttl_ms > 0 {
                    self.owned.evict_expired(now_ns);
                }
                let idle_ns = self.config.topic_idle_ttl_ms.saturating_mul(1_000_000);
                self.owned.reclaim_idle(now_ns, idle_ns);
                // Counted where topics are made; copied here so the publish path does not.
                self.counters.topics_refused_per_connection = self.owned.creations_refused();
                self.counters.topics_reclaimed_under_pressure =
                    self.owned.reclaimed_under_pressure();
            }
            // Before the rings are flushed, so renewals leave this turn: a lease renewed a
            // poll later would have run out.
            self.end_leases(now);
            self.renew_holds();
            self.renew_pressure();
            // Events that find a ring full wait for its consumer's wake-up, not a spin.
            let presence_ring_full = !self.presence.is_empty() && !self.send_presence_events();
            if self.flush_outboxes() && (!self.blocked.is_empty() || self.has_stalled_requests()) {
                work_left = true;
            }
            // Subscribers are held for a larger write only while the shard is busy: input from
            // several peers a turn, on average over the last turns.
            self.ready_average_x16 =
                self.ready_average_x16 - self.ready_average_x16 / 16 + ready.min(1024) as u32;
            self.flush_dirty(ready > 0 && self.ready_average_x16 >= 16 * COALESCE_BUSY_EVENTS);
            self.resume_stalled(Instant::now());
            // Flushing may have resumed connections that paused on unsent replies; closing
            // connections may have noted leaves.
            work_left |= !self.read_again.is_empty();
            work_left |= !presence_ring_full && !self.presence.is_empty();
            if self.shutdown_flag.load(Ordering::Acquire) && self.shutdown_deadline.is_none() {
                self.begin_shutdown();
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.connections.is_empty() || Instant::now() >= deadline {
                    self.counters.topics_refused_per_connection = self.owned.creations_refused();
                    self.counters.topics_reclaimed_under_pressure =
                        self.owned.reclaimed_under_pressure();
                    self.finish_shutdown();
                    return Ok(self.counters.clone());
                }
            }
        }
    }

    /// The most a text protocol's read buffer may hold: one request or message with its
    /// framing (a native frame announces its own size instead).
    pub(super) fn text_bytes_max(&self) -> usize {
        self.config
            .ws_message_bytes_max()
            .max(self.config.http_head_bytes_max + self.config.http_body_bytes_max)
            + crate::protocol::websocket::HEADER_LEN_MAX
    }

    fn next_timeout(&self, now: Instant) -> Duration {
        let mut timeout =
            POLL_TIMEOUT_MAX.min(self.next_consumer_timer.saturating_duration_since(now));
        for deadline in [
            self.stall_deadline.as_ref(),
            self.handshake_deadlines
                .front()
                .map(|(deadline, _)| deadline),
            self.linger_deadlines.front().map(|(deadline, _)| deadline),
            self.frame_deadlines.front().map(|(deadline, _)| deadline),
            self.gather_deadlines.front().map(|(deadline, _)| deadline),
            self.next_lease_end.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            timeout = timeout.min(deadline.saturating_duration_since(now));
        }
        if self.pressure_board_since_ns.is_some() || !self.publisher_holds.is_empty() {
            timeout = timeout.min(self.lease_renewal());
        }
        timeout
    }

    fn has_stalled_requests(&self) -> bool {
        self.stalled_requests.iter().any(Option::is_some)
    }

    fn accept(&mut self, port: Port) {
        /// The addresses `--connections-loopback-reserve` admits: the machine's own
        /// `localhost` (what `corebus inspect` and a local `curl` connect from), not all of
        /// 127/8, so local tools that bind other loopback addresses cannot use it up.
        fn is_operator_address(ip: std::net::IpAddr) -> bool {
            match ip {
                std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
                std::net::IpAddr::V6(v6) => {
                    v6 == std::net::Ipv6Addr::LOCALHOST
                        || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
                }
            }
        }

        loop {
            let listener = match port {
                Port::Native => self.listener.as_ref(),
                Port::Http => self.http_listener.as_ref(),
                Port::Resp => self.resp_listener.as_ref(),
            };
            let Some(listener) = listener else {
                return;
            };
            let (mut socket, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the backlog; log and retry on
                    // the next readiness event rather than spinning.
                    log::warn!(
                        "event=accept_failed shard={} error={:?}",
                        self.id,
                        e.to_string()
                    );
                    return;
                }
            };
            let ip = peer.ip();
            let from_ip = self
                .connections_per_ip
                .get(&ip)
                .copied()
                .unwrap_or_default();
            if from_ip.open as usize >= self.config.connections_per_ip_per_shard_max() {
                self.counters.connections_refused += 1;
                self.counters.connections_refused_per_ip += 1;
                refuse(
                    &mut socket,
                    port,
                    "this address is at --connections-per-ip-max",
                );
                log::warn!(
                    "event=connection_refused shard={} peer={} reason={} limit=connections-per-ip-max",
                    self.id,
                    peer,
                    CloseReason::TooManyConnections
                );
                continue;
            }
            // A full shard: loopback may use the reserve (an operator on the machine); an
            // address still holding half-open connections may finish those first; any other
            // evicts the oldest half-open connection, if there is one.
            let shard_max = self.config.connections_per_shard_max();
            let in_reserve = is_operator_address(ip)
                && self.connections.len()
                    < shard_max + self.config.connections_loopback_reserve_per_shard();
            if self.connections.len() >= shard_max
                && !in_reserve
                && (from_ip.half_open > 0 || !self.evict_oldest_handshaking())
            {
                self.counters.connections_refused += 1;
                refuse(&mut socket, port, "broker is at --connections-max");
                log::warn!(
                    "event=connection_refused shard={} peer={} reason={}",
                    self.id,
                    peer,
                    CloseReason::TooManyConnections
                );
                continue;
            }
            // Small frames must not wait for Nagle; batching is done by the loop instead.
            let _ = socket.set_nodelay(true);
            let entry = self.connections.vacant_entry();
            let index = entry.key();
            let id = ConnectionId {
                index: index as u32,
                generation: self.next_generation,
            };
            self.next_generation = self.next_generation.wrapping_add(1);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut socket, Token(index), CONNECTION_INTEREST)
            {
                log::warn!(
                    "event=register_failed shard={} error={:?}",
                    self.id,
                    e.to_string()
                );
                continue;
            }
            let mut conn = Connection::new(
                socket,
                id,
                peer,
                self.config.read_chunk_bytes,
                self.config.outbound_bytes_max,
            );
            if port == Port::Http {
                conn.wire = Wire::Http(Default::default());
            }
            entry.insert(conn);
            let from_ip = self.connections_per_ip.entry(ip).or_default();
            from_ip.open += 1;
            from_ip.half_open += 1;
            if port == Port::Resp {
                // A Redis connection has no handshake: it is open at once.
                self.open_resp(id);
                self.handshake_done(id);
            }
            self.counters.connections_accepted += 1;
            let deadline = Instant::now() + Duration::from_millis(self.config.handshake_timeout_ms);
            self.handshake_deadlines.push_back((deadline, id));
            let protocol = match port {
                Port::Native => Protocol::Native,
                Port::Http => Protocol::Http,
                Port::Resp => Protocol::Resp,
            };
            log::info!(
                "event=connection_opened shard={} conn={} peer={} protocol={}",
                self.id,
                id,
                peer,
                protocol.as_str()
            );
        }
    }

    /// The reserve that keeps half-open connections from locking the shard out. When the shard
    /// is at its share of `--connections-max`:
    /// - a new connection from an address that still holds half-open connections (accepted,
    ///   handshake not finished: no HELLO yet; on HTTP no first request; a Redis connection is
    ///   open at once) is refused: that address can finish those first;
    /// - any other new connection evicts the oldest half-open connection on the shard, which
    ///   is told (`HANDSHAKE_REQUIRED`) and closed.
    ///
    /// So a flood of idle sockets from one address cannot churn its way in, and a client that
    /// finishes its handshake in a round trip is never the victim for long (it would have to
    /// be the oldest half-open connection when a fresh address arrives); established
    /// connections are never evicted. Returns false if no connection is half-open (the new
    /// one is then refused).
    fn evict_oldest_handshaking(&mut self) -> bool {
        // `handshake_deadlines` is in accept order; entries whose connection finished its
        // handshake or is gone are stale and dropped on the way.
        while let Some(&(_, id)) = self.handshake_deadlines.front() {
            self.handshake_deadlines.pop_front();
            let handshaking = self
                .connection_mut(id)
                .is_some_and(|conn| conn.state == ConnState::Handshaking);
            if handshaking {
                self.counters.handshakes_evicted += 1;
                self.reply_err(
                    id,
                    0,
                    ErrorCode::HandshakeRequired,
                    "evicted: the broker is at --connections-max and this connection had not finished its handshake",
                );
                // Best effort, as for a refusal: the ERR is written now, the slot freed now.
                self.flush_connection(id);
                self.close_now(id, CloseReason::HandshakeFailed);
                return true;
            }
        }
        false
    }

    /// Handles what the connection's read buffer holds, in the protocol it speaks.
    pub(super) fn process_input(&mut self, id: ConnectionId) -> Flow {
        match self.connection_mut(id).map(|conn| &conn.wire) {
            Some(Wire::Native { .. }) => self.process_frames(id),
            Some(Wire::Http(_)) => self.process_http(id),
            Some(Wire::WebSocket(_)) => self.process_websocket(id),
            Some(Wire::Resp(_)) => self.process_resp(id),
            Some(Wire::InProcess) => self.process_commands(id),
            None => Flow::Stop,
        }
    }

    fn on_connection_event(
        &mut self,
        index: usize,
        readable: bool,
        closed_or_failed: bool,
        writable: bool,
    ) {
        let Some(conn) = self.connections.get_mut(index) else {
            self.counters.stale_events += 1;
            return;
        };
        let id = conn.id;
        // A read is what finds the end of the stream or the error.
        let readable = readable || closed_or_failed;
        if writable {
            if let Some(conn) = self.connection_mut(id) {
                conn.write_blocked = false;
            }
            self.mark_dirty(id);
        }
        if readable {
            self.read_connection(id);
        }
    }

    /// Reads and handles frames until the socket is drained, the connection blocks on a full
    /// outbox, or its read budget for this turn is spent.
    fn read_connection(&mut self, id: ConnectionId) {
        let mut budget = self.config.read_bytes_per_turn_max;
        // A text protocol's buffer holds at most one request or message, with its framing.
        let text_bytes_max = self.text_bytes_max();
        let frame_bytes_max = self.config.frame_bytes_max();
        let reply_bytes_max = self.config.outbound_bytes_max;
        let turn_now = self.turn_now;
        let frame_deadline = Duration::from_millis(self.config.frame_deadline_ms);
        let consumed_before = match self.connection_mut(id) {
            Some(conn) if matches!(conn.wire, Wire::InProcess) => {
                if self.process_commands(id) == Flow::Blocked {
                    self.block(id);
                }
                return;
            }
            Some(conn) => conn.read.consumed_total(),
            None => return,
        };
        loop {
            let Some(conn) = self.connection_mut(id) else {
                return;
            };
            if conn.is_closing() {
                return;
            }
            if conn.blocked || conn.read_stalled {
                conn.read_more = true;
                return;
            }
            // A client that does not read its replies stops being read (backpressure).
            if conn.out.unwritten_reply_bytes() > reply_bytes_max {
                conn.read_more = true;
                self.mark_dirty(id);
                return;
            }
            if budget == 0 {
                conn.read_more = true;
                self.read_again.push(id);
                return;
            }
            match conn.read_once((text_bytes_max, frame_bytes_max)) {
                Ok(0) => {
                    // The peer is done sending, maybe not reading: what its requests already
                    // produced goes out first (a client may send `PING` and shut its write
                    // side down, then read `+PONG`), within the close linger.
                    self.begin_close(id, CloseReason::PeerClosed);
                    return;
                }
                Ok(n) => {
                    self.counters.bytes_in += n as u64;
                    budget = budget.saturating_sub(n);
                    self.clock_ns = super::commands::unix_time_ns();
                    match self.process_input_as_reader(id) {
                        Flow::Continue => {}
                        Flow::Blocked => {
                            self.block(id);
                            return;
                        }
                        Flow::Stop => return,
                    }
                    if self.stall_reader {
                        self.stall(id);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.socket_drained(id, consumed_before, turn_now + frame_deadline);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!(
                        "event=read_error shard={} conn={} error={:?}",
                        self.id,
                        id,
                        e.to_string()
                    );
                    self.close_now(id, CloseReason::IoError);
                    return;
                }
            }
        }
    }

    /// The socket is drained: whatever the buffer holds now is input that has not completed,
    /// which `--frame-deadline-ms` times from when it started. Once per readiness event, and
    /// no clock read.
    fn socket_drained(&mut self, id: ConnectionId, consumed_before: u64, deadline: Instant) {
        let turn_now = self.turn_now;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        conn.read_more = false;
        conn.read.shrink_when_idle(conn.wire.is_native());
        if conn.read.is_empty() {
            conn.partial_since = None;
        } else if conn.partial_since.is_none() || conn.read.consumed_total() != consumed_before {
            // New input started (or a frame completed and the next began).
            let arm = conn.partial_since.is_none();
            conn.partial_since = Some(turn_now);
            if arm {
                self.frame_deadlines.push_back((deadline, id));
            }
        }
    }

    /// Handles the frames buffered from connection `id` as its reader: a delivery that pushes a
    /// subscriber past the watermark sets `stall_reader`, for the caller to stall `id`, rather
    /// than telling the topic's owner (see `deliver_to`).
    fn process_input_as_reader(&mut self, id: ConnectionId) -> Flow {
        self.stall_reader = false;
        self.reading = true;
        let flow = self.process_input(id);
        self.reading = false;
        flow
    }

    /// Stops reading a publisher whose messages left a subscriber past the stall watermark:
    /// TCP then holds the publisher back, as nats-server does, instead of the subscriber
    /// being cut for a burst it is reading. The stall lasts while the pressed subscribers
    /// drain, and ends `--publisher-stall-ms-max` after they last made progress; so a
    /// subscriber that does not read still reaches the limit, and is cut then.
    pub(super) fn stall(&mut self, id: ConnectionId) {
        self.stall_reader = false;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        conn.read_more = true;
        conn.read_stalled = true;
        self.stalled_readers.push(id);
        self.counters.publisher_stalls += 1;
        self.start_stall_clock();
    }

    /// Forgets subscribers that drained below half the watermark; extends the stall while
    /// the rest make progress (write anything, or see their socket's send queue shrink: with
    /// several publishers feeding one, its queue may grow while it reads as fast as it can);
    /// reads the stalled publishers again
    /// once no subscriber is pressed or the pressed ones made no progress for
    /// `--publisher-stall-ms-max`, which spends the stall of those pressed that long.
    fn resume_stalled(&mut self, now: Instant) {
        if self.stalled_readers.is_empty() && self.pressured.is_empty() {
            return;
        }
        let low_mark = self.config.outbound_bytes_max / 4;
        let mut pressured = std::mem::take(&mut self.pressured);
        let mut pressing = false;
        let mut progressed = false;
        pressured.retain(|&id| match self.connection_mut(id) {
            Some(conn) if conn.queued_bytes() > low_mark && !conn.is_closing() => {
                if !conn.stall_spent {
                    pressing = true;
                    progressed |= conn.written_total != conn.written_at_stall_look;
                    conn.written_at_stall_look = conn.written_total;
                    let unacknowledged = conn.unacknowledged_bytes();
                    progressed |= matches!(
                        (unacknowledged, conn.unacknowledged_at_stall_look),
                        (Some(now), Some(before)) if now < before
                    );
                    conn.unacknowledged_at_stall_look = unacknowledged;
                }
                true
            }
            Some(conn) => {
                conn.over_watermark = false;
                conn.stall_spent = false;
                conn.pressed_topics.clear();
                false
            }
            None => false,
        });
        if progressed && self.stall_deadline.is_some() {
            let stall_max = Duration::from_millis(self.config.publisher_stall_ms_max);
            self.stall_deadline = Some(now + stall_max);
        }
        let expired = self.stall_deadline.is_some_and(|deadline| now >= deadline);
        if expired {
            // No pressed subscriber wrote for the whole bound: those pressed at least that
            // long hold nobody again (one pressed since gets its own bound, next stall).
            let stall_max = Duration::from_millis(self.config.publisher_stall_ms_max);
            for &id in &pressured {
                if let Some(conn) = self.connection_mut(id) {
                    conn.stall_spent |=
                        now.saturating_duration_since(conn.pressed_since) >= stall_max;
                }
            }
        }
        self.pressured = pressured;
        if pressing && !expired {
            return;
        }
        self.stall_deadline = None;
        for id in std::mem::take(&mut self.stalled_readers) {
            if let Some(conn) = self.connection_mut(id) {
                conn.read_stalled = conn.lease_until.is_some();
                if conn.read_more {
                    self.read_again.push(id);
                }
            }
        }
    }

    /// How long a publisher pauses when a subscriber it feeds is past the watermark on
    /// another shard, or on its own shard through a topic owned elsewhere: a quarter of
    /// `--publisher-stall-ms-max` (25 ms at the default). The shard that stalls does not see
    /// the subscriber, so instead of waiting for it to drain, the publisher is paused for a
    /// lease at a time, renewed every [`Shard::lease_renewal`] while the subscriber's shard
    /// says it is pressed; that shard stops saying so once the subscriber drains or made no
    /// progress for the whole bound (`stall_spent`), so a stuck subscriber is still cut,
    /// at most two leases after the bound. A lease is long against the renewal so that a
    /// shard's late turn (a busy machine) does not let the publisher run between renewals.
    pub(super) fn stall_lease(&self) -> Duration {
        Duration::from_millis(self.config.publisher_stall_ms_max) / 4
    }

    /// How often holds and pressure are renewed: a quarter of a lease.
    pub(super) fn lease_renewal(&self) -> Duration {
        self.stall_lease() / 4
    }

    /// How long a topic stays pressed after its subscriber's shard last said so: a lease.
    pub(super) fn pressure_lease_ns(&self) -> u64 {
        self.stall_lease().as_nanos() as u64
    }

    /// Stops reading `id` for one [`Shard::stall_lease`] from now (a lease already running
    /// is extended).
    pub(super) fn stall_for_lease(&mut self, id: ConnectionId) {
        let until = self.turn_now + self.stall_lease();
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        let running = conn.lease_until.is_some();
        conn.lease_until = Some(until);
        conn.read_stalled = true;
        conn.read_more = true;
        if !running {
            self.leased_stalls.push(id);
            self.counters.publisher_stalls += 1;
        }
        self.next_lease_end = Some(self.next_lease_end.map_or(until, |end| end.min(until)));
    }

    /// Reads again the publishers whose lease is up (unless a stall of this shard's own
    /// holds them too). Leases are few (one per held publisher), so all are looked at.
    fn end_leases(&mut self, now: Instant) {
        if self.next_lease_end.is_none_or(|end| end > now) {
            return;
        }
        self.next_lease_end = None;
        let mut leased = std::mem::take(&mut self.leased_stalls);
        leased.retain(|&id| {
            let held_here = self.stalled_readers.contains(&id);
            let Some(conn) = self.connection_mut(id) else {
                return false;
            };
            match conn.lease_until {
                Some(until) if until > now => {
                    self.next_lease_end =
                        Some(self.next_lease_end.map_or(until, |end| end.min(until)));
                    true
                }
                _ => {
                    conn.lease_until = None;
                    conn.read_stalled = held_here;
                    if !held_here && conn.read_more {
                        self.read_again.push(id);
                    }
                    false
                }
            }
        });
        self.leased_stalls = leased;
    }

    /// A publish from `connection` on `shard` went to `topic`, which is pressed: pauses the
    /// publisher for a lease (this shard's directly, another's through the ring), and keeps
    /// renewing it while the topic stays pressed (see [`Shard::renew_holds`]).
    // Kept out of the publish path it is called from, which runs once per publish.
    #[cold]
    #[inline(never)]
    pub(super) fn hold_publisher(&mut self, topic: &str, shard: ShardId, connection: ConnectionId) {
        let now_ns = self.clock_ns;
        let renewal_ns = self.lease_renewal().as_nanos() as u64;
        let held = self.publisher_holds.iter_mut().find(|hold| {
            (hold.shard, hold.connection) == (shard, connection) && &*hold.topic == topic
        });
        if let Some(hold) = held {
            // Publishing again: its lease ran out before the renewal (a late turn).
            if now_ns.saturating_sub(hold.renewed_ns) >= renewal_ns {
                hold.renewed_ns = now_ns;
                self.send_hold(shard, connection);
            }
            return;
        }
        self.publisher_holds.push(super::PublisherHold {
            topic: topic.into(),
            shard,
            connection,
            renewed_ns: self.clock_ns,
        });
        self.send_hold(shard, connection);
    }

    fn send_hold(&mut self, shard: ShardId, connection: ConnectionId) {
        if shard == self.id {
            self.stall_for_lease(connection);
        } else {
            self.link_mut(shard)
                .terminals_out
                .push(crate::mesh::message::Terminal::StallPublisher { connection });
        }
    }

    /// Renews, every renewal period, the holds on publishers of topics still pressed; forgets
    /// the others, whose leases then run out.
    fn renew_holds(&mut self) {
        if self.publisher_holds.is_empty() {
            return;
        }
        let now_ns = super::commands::unix_time_ns();
        let renewal_ns = self.lease_renewal().as_nanos() as u64;
        let mut holds = std::mem::take(&mut self.publisher_holds);
        holds.retain(|hold| self.owned.is_pressed(&hold.topic, now_ns));
        for hold in &mut holds {
            if now_ns.saturating_sub(hold.renewed_ns) >= renewal_ns {
                hold.renewed_ns = now_ns;
                self.send_hold(hold.shard, hold.connection);
            }
        }
        self.publisher_holds = holds;
    }

    /// Subscriber `id` went past the watermark with a delivery of `topic` that did not come
    /// from a read on this shard: tells the topic's owner, which pauses the topic's publishers
    /// (at most once per renewal period per subscriber and topic; renewed by
    /// [`Shard::renew_pressure`] while that subscriber stays pressed).
    // Kept out of the delivery path it is called from, which runs once per delivery.
    #[cold]
    #[inline(never)]
    pub(super) fn note_pressure(&mut self, id: ConnectionId, topic: &str) {
        let now_ns = self.clock_ns;
        let renewal_ns = self.lease_renewal().as_nanos() as u64;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let newly_pressed = conn.pressed_topics.is_empty();
        match conn.pressed_topics.get_mut(topic) {
            Some(sent_ns) if now_ns.saturating_sub(*sent_ns) < renewal_ns => return,
            Some(sent_ns) => *sent_ns = now_ns,
            None => {
                conn.pressed_topics.insert(topic.into(), now_ns);
            }
        }
        self.start_stall_clock();
        // Each subscriber newly pressed here puts the shard's bit up for a lease: the owners
        // hold every publisher feeding this shard until they know the topics.
        if newly_pressed {
            if !self.pressure_board_set {
                self.pressure_board.set(self.id);
                self.pressure_board_set = true;
            }
            self.pressure_board_since_ns = Some(now_ns);
        }
        self.send_pressure(topic);
    }

    fn send_pressure(&mut self, topic: &str) {
        let owner = self.owner_of(topic);
        if owner == self.id {
            let until_ns = self.clock_ns + self.pressure_lease_ns();
            self.owned.press(topic, until_ns);
            return;
        }
        let link = self.link_mut(owner);
        if link.requests_out.make_room() {
            link.requests_out
                .push(crate::mesh::message::OwnerRequest::Pressure {
                    topic: topic.into(),
                });
        }
    }

    /// Tells the owners again, every renewal period, of the topics that pressed each
    /// subscriber here still past a quarter of its limit and not spent (each topic once);
    /// takes this shard's bit off the pressure board a lease after a subscriber was last
    /// newly pressed, and ends the episode when no subscriber here presses.
    fn renew_pressure(&mut self) {
        let Some(since_ns) = self.pressure_board_since_ns else {
            return;
        };
        let now_ns = super::commands::unix_time_ns();
        if self.pressure_board_set && now_ns.saturating_sub(since_ns) >= self.pressure_lease_ns() {
            self.pressure_board.clear(self.id);
            self.pressure_board_set = false;
        }
        if now_ns < self.next_pressure_renewal_ns {
            return;
        }
        let renewal_ns = self.lease_renewal().as_nanos() as u64;
        self.next_pressure_renewal_ns = now_ns + renewal_ns;
        let low_mark = self.config.outbound_bytes_max / 4;
        let mut due: Vec<Box<str>> = Vec::new();
        let mut pressing = false;
        let pressured = std::mem::take(&mut self.pressured);
        for &id in &pressured {
            let Some(conn) = self.connection_mut(id) else {
                continue;
            };
            if conn.stall_spent || conn.is_closing() || conn.queued_bytes() <= low_mark {
                conn.pressed_topics.clear();
                continue;
            }
            pressing |= !conn.pressed_topics.is_empty();
            for (topic, sent_ns) in conn.pressed_topics.iter_mut() {
                if now_ns.saturating_sub(*sent_ns) >= renewal_ns {
                    *sent_ns = now_ns;
                    due.push(topic.clone());
                }
            }
        }
        self.pressured = pressured;
        if !pressing {
            if self.pressure_board_set {
                self.pressure_board.clear(self.id);
                self.pressure_board_set = false;
            }
            self.pressure_board_since_ns = None;
        }
        due.sort_unstable();
        due.dedup();
        self.clock_ns = now_ns;
        for topic in due {
            self.send_pressure(&topic);
        }
    }

    /// The bound of `--publisher-stall-ms-max` starts with the first stall it covers.
    fn start_stall_clock(&mut self) {
        if self.stall_deadline.is_none() {
            let stall_max = Duration::from_millis(self.config.publisher_stall_ms_max);
            self.stall_deadline = Some(Instant::now() + stall_max);
        }
    }

    pub(super) fn block(&mut self, id: ConnectionId) {
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let own_requests = std::mem::take(&mut conn.paused_for_own_requests);
        if !conn.blocked {
            conn.blocked = true;
            conn.read_more = true;
            self.blocked.push(id);
            self.counters.ring_full_pauses += u64::from(!own_requests);
        }
    }

    /// Gives blocked connections another go: first the frames already buffered, then the
    /// socket. Returns true if one of them made progress and may have more.
    fn resume_blocked(&mut self) -> bool {
        if self.blocked.is_empty() {
            return false;
        }
        let mut progressed = false;
        for id in std::mem::take(&mut self.blocked) {
            let Some(conn) = self.connection_mut(id) else {
                continue;
            };
            conn.blocked = false;
            match self.process_input_as_reader(id) {
                Flow::Blocked => self.block(id),
                Flow::Stop => {}
                Flow::Continue if self.stall_reader => {
                    progressed = true;
                    self.stall(id);
                }
                Flow::Continue => {
                    progressed = true;
                    self.read_connection(id);
                }
            }
        }
        progressed
    }

    fn read_again_after_budget(&mut self) -> bool {
        let ids = std::mem::take(&mut self.read_again);
        for &id in &ids {
            if self.connection_mut(id).is_some_and(|conn| conn.read_more) {
                self.read_connection(id);
            }
        }
        !self.read_again.is_empty()
    }

    /// Writes every connection with something queued, except (with `coalesce`) a subscriber
    /// that [`WriteCoalescing::holds`] holds back for a larger write (noted in
    /// `holding_writes`, which makes the next poll only look).
    fn flush_dirty(&mut self, coalesce: bool) {
        let dirty = std::mem::take(&mut self.dirty);
        let hold = WriteCoalescing {
            wait_max: Duration::from_micros(self.config.write_coalesce_us),
            bytes: self.config.write_coalesce_bytes,
        };
        let now = self.turn_now;
        self.holding_writes = false;
        for &id in &dirty {
            let Some(conn) = self.connection_mut(id) else {
                continue;
            };
            // Replies, and what a closing connection has left, are never held.
            if coalesce
                && conn.out.holds_no_replies()
                && !conn.is_closing()
                && hold.holds(conn.out.queued_bytes(), conn.last_written_at, now)
            {
                self.dirty.push(id);
                self.holding_writes = true;
                continue;
            }
            conn.dirty = false;
            self.flush_connection(id);
        }
        // Reuse the list's allocation for the next turn.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes what the connection has queued, as far as the socket takes it.
    pub(super) fn flush_connection(&mut self, id: ConnectionId) {
        let turn_now = self.turn_now;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        if conn.write_blocked {
            return;
        }
        let paused_for_replies = conn.read_more && !conn.blocked && !conn.is_closing();
        // A Redis connection may be blocked on its own unread answers (a stats request waits
        // until the client reads): a write that moved some is worth another turn at once,
        // not one after the next timer.
        let blocked = conn.blocked;
        let state = conn.state;
        // A peer that shut its write side down still gets the answers its requests are owed
        // (another shard's, a stats gather), within the close linger.
        let answers_owed = matches!(state, ConnState::Closing(CloseReason::PeerClosed))
            && matches!(&conn.wire, Wire::Resp(session) if session.replies_in_line());
        let mut progress = crate::shard::connection::WriteProgress::default();
        loop {
            conn.report_drops();
            let more = match &mut conn.socket {
                Transport::Tcp(socket) => conn.out.write_to(socket, &conn.wire),
                Transport::InProcess(ends) => conn.out.hand_over(ends),
            };
            progress.bytes += more.bytes;
            progress.deliveries += more.deliveries;
            progress.oldest_published_ns =
                progress.oldest_published_ns.or(more.oldest_published_ns);
            progress.drained = more.drained;
            conn.write_blocked = more.would_block;
            if more.failed.is_some() {
                progress.failed = more.failed;
                break;
            }
            // Drops counted while this write went out are reported right away.
            if !(more.drained && conn.drops_unreported) {
                break;
            }
        }
        // What went out before a write failed counts all the same: those deliveries left
        // (staged ones with them), and the close counts what is still queued as undelivered.
        conn.written_total += progress.bytes;
        if progress.bytes > 0 {
            conn.last_written_at = Some(turn_now);
        }
        self.counters.bytes_out += progress.bytes;
        self.counters.delivered += progress.deliveries;
        if let Some(published_ns) = progress.oldest_published_ns {
            // One clock read per write, not per delivery (see `latency`).
            let latency_ns = super::commands::unix_time_ns().saturating_sub(published_ns);
            self.latency.delivery.record_ns(latency_ns);
        }
        if let Some(error) = &progress.failed {
            log::debug!(
                "event=write_error shard={} conn={} error={:?}",
                self.id,
                id,
                error.to_string()
            );
            self.close_now(id, CloseReason::IoError);
        } else if let (ConnState::Closing(reason), true, false) =
            (state, progress.drained, answers_owed)
        {
            self.close_now(id, reason);
        } else if (paused_for_replies || blocked) && progress.bytes > 0 {
            // It stopped reading because its replies piled up; now they moved.
            self.read_again.push(id);
        }
    }

    fn expire_deadlines(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.handshake_deadlines.front() {
            if deadline > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            let handshaking = self
                .connection_mut(id)
                .is_some_and(|conn| conn.state == ConnState::Handshaking);
            if handshaking {
                self.reply_err(
                    id,
                    0,
                    ErrorCode::HandshakeRequired,
                    "no HELLO within --handshake-timeout-ms",
                );
                self.begin_close(id, CloseReason::HandshakeFailed);
            }
        }
        while let Some(&(deadline, id)) = self.linger_deadlines.front() {
            if deadline > now {
                break;
            }
            self.linger_deadlines.pop_front();
            if let Some(conn) = self.connection_mut(id) {
                if let ConnState::Closing(reason) = conn.state {
                    self.close_now(id, reason);
                }
            }
        }
    }

    /// Closes connections whose incomplete input is older than `--frame-deadline-ms`, telling
    /// them first (native `ERR FRAME_TIMEOUT`, HTTP `408`, WebSocket error, Redis `-ERR`),
    /// and releases their read buffers at once. A connection that made progress since its
    /// entry was pushed is pushed again at its new deadline; that entry may sit behind later
    /// ones, so it is seen at most one deadline late.
    fn expire_frame_deadlines(&mut self, now: Instant) {
        let deadline_ms = Duration::from_millis(self.config.frame_deadline_ms);
        while let Some(&(deadline, id)) = self.frame_deadlines.front() {
            if deadline > now {
                break;
            }
            self.frame_deadlines.pop_front();
            let Some(conn) = self.connection_mut(id) else {
                continue;
            };
            let Some(since) = conn.partial_since else {
                continue;
            };
            if conn.is_closing() {
                conn.partial_since = None;
                continue;
            }
            // Waiting on the broker (its outbox is full, or its replies are unread, or its
            // read budget ran out): what it holds may be whole frames. Look again later.
            if conn.blocked || conn.read_more || since + deadline_ms > now {
                let next = if since + deadline_ms > now {
                    since + deadline_ms
                } else {
                    now + deadline_ms
                };
                self.frame_deadlines.push_back((next, id));
                continue;
            }
            conn.partial_since = None;
            let held = conn.read.capacity();
            conn.read.release();
            self.counters.frame_deadline_closes += 1;
            self.counters.protocol_errors += 1;
            log::info!(
                "event=frame_deadline shard={} conn={} held_bytes={}",
                self.id,
                id,
                held
            );
            self.reply_err(
                id,
                0,
                ErrorCode::FrameTimeout,
                "input that had started did not complete within --frame-deadline-ms",
            );
            self.begin_close(id, CloseReason::FrameTimeout);
        }
    }

    /// Phase one of a broker-initiated close: stop reading, let the final frames (an ERR
    /// already queued) flush until they are written or the linger deadline passes.
    pub(super) fn begin_close(&mut self, id: ConnectionId, reason: CloseReason) {
        let linger = match reason {
            CloseReason::Shutdown => self.config.shutdown_grace_ms,
            _ => self.config.close_linger_ms,
        };
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        conn.state = ConnState::Closing(reason);
        self.linger_deadlines
            .push_back((Instant::now() + Duration::from_millis(linger), id));
        // Withdraw at once so no more deliveries queue behind the final frames.
        self.withdraw_all(id);
        self.mark_dirty(id);
    }

    /// Phase two: withdraw its subscriptions and free the slot.
    pub(super) fn close_now(&mut self, id: ConnectionId, reason: CloseReason) {
        self.withdraw_all(id);
        if self.connection_mut(id).is_none() {
            return;
        }
        let mut conn = self.connections.remove(id.index as usize);
        match &mut conn.socket {
            Transport::Tcp(socket) => {
                let _ = self.poll.registry().deregister(socket);
            }
            Transport::InProcess(ends) => {
                self.in_process.remove(&ends.state.key);
            }
        }
        if let std::collections::hash_map::Entry::Occupied(mut from_ip) =
            self.connections_per_ip.entry(conn.peer.ip())
        {
            let count = from_ip.get_mut();
            count.open -= 1;
            count.half_open -= u32::from(conn.half_open);
            if count.open == 0 {
                from_ip.remove();
            }
        }
        // A Redis connection's messages still lined up behind a reply go with it, and count.
        if let Wire::Resp(session) = &mut conn.wire {
            // Any sent since the last hand-over went out with replies still in the session's
            // output, which goes with the connection too.
            let (sent, abandoned) = session.take_line_counts();
            conn.out
                .count_abandoned_in_line(sent + abandoned + session.messages_in_line());
        }
        // Those in the write buffer were delivered as far as the broker can tell, as a staged
        // delivery is.
        self.counters.delivered += conn.out.take_staged_uncounted();
        self.counters.undelivered +=
            conn.out.discard_pending() + conn.out.discard_staged_now_unwritten();
        self.counters.closed[reason.index()] += 1;
        // Everything this connection lost on its way out, a slow-consumer cut's discard
        // included, so the log and the shard's counter tell the same figure.
        log::info!(
            "event=connection_closed shard={} conn={} peer={} protocol={} reason={} undelivered={}",
            self.id,
            id,
            conn.peer,
            conn.wire.protocol().as_str(),
            reason,
            conn.out.discarded()
        );
    }

    fn withdraw_all(&mut self, id: ConnectionId) {
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let subscriptions = std::mem::take(&mut conn.subscriptions);
        for (sub_id, record) in subscriptions {
            self.withdraw_subscription(
                crate::ids::Subscriber {
                    connection: id,
                    sub_id,
                },
                &record,
            );
        }
    }

    /// In the shutdown grace period: from the shutdown flag until the shard stops.
    pub(super) fn is_draining(&self) -> bool {
        self.shutdown_deadline.is_some()
    }

    /// Starts the grace period. Native clients get `SHUTTING_DOWN` and WebSocket sessions
    /// their queued events then close 1001, each closing once that is written. The HTTP
    /// listener stays open and REST connections stay up, because HTTP has no unsolicited
    /// answer: every request that arrives until the shard stops, on a keep-alive connection
    /// or a new one, gets `503` and `Connection: close` (`refuse_while_draining`) instead of
    /// a reset. An idle REST connection holds the shard at most until the grace deadline.
    fn begin_shutdown(&mut self) {
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        self.shutdown_deadline = Some(Instant::now() + grace);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        // Redis clients reconnect elsewhere; as on the native port, nothing new is taken.
        if let Some(mut listener) = self.resp_listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let ids: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, conn)| !matches!(conn.wire, Wire::Http(_)))
            .map(|(_, conn)| conn.id)
            .collect();
        for id in ids {
            self.reply_err(id, 0, ErrorCode::ShuttingDown, "broker is shutting down");
            self.begin_close(id, CloseReason::Shutdown);
        }
        self.flush_dirty(false);
        log::info!("event=shutdown_started shard={}", self.id);
    }

    fn finish_shutdown(&mut self) {
        let ids: Vec<ConnectionId> = self.connections.iter().map(|(_, conn)| conn.id).collect();
        for id in ids {
            self.close_now(id, CloseReason::Shutdown);
        }
        log::info!(
            "event=shard_stopped shard={} {}",
            self.id,
            crate::logging::key_values(&self.counters.fields())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: WriteCoalescing = WriteCoalescing {
        wait_max: Duration::from_micros(200),
        bytes: 16 * 1024,
    };

    #[test]
    fn a_fast_stream_is_held_until_its_wait_is_up() {
        let written = Instant::now();
        let now = written + Duration::from_micros(50);
        // 2 KB in 50 µs gathers 8 KB by the due time: held.
        assert!(HOLD.holds(2_000, Some(written), now));
        // Written in this very turn: held.
        assert!(HOLD.holds(100, Some(written), written));
    }

    #[test]
    fn a_slow_stream_a_first_write_and_a_full_batch_go_now() {
        let written = Instant::now();
        // 100 bytes in 50 µs gathers 400 bytes by the due time: not worth the wait.
        let now = written + Duration::from_micros(50);
        assert!(!HOLD.holds(100, Some(written), now));
        assert!(!HOLD.holds(2_000, None, now));
        assert!(!HOLD.holds(16 * 1024, Some(written), now));
        // The wait is up.
        let later = written + Duration::from_micros(200);
        assert!(!HOLD.holds(10_000, Some(written), later));
        let off = WriteCoalescing {
            wait_max: Duration::ZERO,
            ..HOLD
        };
        assert!(!off.holds(2_000, Some(written), now));
    }
}

//! `corebus bench reflector`: a stand-in broker that does as little as a broker can, to
//! measure the load generator itself.
//!
//! The issue this answers: a benchmark is only worth its numbers if the bench is not the
//! bottleneck. The reflector speaks just enough of the native protocol for `corebus bench`
//! (HELLO, SUBSCRIBE to exact topics, quiet and confirmed PUBLISH, PING, ACK ignored) and
//! forwards each publish to the subscribers of its topic with one copy per subscriber: no
//! shards, no rings, no replay, no limits but a pause on reading while a subscriber's queue is
//! long. Whatever rate a bench run reaches against it is a floor for what one bench core can
//! generate and consume; with `--subscribers 0` it discards everything, which measures the
//! publishing side alone.
//!
//! One thread, one `mio` loop, edge-triggered like the broker: reads and writes are drained
//! until `WouldBlock`.

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::protocol::native::{self, DecodeError, Frame};

/// Largest frame the reflector reads; it answers HELLO with the matching payload limit.
const FRAME_BYTES_MAX: usize = 1 << 20;
/// A subscriber queue this long stops every read until it drains, so publishers feel TCP
/// backpressure instead of the reflector buffering without bound.
const QUEUE_PAUSE_BYTES: usize = 8 << 20;
const READ_CHUNK_BYTES: usize = 256 * 1024;
const LISTENER: Token = Token(usize::MAX);

#[derive(Debug, Args)]
pub struct ReflectorArgs {
    /// Address to listen on; port 0 picks a free one (printed on start-up).
    #[arg(long, default_value = "127.0.0.1:7171")]
    pub listen: SocketAddr,
    /// CPU to pin the reflector's thread to.
    #[arg(long)]
    pub core: Option<usize>,
    /// Stop after this many seconds (0 = run until SIGINT or SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
}

struct Connection {
    stream: TcpStream,
    read_buf: Vec<u8>,
    write_buf: Vec<u8>,
    /// Bytes of `write_buf` already written.
    written: usize,
    /// Readable data may be left in the socket (a pause or a read budget stopped the drain).
    read_pending: bool,
}

impl Connection {
    fn queued(&self) -> usize {
        self.write_buf.len() - self.written
    }
}

/// The topics' subscribers and sequence counters.
#[derive(Default)]
struct Topics {
    by_name: HashMap<Box<[u8]>, Topic>,
}

#[derive(Default)]
struct Topic {
    last_seq: u64,
    /// (connection key, subscription id)
    subscribers: Vec<(usize, u32)>,
}

/// Runs the reflector until a signal or `--duration`.
pub fn run(args: &ReflectorArgs) -> Result<(), Box<dyn Error>> {
    if let Some(core) = args.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(format!("cannot pin the reflector to CPU {core}").into());
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut listener = TcpListener::bind(args.listen)?;
    println!("reflector listening on {}", listener.local_addr()?);
    let deadline = (args.duration > 0).then(|| Instant::now() + Duration::from_secs(args.duration));
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut connections: Slab<Connection> = Slab::new();
    let mut topics = Topics::default();
    let mut scratch = Vec::new();
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        let reads_waiting = connections.iter().any(|(_, c)| c.read_pending);
        let paused = connections
            .iter()
            .any(|(_, c)| c.queued() > QUEUE_PAUSE_BYTES);
        let timeout = if reads_waiting && !paused {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            // A signal: the loop condition decides.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut connections)?;
                continue;
            }
            let key = event.token().0;
            let Some(conn) = connections.get_mut(key) else {
                continue;
            };
            if event.is_readable() || event.is_read_closed() {
                conn.read_pending = true;
            }
        }
        let paused = connections
            .iter()
            .any(|(_, c)| c.queued() > QUEUE_PAUSE_BYTES);
        if !paused {
            let readers: Vec<usize> = connections
                .iter()
                .filter(|(_, c)| c.read_pending)
                .map(|(key, _)| key)
                .collect();
            for key in readers {
                if !read_and_reflect(key, &mut connections, &mut topics, &mut scratch) {
                    close(key, &mut connections, &mut topics);
                }
            }
        }
        let writers: Vec<usize> = connections
            .iter()
            .filter(|(_, c)| c.queued() > 0)
            .map(|(key, _)| key)
            .collect();
        for key in writers {
            if !flush(&mut connections[key]) {
                close(key, &mut connections, &mut topics);
            }
        }
    }
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    connections: &mut Slab<Connection>,
) -> io::Result<()> {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nodelay(true)?;
                let entry = connections.vacant_entry();
                poll.registry().register(
                    &mut stream,
                    Token(entry.key()),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                entry.insert(Connection {
                    stream,
                    read_buf: Vec::with_capacity(READ_CHUNK_BYTES),
                    write_buf: Vec::new(),
                    written: 0,
                    read_pending: true,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // Out of descriptors, say: serve who is here; the next event retries.
            Err(e) => {
                eprintln!("reflector: accept failed: {e}");
                return Ok(());
            }
        }
    }
}

/// Reads what one connection sent (up to a budget, so one publisher cannot starve the rest)
/// and acts on every complete frame. Returns false when the connection is done.
fn read_and_reflect(
    key: usize,
    connections: &mut Slab<Connection>,
    topics: &mut Topics,
    scratch: &mut Vec<u8>,
) -> bool {
    let conn = &mut connections[key];
    let mut chunk = [0u8; 64 * 1024];
    let mut budget = READ_CHUNK_BYTES;
    while budget > 0 {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                conn.read_buf.extend_from_slice(&chunk[..n]);
                budget = budget.saturating_sub(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.read_pending = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let input = std::mem::take(&mut connections[key].read_buf);
    let mut offset = 0;
    let alive = loop {
        match native::decode(&input[offset..], FRAME_BYTES_MAX) {
            Ok(Some((frame, len))) => {
                reflect(key, frame, connections, topics, scratch);
                offset += len;
            }
            Ok(None) => break true,
            Err(DecodeError::Invalid {
                request_id,
                frame_len,
                code,
                reason,
            }) => {
                let frame = Frame::Err {
                    request_id,
                    code: code.as_u16(),
                    message: reason.as_bytes(),
                };
                frame.encode(&mut connections[key].write_buf);
                offset += frame_len;
            }
            Err(DecodeError::Fatal { .. }) => break false,
        }
    };
    let mut input = input;
    input.drain(..offset);
    connections[key].read_buf = input;
    alive
}

fn reflect(
    from: usize,
    frame: Frame<'_>,
    connections: &mut Slab<Connection>,
    topics: &mut Topics,
    scratch: &mut Vec<u8>,
) {
    let reply = |connections: &mut Slab<Connection>, frame: Frame<'_>| {
        frame.encode(&mut connections[from].write_buf);
    };
    let refuse = |connections: &mut Slab<Connection>, request_id, message: &[u8]| {
        let code = crate::error::ErrorCode::UnsupportedOption.as_u16();
        reply(
            connections,
            Frame::Err {
                request_id,
                code,
                message,
            },
        );
    };
    match frame {
        Frame::Hello { request_id, .. } => {
            let mut data = [0u8; 8];
            data[..2].copy_from_slice(&native::PROTOCOL_VERSION.to_be_bytes());
            let payload_max = FRAME_BYTES_MAX - native::FRAME_OVERHEAD_MAX;
            data[4..].copy_from_slice(&(payload_max as u32).to_be_bytes());
            reply(
                connections,
                Frame::Ok {
                    request_id,
                    data: &data,
                },
            );
        }
        Frame::Subscribe {
            request_id,
            options: [_, ..],
            ..
        } => {
            refuse(
                connections,
                request_id,
                b"the reflector takes plain subscriptions only",
            );
        }
        Frame::Subscribe {
            request_id,
            sub_id,
            topic,
            ..
        } => {
            let entry = topics.by_name.entry(topic.into()).or_default();
            entry.subscribers.push((from, sub_id));
            let mut data = [0u8; 16];
            data[8..].copy_from_slice(&entry.last_seq.to_be_bytes());
            reply(
                connections,
                Frame::Ok {
                    request_id,
                    data: &data,
                },
            );
        }
        Frame::Publish {
            request_id,
            quiet,
            topic,
            reply_to,
            headers,
            payload,
        } => {
            let entry = topics.by_name.entry(topic.into()).or_default();
            entry.last_seq += 1;
            if !entry.subscribers.is_empty() {
                scratch.clear();
                native::encode_msg_from_publish(scratch, 0, (topic, reply_to), headers, payload);
                native::msg_set_seq(scratch, entry.last_seq);
                for &(key, sub_id) in &entry.subscribers {
                    if let Some(conn) = connections.get_mut(key) {
                        let start = conn.write_buf.len();
                        conn.write_buf.extend_from_slice(scratch);
                        native::msg_set_sub_id(&mut conn.write_buf[start..], sub_id);
                    }
                }
            }
            if !quiet {
                let seq = entry.last_seq.to_be_bytes();
                reply(
                    connections,
                    Frame::Ok {
                        request_id,
                        data: &seq,
                    },
                );
            }
        }
        Frame::Ping { request_id } => reply(connections, Frame::Pong { request_id }),
        Frame::Unsubscribe { request_id, .. } => reply(
            connections,
            Frame::Ok {
                request_id,
                data: &[],
            },
        ),
        Frame::CreateTopic { request_id, .. } | Frame::DeleteTopic { request_id, .. } => {
            refuse(
                connections,
                request_id,
                b"the reflector keeps no topics to create or delete",
            );
        }
        // Acks and server-to-client frames need nothing here.
        _ => {}
    }
}

/// Writes what is queued until the socket is full. Returns false when the connection broke.
fn flush(conn: &mut Connection) -> bool {
    while conn.written < conn.write_buf.len() {
        match conn.stream.write(&conn.write_buf[conn.written..]) {
            Ok(0) => return false,
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    conn.write_buf.clear();
    conn.written = 0;
    true
}

fn close(key: usize, connections: &mut Slab<Connection>, topics: &mut Topics) {
    if connections.try_remove(key).is_some() {
        for topic in topics.by_name.values_mut() {
            topic.subscribers.retain(|&(k, _)| k != key);
        }
    }
}

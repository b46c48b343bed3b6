//! Shared test support: start a real broker on 127.0.0.1:0 and talk to it over sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use corebus::client::{Client, ClientOptions};
use corebus::config::Config;
use corebus::protocol::native::{self, Frame, PROTOCOL_VERSION};
use corebus::server::Broker;

/// A broker on an ephemeral loopback port, unpinned (tests run side by side).
pub fn config(shards: usize) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        resp_listen: Some("127.0.0.1:0".parse().unwrap()),
        shards,
        pin: false,
        ..Config::default()
    }
}

pub fn start(config: Config) -> Broker {
    Broker::start(config).expect("broker starts")
}

pub fn client(addr: SocketAddr) -> Client {
    Client::connect(addr).expect("client connects")
}

/// A client whose connection was accepted by `shard` (the kernel spreads connections over
/// the shards' listeners, so connect until one lands there).
pub fn client_on_shard(addr: SocketAddr, shard: u16) -> Client {
    for _ in 0..500 {
        let client = Client::connect_with(
            addr,
            ClientOptions {
                name: format!("test-shard-{shard}"),
                ..ClientOptions::default()
            },
        )
        .expect("client connects");
        if client.server_info().shard == shard {
            return client;
        }
    }
    panic!("no connection landed on shard {shard}");
}

/// A topic name, unique per `tag`, owned by `shard` out of `shards`.
pub fn topic_owned_by(tag: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|i| format!("{tag}.t{i}"))
        .find(|name| corebus::protocol::topic::owner_shard(name, shards) == shard)
        .unwrap()
}

/// A raw socket speaking frames by hand, for byte-level exchanges.
pub struct RawConnection {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawConnection {
    pub fn connect(addr: SocketAddr) -> RawConnection {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawConnection {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Wraps a stream connected by other means (from another source address, say).
    pub fn from_stream(stream: TcpStream) -> RawConnection {
        RawConnection {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Connects and completes HELLO.
    pub fn handshaken(addr: SocketAddr) -> RawConnection {
        RawConnection::handshaken_at(addr, PROTOCOL_VERSION)
    }

    /// Connects and completes HELLO at an older protocol `version`.
    pub fn handshaken_at(addr: SocketAddr, version: u16) -> RawConnection {
        let mut raw = RawConnection::connect(addr);
        raw.send(Frame::Hello {
            request_id: 1,
            version,
            client_name: b"raw",
        });
        raw.expect_ok(1);
        raw
    }

    pub fn send(&mut self, frame: Frame<'_>) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        self.send_bytes(&bytes);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, as owned bytes (decode again to inspect), or None on EOF.
    pub fn next_frame_bytes(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some((_, len)) = native::decode(&self.buffer, 1 << 30).expect("valid frame") {
                return Some(self.buffer.drain(..len).collect());
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    pub fn expect_ok(&mut self, request_id: u32) -> Vec<u8> {
        let bytes = self.next_frame_bytes().expect("a reply, not EOF");
        match native::decode(&bytes, 1 << 30).unwrap().unwrap().0 {
            Frame::Ok {
                request_id: id,
                data,
            } if id == request_id => data.to_vec(),
            other => panic!("expected OK for {request_id}, got {other:?}"),
        }
    }

    /// Expects an ERR frame and returns (request_id, code).
    pub fn expect_err(&mut self) -> (u32, u16) {
        let bytes = self.next_frame_bytes().expect("an ERR, not EOF");
        match native::decode(&bytes, 1 << 30).unwrap().unwrap().0 {
            Frame::Err {
                request_id, code, ..
            } => (request_id, code),
            other => panic!("expected ERR, got {other:?}"),
        }
    }

    /// Expects an ERR frame and returns (request_id, code, message).
    pub fn expect_err_message(&mut self) -> (u32, u16, String) {
        let bytes = self.next_frame_bytes().expect("an ERR, not EOF");
        match native::decode(&bytes, 1 << 30).unwrap().unwrap().0 {
            Frame::Err {
                request_id,
                code,
                message,
            } => (
                request_id,
                code,
                String::from_utf8_lossy(message).into_owned(),
            ),
            other => panic!("expected ERR, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection (within the read timeout).
    pub fn expect_closed(&mut self) {
        while self.next_frame_bytes().is_some() {}
    }
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

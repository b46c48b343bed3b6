//! Binding one listener per shard on one port, shared within this broker only.
//!
//! The shards of a broker share their port through `SO_REUSEPORT`, so the kernel spreads
//! connections over them. Linux lets any socket of the same effective user join such a group,
//! so a second broker started on the same port by the same user would join it silently and
//! take half of the clients: exactly what message loss looks like. Redis and NATS fail with
//! "address already in use" there, and so does corebus, for every listener, in two steps:
//!
//! 1. **Probe.** Before the group exists, bind (not listen) one plain socket without
//!    `SO_REUSEPORT` to the address. The kernel refuses that bind while anyone listens on the
//!    port, whether with `SO_REUSEPORT` or not, and allows it past `TIME_WAIT` remnants of an
//!    earlier run (`SO_REUSEADDR`), so a restart is not refused. The probe is closed at once;
//!    it only asks. This catches every broker that was already running, before anything of
//!    ours joins its group, so its clients never see us.
//! 2. **Check.** Between the probe and our own binds another process could start the same
//!    way (two brokers started at the same instant). Once our listeners are bound, every
//!    listening socket on the port is read from `/proc/net/tcp` and `/proc/net/tcp6` and
//!    compared by inode with ours: any other listener on an overlapping address is an error.
//!    In that race both brokers may refuse to start, which is the safe outcome.
//!
//! Where `/proc/net` does not exist, step 2 is skipped and step 1 alone applies.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues per listener before the shard accepts them.
pub const LISTEN_BACKLOG: i32 = 1024;

/// `count` listeners on `addr`, sharing one port with each other and with nobody else. With
/// port 0 the first bind picks a free port and the others join it. Fails with
/// [`io::ErrorKind::AddrInUse`] ("address already in use: ...") if anything else listens there.
pub fn bind_shared(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        probe(addr)?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into()).map_err(|e| in_use(e, addr))?;
        socket.listen(LISTEN_BACKLOG).map_err(|e| in_use(e, addr))?;
        let listener: TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    if others_listening(&listeners, addr) {
        return Err(addr_in_use(addr));
    }
    Ok(listeners)
}

/// Step 2: whether a socket other than `ours` listens on an address overlapping `addr`
/// (false when that cannot be known).
fn others_listening(ours: &[TcpListener], addr: SocketAddr) -> bool {
    let inodes: HashSet<u64> = ours.iter().filter_map(socket_inode).collect();
    if inodes.len() != ours.len() {
        return false;
    }
    listening_sockets().is_some_and(|all| {
        all.iter()
            .any(|other| !inodes.contains(&other.inode) && overlaps(other.addr, addr))
    })
}

/// Step 1: a bind without `SO_REUSEPORT` fails while anyone listens on the port.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into()).map_err(|e| in_use(e, addr))
}

fn in_use(error: io::Error, addr: SocketAddr) -> io::Error {
    if error.kind() == io::ErrorKind::AddrInUse {
        addr_in_use(addr)
    } else {
        io::Error::new(error.kind(), format!("cannot listen on {addr}: {error}"))
    }
}

fn addr_in_use(addr: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "address already in use: {addr} (another process, perhaps another corebus, is \
             listening there; stop it or pick another port)"
        ),
    )
}

/// The inode of a socket, from `/proc/self/fd/N` (`socket:[INODE]`), as `/proc/net/tcp`
/// names it.
fn socket_inode(listener: &TcpListener) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).ok()?;
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// A listening TCP socket of any process in this network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Listening {
    addr: SocketAddr,
    inode: u64,
}

/// Every listening socket in `/proc/net/tcp` and `/proc/net/tcp6`; `None` if neither exists.
fn listening_sockets() -> Option<Vec<Listening>> {
    let v4 = std::fs::read_to_string("/proc/net/tcp").ok();
    let v6 = std::fs::read_to_string("/proc/net/tcp6").ok();
    if v4.is_none() && v6.is_none() {
        return None;
    }
    let text = v4.unwrap_or_default() + &v6.unwrap_or_default();
    Some(text.lines().filter_map(parse_listening).collect())
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st ... uid timeout inode`; state `0A` is
/// LISTEN. Addresses are hex: the IP as 32-bit words in host byte order, the port as a number.
fn parse_listening(line: &str) -> Option<Listening> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&"0A") {
        return None;
    }
    let (ip_hex, port_hex) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for word in 0..ip_hex.len() / 8 {
        let value = u32::from_str_radix(ip_hex.get(word * 8..word * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&value.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    let inode = fields.get(9)?.parse().ok()?;
    Some(Listening {
        addr: SocketAddr::new(ip, port),
        inode,
    })
}

/// Whether a listener on `other` takes connections meant for `ours`: same port, and the same
/// address or a wildcard on either side (v4-mapped v6 addresses count as v4).
fn overlaps(other: SocketAddr, ours: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (canonical(other.ip()), canonical(ours.ip()));
    other.port() == ours.port() && (a == b || a.is_unspecified() || b.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines_parse() {
        let v4 = "   0: 0100007F:1B9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  \
                  1000        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_listening(v4),
            Some(Listening {
                addr: "127.0.0.1:7070".parse().unwrap(),
                inode: 123456
            })
        );
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_listening(&established), None);
        let v6 =
            "   0: 00000000000000000000000001000000:1B9E 00000000000000000000000000000000:0000 \
                  0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0 100 0 0 10 0";
        assert_eq!(
            parse_listening(v6),
            Some(Listening {
                addr: "[::1]:7070".parse().unwrap(),
                inode: 777
            })
        );
        assert_eq!(
            parse_listening("  sl  local_address rem_address   st"),
            None
        );
    }

    #[test]
    fn overlapping_addresses() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(addr("127.0.0.1:7070"), addr("127.0.0.1:7070")));
        assert!(overlaps(addr("0.0.0.0:7070"), addr("127.0.0.1:7070")));
        assert!(overlaps(addr("127.0.0.1:7070"), addr("0.0.0.0:7070")));
        assert!(overlaps(addr("[::]:7070"), addr("127.0.0.1:7070")));
        assert!(overlaps(
            addr("[::ffff:127.0.0.1]:7070"),
            addr("127.0.0.1:7070")
        ));
        assert!(!overlaps(addr("127.0.0.1:7071"), addr("127.0.0.1:7070")));
        assert!(!overlaps(addr("10.0.0.1:7070"), addr("127.0.0.1:7070")));
    }

    /// Our own listeners are found in /proc/net/tcp under their inodes.
    #[test]
    fn our_listeners_are_listed_by_inode() {
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        assert_eq!(listeners[1].local_addr().unwrap().port(), port);
        let inodes: HashSet<u64> = listeners.iter().filter_map(socket_inode).collect();
        assert_eq!(inodes.len(), 2);
        let listed: HashSet<u64> = listening_sockets()
            .expect("/proc/net/tcp on Linux")
            .into_iter()
            .filter(|l| l.addr.port() == port)
            .map(|l| l.inode)
            .collect();
        assert_eq!(listed, inodes);
    }

    /// Step 2 alone: a listener that joined the group behind the probe's back (a concurrent
    /// start) is found, and the bind fails.
    #[test]
    fn a_foreign_member_of_the_reuseport_group_is_refused() {
        let foreign = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        foreign.set_reuse_address(true).unwrap();
        foreign.set_reuse_port(true).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        foreign.bind(&any.into()).unwrap();
        foreign.listen(16).unwrap();
        let addr = foreign.local_addr().unwrap().as_socket().unwrap();
        // The probe catches it first...
        assert_eq!(probe(addr).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        // ...and the check on its own too, once we have joined the group regardless.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(16).unwrap();
        let ours = [TcpListener::from(socket)];
        assert!(others_listening(&ours, addr));
        drop(foreign);
        assert!(!others_listening(&ours, addr));
    }

    #[test]
    fn a_second_group_on_a_used_port_is_refused() {
        let first = bind_shared("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        let error = bind_shared(addr, 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(
            error.to_string().contains("address already in use"),
            "{error}"
        );
        drop(first);
        // Once the first group is gone the port is free again.
        bind_shared(addr, 2).unwrap();
    }
}

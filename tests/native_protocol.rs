//! Byte-level exchanges over a real socket: the handshake, each command's reply, and what the
//! broker does with bad input (a clear ERR, a clean close where it cannot resync, and the
//! other clients keep being served).

mod common;

use common::*;
use corebus::error::ErrorCode;
use corebus::protocol::native::{self, Frame, PROTOCOL_VERSION};

#[test]
fn handshake_reports_version_shard_and_limit() {
    let broker = start(config(1));
    let mut raw = RawConnection::connect(broker.native_addr());
    raw.send(Frame::Hello {
        request_id: 7,
        version: PROTOCOL_VERSION,
        client_name: b"byte-test",
    });
    let data = raw.expect_ok(7);
    assert_eq!(data.len(), 8);
    assert_eq!(u16::from_be_bytes([data[0], data[1]]), PROTOCOL_VERSION);
    assert_eq!(u16::from_be_bytes([data[2], data[3]]), 0);
    assert_eq!(
        u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        1024 * 1024
    );
}

#[test]
fn publish_with_confirm_returns_the_sequence_and_ping_pongs() {
    let broker = start(config(1));
    let mut raw = RawConnection::handshaken(broker.native_addr());
    for expected_seq in 1..=3u64 {
        raw.send(Frame::Publish {
            request_id: 10 + expected_seq as u32,
            quiet: false,
            topic: b"a.b",
            reply_to: None,
            payload: b"x",
        });
        let data = raw.expect_ok(10 + expected_seq as u32);
        assert_eq!(data, expected_seq.to_be_bytes());
    }
    raw.send(Frame::Ping { request_id: 99 });
    let bytes = raw.next_frame_bytes().unwrap();
    assert_eq!(
        native::decode(&bytes, 1 << 20).unwrap().unwrap().0,
        Frame::Pong { request_id: 99 }
    );
}

#[test]
fn a_subscriber_gets_msg_frames_with_its_subscription_id() {
    let broker = start(config(1));
    let mut subscriber = RawConnection::handshaken(broker.native_addr());
    subscriber.send(Frame::Subscribe {
        request_id: 2,
        sub_id: 77,
        topic: b"news",
        options: &[],
    });
    let data = subscriber.expect_ok(2);
    assert_eq!(data.len(), 16, "epoch and last sequence");
    assert_eq!(&data[8..], &0u64.to_be_bytes());

    let mut publisher = RawConnection::handshaken(broker.native_addr());
    publisher.send(Frame::Publish {
        request_id: 3,
        quiet: false,
        topic: b"news",
        reply_to: Some(b"inbox.me"),
        payload: b"hello",
    });
    publisher.expect_ok(3);

    let bytes = subscriber.next_frame_bytes().unwrap();
    match native::decode(&bytes, 1 << 20).unwrap().unwrap().0 {
        Frame::Msg {
            sub_id,
            seq,
            timestamp_ns,
            delivery_count,
            topic,
            reply_to,
            payload,
        } => {
            assert_eq!(sub_id, 77);
            assert_eq!(seq, 1);
            assert!(timestamp_ns > 0);
            assert_eq!(delivery_count, 1);
            assert_eq!(topic, b"news");
            assert_eq!(reply_to, Some(&b"inbox.me"[..]));
            assert_eq!(payload, b"hello");
        }
        other => panic!("expected MSG, got {other:?}"),
    }
}

#[test]
fn bad_commands_get_an_err_with_their_request_id_and_the_connection_stays_usable() {
    let broker = start(config(2));
    let mut raw = RawConnection::handshaken(broker.native_addr());
    let check = |raw: &mut RawConnection, frame: Frame<'_>, request_id: u32, code: ErrorCode| {
        raw.send(frame);
        assert_eq!(raw.expect_err(), (request_id, code.as_u16()), "{frame:?}");
    };
    check(
        &mut raw,
        Frame::Publish {
            request_id: 2,
            quiet: true,
            topic: b"bad topic",
            reply_to: None,
            payload: b"",
        },
        2,
        ErrorCode::BadTopic,
    );
    check(
        &mut raw,
        Frame::Publish {
            request_id: 3,
            quiet: false,
            topic: b"a.*",
            reply_to: None,
            payload: b"",
        },
        3,
        ErrorCode::BadTopic,
    );
    check(
        &mut raw,
        Frame::Publish {
            request_id: 4,
            quiet: false,
            topic: b"$sys.x",
            reply_to: None,
            payload: b"",
        },
        4,
        ErrorCode::BadTopic,
    );
    check(
        &mut raw,
        Frame::Subscribe {
            request_id: 5,
            sub_id: 1,
            topic: b"a..b",
            options: &[],
        },
        5,
        ErrorCode::BadTopic,
    );
    check(
        &mut raw,
        Frame::Subscribe {
            request_id: 6,
            sub_id: 1,
            topic: b"a",
            options: &[0x70, 0, 0],
        },
        6,
        ErrorCode::UnsupportedOption,
    );
    check(
        &mut raw,
        Frame::Unsubscribe {
            request_id: 7,
            sub_id: 12345,
        },
        7,
        ErrorCode::UnknownSubscription,
    );
    raw.send(Frame::Subscribe {
        request_id: 8,
        sub_id: 1,
        topic: b"a",
        options: &[],
    });
    raw.expect_ok(8);
    check(
        &mut raw,
        Frame::Subscribe {
            request_id: 9,
            sub_id: 1,
            topic: b"b",
            options: &[],
        },
        9,
        ErrorCode::DuplicateSubscription,
    );
    check(
        &mut raw,
        Frame::Hello {
            request_id: 10,
            version: 1,
            client_name: b"",
        },
        10,
        ErrorCode::BadFrame,
    );
    // An unknown opcode with a well-formed header is skipped.
    raw.send_bytes(&[0, 0, 0, 8, 0x7f, 0, 0, 0, 0, 0, 0, 11]);
    assert_eq!(raw.expect_err(), (11, ErrorCode::UnknownOpcode.as_u16()));
    // Still serving this connection.
    raw.send(Frame::Ping { request_id: 12 });
    assert!(raw.next_frame_bytes().is_some());
}

#[test]
fn a_payload_over_the_limit_is_refused_and_the_stream_continues() {
    let mut config = config(1);
    config.message_bytes_max = 100;
    config.outbound_bytes_max = 64 * 1024;
    let broker = start(config);
    let mut raw = RawConnection::handshaken(broker.native_addr());
    raw.send(Frame::Publish {
        request_id: 2,
        quiet: false,
        topic: b"t",
        reply_to: None,
        payload: &[0u8; 101],
    });
    assert_eq!(raw.expect_err(), (2, ErrorCode::MessageTooLarge.as_u16()));
    raw.send(Frame::Publish {
        request_id: 3,
        quiet: false,
        topic: b"t",
        reply_to: None,
        payload: &[0u8; 100],
    });
    assert_eq!(raw.expect_ok(3), 1u64.to_be_bytes());
}

#[test]
fn an_oversized_length_is_refused_at_once_and_the_connection_closed() {
    let broker = start(config(1));
    let mut raw = RawConnection::handshaken(broker.native_addr());
    raw.send_bytes(&u32::MAX.to_be_bytes());
    assert_eq!(raw.expect_err(), (0, ErrorCode::FrameTooLarge.as_u16()));
    raw.expect_closed();
}

#[test]
fn garbage_before_the_handshake_is_refused_and_closed() {
    let broker = start(config(1));
    let mut raw = RawConnection::connect(broker.native_addr());
    // Not a text protocol the broker recognises (those get an answer in their own words).
    raw.send_bytes(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    let (request_id, code) = raw.expect_err();
    assert_eq!(request_id, 0);
    assert!(
        code == ErrorCode::FrameTooLarge.as_u16() || code == ErrorCode::BadFrame.as_u16(),
        "code {code}"
    );
    raw.expect_closed();
}

#[test]
fn a_command_before_hello_is_refused_and_closed() {
    let broker = start(config(1));
    let mut raw = RawConnection::connect(broker.native_addr());
    raw.send(Frame::Ping { request_id: 1 });
    assert_eq!(raw.expect_err(), (0, ErrorCode::HandshakeRequired.as_u16()));
    raw.expect_closed();
}

#[test]
fn a_wrong_protocol_version_is_refused_and_closed() {
    let broker = start(config(1));
    let mut raw = RawConnection::connect(broker.native_addr());
    raw.send(Frame::Hello {
        request_id: 1,
        version: 99,
        client_name: b"future",
    });
    assert_eq!(
        raw.expect_err(),
        (1, ErrorCode::UnsupportedVersion.as_u16())
    );
    raw.expect_closed();
}

#[test]
fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let mut config = config(1);
    config.handshake_timeout_ms = 200;
    let broker = start(config);
    let mut raw = RawConnection::connect(broker.native_addr());
    // A truncated HELLO: the header promises more than ever arrives.
    raw.send_bytes(&[0, 0, 0, 20, 1, 0]);
    assert_eq!(raw.expect_err(), (0, ErrorCode::HandshakeRequired.as_u16()));
    raw.expect_closed();
}

#[test]
fn bad_clients_do_not_disturb_a_working_subscription() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut publisher = client(addr);
    let mut subscriber = client(addr);
    let mut subscription = subscriber.subscribe("steady").unwrap();
    for round in 0..20u8 {
        let mut raw = RawConnection::connect(addr);
        let garbage: Vec<u8> = (0..64).map(|i| i ^ round.wrapping_mul(31)).collect();
        raw.send_bytes(&garbage);
        drop(raw);
        let truncated = [0u8, 0, 0, 30, 2, 0, 0, 0, 0, 0, 0, 1, 5];
        let mut raw = RawConnection::handshaken(addr);
        raw.send_bytes(&truncated);
        drop(raw);
        publisher.publish("steady", &[round]).unwrap();
    }
    for round in 0..20u8 {
        let message = subscription
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        assert_eq!(message.payload, vec![round]);
        assert_eq!(message.seq, round as u64 + 1);
    }
}

#[test]
fn too_many_connections_are_refused_with_a_clear_error() {
    let mut config = config(1);
    config.connections_max = 2;
    let broker = start(config);
    let addr = broker.native_addr();
    let _first = RawConnection::handshaken(addr);
    let _second = RawConnection::handshaken(addr);
    let mut third = RawConnection::connect(addr);
    assert_eq!(
        third.expect_err(),
        (0, ErrorCode::TooManyConnections.as_u16())
    );
    third.expect_closed();
}

/// Linux ends a read early at TCP's urgent-data mark even with more bytes queued, so a short
/// read does not mean the socket is empty: the broker must keep reading to WouldBlock, or the
/// frames behind the mark wait for an event that never comes.
#[test]
fn frames_behind_urgent_data_are_still_read() {
    let broker = start(config(1));
    let mut raw = RawConnection::handshaken(broker.native_addr());
    let socket = socket2::SockRef::from(&raw.stream);
    let ping = |request_id| {
        let mut bytes = Vec::new();
        Frame::Ping { request_id }.encode(&mut bytes);
        bytes
    };
    socket.send(&ping(2)).unwrap();
    socket.send_out_of_band(b"X").unwrap();
    socket.send(&ping(3)).unwrap();
    for request_id in [2, 3] {
        let bytes = raw.next_frame_bytes().expect("a PONG, not EOF");
        let frame = native::decode(&bytes, 1 << 20).unwrap().unwrap().0;
        assert_eq!(frame, Frame::Pong { request_id });
    }
}

/// Issue 11, defect 7: an HTTP, Redis or NATS client that reaches the native port is told so
/// in its own protocol's words, not with a binary frame it cannot read, then closed.
#[test]
fn text_protocol_clients_are_answered_in_their_own_words() {
    use std::io::Read;
    let broker = start(config(1));
    let cases: [(&[u8], &str); 5] = [
        (
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (b"*1\r\n$4\r\nPING\r\n", "-ERR this is the native port"),
        (b"PING\r\n", "-ERR this is the native port"),
        (
            b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n",
            "-ERR 'this is the native port",
        ),
        (b"SUB orders 1\r\n", "-ERR 'this is the native port"),
    ];
    for (sent, expect) in cases {
        let mut raw = RawConnection::connect(broker.native_addr());
        raw.send_bytes(sent);
        let mut answer = Vec::new();
        raw.stream
            .read_to_end(&mut answer)
            .expect("the broker answers, then closes");
        let answer = String::from_utf8(answer).expect("a text answer");
        assert!(
            answer.starts_with(expect),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(sent)
        );
        assert!(answer.contains("corebus"), "{answer:?}");
    }
    // The broker still serves native clients.
    RawConnection::handshaken(broker.native_addr());
}

//! Byte-level exchanges over a real socket: the handshake, each command's reply, and what the
//! broker does with bad input (a clear ERR, a clean close where it cannot resync, and the
//! other clients keep being served).

mod common;

use common::*;
use corebus::error::ErrorCode;
use corebus::protocol::native::{self, Frame, PROTOCOL_VERSION};
use corebus::protocol::subscribe_options::{Sharing, Start, SubscribeOptions};

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
            headers: &[],
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
        headers: &[],
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
            headers: _,
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
            headers: &[],
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
            headers: &[],
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
            headers: &[],
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
        headers: &[],
        payload: &[0u8; 101],
    });
    assert_eq!(raw.expect_err(), (2, ErrorCode::MessageTooLarge.as_u16()));
    raw.send(Frame::Publish {
        request_id: 3,
        quiet: false,
        topic: b"t",
        reply_to: None,
        headers: &[],
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
    raw.send(Frame::Ping { request_id: 41 });
    // Its request id is readable, so the answer carries it.
    assert_eq!(
        raw.expect_err(),
        (41, ErrorCode::HandshakeRequired.as_u16())
    );
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
    // The test connects from 127.0.0.1, which the localhost reserve would let in.
    config.connections_loopback_reserve = 0;
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

#[test]
fn a_server_opcode_from_a_client_is_answered_with_its_id_and_the_connection_stays_open() {
    let broker = start(config(1));
    let mut raw = RawConnection::handshaken(broker.native_addr());
    raw.send(Frame::Gap {
        sub_id: 9,
        missed: 1,
        resume_seq: 2,
        topic: b"",
    });
    assert_eq!(raw.expect_err(), (9, ErrorCode::UnknownOpcode.as_u16()));
    raw.send(Frame::Pong { request_id: 10 });
    assert_eq!(raw.expect_err(), (10, ErrorCode::UnknownOpcode.as_u16()));
    raw.send(Frame::Ping { request_id: 11 });
    let bytes = raw.next_frame_bytes().unwrap();
    assert_eq!(
        native::decode(&bytes, 1 << 20).unwrap().unwrap().0,
        Frame::Pong { request_id: 11 }
    );
}

#[test]
fn each_version_gets_only_the_frames_and_fields_it_has() {
    let broker = start(config(1));
    let ack = |request_id, topic| Frame::Ack {
        request_id,
        sub_id: 1,
        seq: 1,
        kind: native::AckKind::Single,
        topic,
    };
    let mut v1 = RawConnection::handshaken_at(broker.native_addr(), 1);
    v1.send(ack(5, b""));
    assert_eq!(v1.expect_err(), (5, ErrorCode::UnknownOpcode.as_u16()));
    v1.send(Frame::CreateTopic {
        request_id: 6,
        topic: b"v1.made",
        options: b"",
    });
    assert_eq!(v1.expect_err(), (6, ErrorCode::UnknownOpcode.as_u16()));

    let mut v2 = RawConnection::handshaken_at(broker.native_addr(), 2);
    v2.send(ack(7, b"some.topic"));
    assert_eq!(v2.expect_err(), (7, ErrorCode::BadFrame.as_u16()));
    // Without the v3 field the ACK is read, and fails only for naming no subscription.
    v2.send(ack(8, b""));
    assert_eq!(
        v2.expect_err(),
        (8, ErrorCode::UnknownSubscription.as_u16())
    );

    let mut v3 = RawConnection::handshaken_at(broker.native_addr(), 3);
    let mut options = Vec::new();
    SubscribeOptions {
        start: Start::FromSeqOfEpoch { seq: 1, epoch: 1 },
        ..SubscribeOptions::default()
    }
    .encode(&mut options);
    v3.send(Frame::Subscribe {
        request_id: 9,
        sub_id: 1,
        topic: b"v3.topic",
        options: &options,
    });
    assert_eq!(v3.expect_err(), (9, ErrorCode::UnsupportedOption.as_u16()));
}

#[test]
fn a_start_beyond_the_topics_end_or_in_another_epoch_is_refused_with_the_position() {
    let broker = start(config(2));
    let mut raw = RawConnection::handshaken(broker.native_addr());
    for request_id in 1..=3 {
        raw.send(Frame::Publish {
            request_id,
            quiet: false,
            topic: b"resume.t",
            reply_to: None,
            headers: &[],
            payload: b"x",
        });
        raw.expect_ok(request_id);
    }
    let subscribe = |raw: &mut RawConnection, (request_id, sub_id), start| {
        let mut options = Vec::new();
        SubscribeOptions {
            start,
            ..SubscribeOptions::default()
        }
        .encode(&mut options);
        raw.send(Frame::Subscribe {
            request_id,
            sub_id,
            topic: b"resume.t",
            options: &options,
        });
    };
    // The next number is still a valid start: nothing yet, then every new message.
    subscribe(&mut raw, (10, 1), Start::FromSeq(4));
    let data = raw.expect_ok(10);
    let epoch = u64::from_be_bytes(data[..8].try_into().unwrap());
    assert_eq!(u64::from_be_bytes(data[8..].try_into().unwrap()), 3);

    subscribe(&mut raw, (11, 2), Start::FromSeq(5000));
    let (id, code, message) = raw.expect_err_message();
    assert_eq!((id, code), (11, ErrorCode::StartBeyondEnd.as_u16()));
    assert!(
        message.contains(&format!("epoch {epoch}")) && message.contains("seq 3"),
        "{message}"
    );

    subscribe(
        &mut raw,
        (12, 3),
        Start::FromSeqOfEpoch {
            seq: 2,
            epoch: epoch.wrapping_add(1),
        },
    );
    let (id, code, message) = raw.expect_err_message();
    assert_eq!((id, code), (12, ErrorCode::EpochMismatch.as_u16()));
    assert!(message.contains(&format!("epoch {epoch}")), "{message}");

    subscribe(&mut raw, (13, 4), Start::FromSeqOfEpoch { seq: 2, epoch });
    raw.expect_ok(13);
    for seq in 2..=3u64 {
        let bytes = raw.next_frame_bytes().unwrap();
        match native::decode(&bytes, 1 << 20).unwrap().unwrap().0 {
            Frame::Msg {
                sub_id: 4,
                seq: got,
                ..
            } => assert_eq!(got, seq),
            other => panic!("expected MSG {seq}, got {other:?}"),
        }
    }

    // A durable consumer is held to the same rule.
    let mut options = Vec::new();
    SubscribeOptions {
        start: Start::FromSeq(9),
        sharing: Sharing::Consumer("late".into()),
        acks: None,
    }
    .encode(&mut options);
    raw.send(Frame::Subscribe {
        request_id: 14,
        sub_id: 5,
        topic: b"resume.t",
        options: &options,
    });
    assert_eq!(raw.expect_err(), (14, ErrorCode::StartBeyondEnd.as_u16()));
}

#[test]
fn headers_reach_v4_subscribers_and_older_ones_get_the_message_without_them() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let subscribe = |raw: &mut RawConnection| {
        raw.send(Frame::Subscribe {
            request_id: 2,
            sub_id: 5,
            topic: b"hdr.t",
            options: b"",
        });
        raw.expect_ok(2);
    };
    let mut v4 = RawConnection::handshaken(addr);
    let mut v3 = RawConnection::handshaken_at(addr, 3);
    subscribe(&mut v4);
    subscribe(&mut v3);
    let mut reader = client(addr);
    let mut subscription = reader.subscribe("hdr.t").unwrap();
    let mut publisher = client(addr);
    let seq = publisher
        .publish_with_headers(
            "hdr.t",
            &[("id", b"order-9"), ("content-type", b"application/json")],
            b"{\"a\":1}",
        )
        .unwrap();
    let mut block = Vec::new();
    native::put_header(&mut block, b"id", b"order-9").unwrap();
    native::put_header(&mut block, b"content-type", b"application/json").unwrap();
    for (raw, headers) in [(&mut v4, &block[..]), (&mut v3, &[][..])] {
        let bytes = raw.next_frame_bytes().unwrap();
        match native::decode(&bytes, 1 << 20).unwrap().unwrap().0 {
            Frame::Msg {
                sub_id: 5,
                seq: got,
                headers: got_headers,
                payload,
                ..
            } => {
                assert_eq!(got, seq);
                assert_eq!(got_headers, headers);
                assert_eq!(payload, b"{\"a\":1}");
            }
            other => panic!("expected MSG, got {other:?}"),
        }
    }
    // The Rust client shows them in order.
    let delivery = subscription
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        delivery.headers(),
        [
            ("id".to_owned(), b"order-9".to_vec()),
            ("content-type".to_owned(), b"application/json".to_vec())
        ]
    );
    assert_eq!(delivery.header("ID"), Some(&b"order-9"[..]));
    // A v3 client may not send headers; a malformed block is refused, the stream goes on.
    let mut old = RawConnection::handshaken_at(addr, 3);
    old.send(Frame::Publish {
        request_id: 9,
        quiet: false,
        topic: b"hdr.t",
        reply_to: None,
        headers: &block,
        payload: b"x",
    });
    assert_eq!(old.expect_err(), (9, ErrorCode::BadFrame.as_u16()));
    let mut bad = Vec::new();
    Frame::Publish {
        request_id: 10,
        quiet: false,
        topic: b"hdr.t",
        reply_to: None,
        headers: &[3, b'i', b'd'],
        payload: b"x",
    }
    .encode(&mut bad);
    v4.send_bytes(&bad);
    assert_eq!(v4.expect_err(), (10, ErrorCode::BadFrame.as_u16()));
}

/// Regression: a PUBLISH with `PUBLISH_HEADERS` and an empty header block decodes just like
/// one without the flag, and v1 to v3 connections slipped it past the version gate. The flag
/// itself is refused below v4 (`BAD_FRAME`, the connection carries on); v4 may send it.
#[test]
fn publish_headers_flag_needs_v4_even_with_an_empty_block() {
    let broker = start(config(1));
    let publish = |request_id: u32| {
        let mut body = vec![5];
        body.extend_from_slice(b"hdr.e");
        body.push(0); // no reply topic
        body.extend_from_slice(&[0, 0]); // headers_len 0
        body.extend_from_slice(b"x");
        let mut frame = (8 + body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x02, native::PUBLISH_HEADERS, 0, 0]);
        frame.extend_from_slice(&request_id.to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    };
    for version in 1..=3 {
        let mut raw = RawConnection::handshaken_at(broker.native_addr(), version);
        raw.send_bytes(&publish(20));
        assert_eq!(
            raw.expect_err(),
            (20, ErrorCode::BadFrame.as_u16()),
            "v{version}"
        );
        raw.send(Frame::Ping { request_id: 21 });
        let bytes = raw.next_frame_bytes().unwrap();
        assert_eq!(
            native::decode(&bytes, 1 << 20).unwrap().unwrap().0,
            Frame::Pong { request_id: 21 }
        );
    }
    let mut v4 = RawConnection::handshaken_at(broker.native_addr(), 4);
    v4.send_bytes(&publish(22));
    v4.expect_ok(22);
}

/// Regression: an HTTP request whose first segment is exactly four bytes of its method
/// (`POST`, `HEAD`, `PATC`...) read as an absurd frame length and got a binary
/// FRAME_TOO_LARGE; the broker now waits for the byte that settles it and answers in HTTP.
#[test]
fn http_methods_split_after_four_bytes_get_the_http_answer() {
    use std::io::{Read, Write};
    let broker = start(config(1));
    for request in [
        &b"POST /v1/topics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"PATCH / HTTP/1.1\r\n\r\n",
        b"OPTIONS / HTTP/1.1\r\n\r\n",
        b"DELETE /v1/topics/a HTTP/1.1\r\n\r\n",
    ] {
        let mut raw = RawConnection::connect(broker.native_addr());
        raw.send_bytes(&request[..4]);
        // Long enough for the broker to have read (and, before the fix, answered) the four.
        std::thread::sleep(std::time::Duration::from_millis(100));
        // Before the fix the broker had closed by now: a failed write shows in the answer.
        let _ = raw.stream.write_all(&request[4..]);
        let mut answer = Vec::new();
        let _ = raw.stream.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 400 "),
            "{:?} got {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&answer)
        );
    }
    RawConnection::handshaken(broker.native_addr());
}

/// An HTTP, Redis or NATS client that reaches the native port is told so in its own
/// protocol's words, not with a binary frame it cannot read, then closed.
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
        if expect.starts_with("HTTP") {
            let http = broker.http_addr().unwrap().to_string();
            assert!(answer.contains(&http), "names the HTTP port: {answer:?}");
        }
    }
    // The broker still serves native clients.
    RawConnection::handshaken(broker.native_addr());
}

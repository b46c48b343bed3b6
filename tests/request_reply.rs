//! Request/reply over real sockets: a responder answers on the reply topic a request names.

mod common;

use std::time::{Duration, Instant};

use common::*;
use corebus::client::Error;

#[test]
fn a_request_gets_the_responders_answer_across_shards() {
    let broker = start(config(4));
    let addr = broker.native_addr();
    let mut responder = client_on_shard(addr, 1);
    let mut requests = responder.subscribe("svc.echo").unwrap();
    let service = std::thread::spawn(move || {
        for _ in 0..50 {
            let request = requests.recv_timeout(Duration::from_secs(10)).unwrap();
            let mut answer = b"echo:".to_vec();
            answer.extend_from_slice(&request.payload);
            assert!(responder.reply(&request, &answer).unwrap());
        }
    });
    let mut requester = client_on_shard(addr, 3);
    for i in 0..50u32 {
        let payload = i.to_be_bytes();
        let answer = requester
            .request("svc.echo", &payload, Duration::from_secs(10))
            .unwrap();
        assert_eq!(answer.payload, [b"echo:".as_slice(), &payload].concat());
    }
    service.join().unwrap();
}

#[test]
fn a_request_nobody_answers_times_out_cleanly_and_the_client_stays_usable() {
    let broker = start(config(2));
    let mut requester = client(broker.native_addr());
    let started = Instant::now();
    let error = requester
        .request("svc.nobody", b"?", Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(error, Error::Timeout), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A late answer to the timed-out request does not satisfy the next one.
    let mut responder = client(broker.native_addr());
    let mut requests = responder.subscribe("svc.later").unwrap();
    let service = std::thread::spawn(move || {
        let first = requests.recv_timeout(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        responder.reply(&first, b"late").unwrap();
        let second = requests.recv_timeout(Duration::from_secs(10)).unwrap();
        responder.reply(&second, b"on time").unwrap();
    });
    let error = requester
        .request("svc.later", b"1", Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(error, Error::Timeout));
    std::thread::sleep(Duration::from_millis(400));
    let answer = requester
        .request("svc.later", b"2", Duration::from_secs(10))
        .unwrap();
    assert_eq!(answer.payload, b"on time");
    service.join().unwrap();
}

#[test]
fn thousands_of_uncollected_refusals_do_not_stall_the_client() {
    let broker = start(config(1));
    let mut client = client(broker.native_addr());
    let mut subscription = client.subscribe("still.works").unwrap();
    for _ in 0..5_000 {
        client.publish("not a topic", b"x").unwrap();
    }
    // Requests and deliveries keep flowing although nobody collected the refusals yet.
    client.ping().unwrap();
    let seq = client.publish_confirmed("still.works", b"y").unwrap();
    assert_eq!(
        subscription
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .seq,
        seq
    );
    let (errors, lost) = client.take_async_errors();
    assert_eq!(errors.len() as u64 + lost, 5_000);
    assert!(errors
        .iter()
        .all(|e| e.code() == Some(corebus::error::ErrorCode::BadTopic)));
}

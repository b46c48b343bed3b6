//! Presence events over real sockets: a topic created with presence on announces each
//! subscription's start and end on `$sys.presence.<topic>` (the subscriber's shard, name and
//! protocol included), a topic without it announces nothing, and
//! `--presence-events-per-second-max` bounds the events, counting those it holds back.

mod common;

use std::time::Duration;

use common::*;
use corebus::client::{Client, ClientOptions, Subscription, TopicOptions};
use corebus::protocol::CLIENT_NAME_BYTES_MAX;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

fn with_presence() -> TopicOptions {
    TopicOptions {
        presence: Some(1),
        ..TopicOptions::default()
    }
}

fn next_event(events: &mut Subscription) -> Value {
    let delivery = events.recv_timeout(WAIT).expect("a presence event");
    assert_eq!(
        delivery.headers(),
        [("content-type".to_owned(), b"application/json".to_vec())]
    );
    serde_json::from_slice(&delivery.payload).unwrap()
}

#[test]
fn joins_and_leaves_are_published_for_a_topic_with_presence() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let topic = topic_owned_by("presence.room", 1, 2);
    let mut admin = client(addr);
    admin.create_topic(&topic, with_presence()).unwrap();
    let mut events = admin.subscribe(&format!("$sys.presence.{topic}")).unwrap();

    let mut alice = client_on_shard(addr, 0);
    let subscription = alice.subscribe(&topic).unwrap();
    let join = next_event(&mut events);
    assert_eq!(join["event"], "join");
    assert_eq!(join["topic"], topic.as_str());
    assert_eq!(join["shard"], 0);
    assert_eq!(join["client_name"], "test-shard-0");
    assert_eq!(join["protocol"], "native");
    assert!(join["connection"].as_str().unwrap().contains('.'));
    assert!(join["time_ms"].as_u64().unwrap() > 0);

    alice.unsubscribe(subscription).unwrap();
    let leave = next_event(&mut events);
    assert_eq!(
        (&leave["event"], &leave["sub_id"], &leave["connection"]),
        (&Value::from("leave"), &join["sub_id"], &join["connection"])
    );

    // A connection that goes away leaves too.
    let mut bob = client_on_shard(addr, 1);
    let _kept = bob.subscribe(&topic).unwrap();
    assert_eq!(next_event(&mut events)["event"], "join");
    drop(bob);
    let gone = next_event(&mut events);
    assert_eq!(
        (&gone["event"], &gone["shard"]),
        (&Value::from("leave"), &Value::from(1))
    );

    // Without presence, nothing is said.
    let quiet_topic = topic_owned_by("presence.quiet", 0, 2);
    admin
        .create_topic(&quiet_topic, TopicOptions::default())
        .unwrap();
    let mut quiet_events = admin
        .subscribe(&format!("$sys.presence.{quiet_topic}"))
        .unwrap();
    let _silent = client(addr).subscribe(&quiet_topic).unwrap();
    assert!(quiet_events.recv_timeout(QUIET).is_err());

    let stats = admin.stats().unwrap();
    assert_eq!(
        stats.topics[&format!("$sys.presence.{topic}")].messages,
        4,
        "two joins, two leaves"
    );
}

#[test]
fn the_event_rate_is_bounded_and_what_it_holds_back_is_counted() {
    let broker = start(corebus::config::Config {
        presence_events_per_second_max: 2,
        ..config(1)
    });
    let addr = broker.native_addr();
    let mut admin = client(addr);
    admin.create_topic("crowd", with_presence()).unwrap();
    let mut events = admin.subscribe("$sys.presence.crowd").unwrap();
    let mut crowd = client(addr);
    let _subscriptions: Vec<Subscription> =
        (0..5).map(|_| crowd.subscribe("crowd").unwrap()).collect();
    // Two a second, a burst of two: the first two joins go out, and (unless this machine
    // took over a second for the five subscribes) the other three are held back.
    let http = broker.http_addr().unwrap();
    let metrics = http_get(http, "/metrics");
    let sample = |name: &str| -> u64 {
        let prefix = format!("corebus_{name}{{shard=\"0\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    let (sent, held_back) = (
        sample("presence_events_total"),
        sample("presence_events_suppressed_total"),
    );
    assert_eq!(sent + held_back, 5);
    assert!(held_back >= 2, "{metrics}");
    for _ in 0..sent {
        assert_eq!(next_event(&mut events)["event"], "join");
    }
    assert!(events.recv_timeout(QUIET).is_err(), "over the rate");
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: corebus\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// An event never exceeds the message limit its subscribers were promised: under a limit
/// too small for the longest client name, the join leaves the name out and says so.
#[test]
fn an_event_above_the_message_limit_leaves_the_client_name_out() {
    let mut config = config(1);
    config.message_bytes_max = 400;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut admin = client(addr);
    admin
        .create_topic("presence.small", with_presence())
        .unwrap();
    let mut events = admin.subscribe("$sys.presence.presence.small").unwrap();
    let mut short = Client::connect_with(
        addr,
        ClientOptions {
            name: "bob".to_owned(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let _kept = short.subscribe("presence.small").unwrap();
    let join = next_event(&mut events);
    assert_eq!(join["client_name"], "bob");
    assert!(join.get("client_name_omitted").is_none(), "{join}");
    let mut long = Client::connect_with(
        addr,
        ClientOptions {
            name: "n".repeat(CLIENT_NAME_BYTES_MAX),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let _kept_too = long.subscribe("presence.small").unwrap();
    let delivery = events.recv_timeout(WAIT).expect("a presence event");
    assert!(
        delivery.payload.len() <= 400,
        "{} bytes",
        delivery.payload.len()
    );
    let join: Value = serde_json::from_slice(&delivery.payload).unwrap();
    assert_eq!(
        (join["event"].as_str(), join["client_name"].is_null()),
        (Some("join"), true)
    );
    assert_eq!(join["client_name_omitted"], true, "{join}");
}

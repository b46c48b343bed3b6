//! Nothing a caller passes to the Rust client may panic it (issue 11, defect 2): names of any
//! length and content, payloads of any size, consumer names of any length. What the wire
//! cannot carry is refused by the client with the broker's code for the same mistake
//! (`BAD_TOPIC`, `MESSAGE_TOO_LARGE`, `UNSUPPORTED_OPTION`); the rest reaches the broker,
//! which answers as it always does. Either way the connection keeps working.

mod common;

use std::time::Duration;

use common::{client, config, start};
use corebus::client::{Error, Sharing, SubscribeOptions, TopicOptions};
use corebus::error::ErrorCode;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

const MESSAGE_BYTES_MAX: usize = 4096;

#[test]
fn a_256_byte_topic_is_bad_topic_not_a_panic() {
    let mut broker_config = config(1);
    broker_config.message_bytes_max = MESSAGE_BYTES_MAX;
    let broker = start(broker_config);
    let mut client = client(broker.native_addr());
    let long = "a".repeat(256);
    let code = |result: Result<(), Error>| result.unwrap_err().server_code();
    assert_eq!(code(client.publish(&long, b"x")), Some(ErrorCode::BadTopic));
    assert_eq!(
        code(client.publish_confirmed(&long, b"x").map(drop)),
        Some(ErrorCode::BadTopic)
    );
    assert_eq!(
        code(client.subscribe(&long).map(drop)),
        Some(ErrorCode::BadTopic)
    );
    assert_eq!(
        code(
            client
                .create_topic(&long, TopicOptions::default())
                .map(drop)
        ),
        Some(ErrorCode::BadTopic)
    );
    assert_eq!(code(client.delete_topic(&long)), Some(ErrorCode::BadTopic));
    assert_eq!(
        code(client.publish_with_reply("ok", b"x", &long)),
        Some(ErrorCode::BadTopic)
    );
    assert_eq!(
        code(client.publish("ok", &vec![0; MESSAGE_BYTES_MAX + 1])),
        Some(ErrorCode::MessageTooLarge)
    );
    let options = SubscribeOptions {
        sharing: Sharing::Consumer("c".repeat(70_000)),
        ..SubscribeOptions::default()
    };
    assert_eq!(
        code(client.subscribe_with("ok", options).map(drop)),
        Some(ErrorCode::UnsupportedOption)
    );
    // 255 bytes is still a valid name.
    let longest = format!("{}.b", "a".repeat(253));
    assert_eq!(longest.len(), 255);
    assert_eq!(client.publish_confirmed(&longest, b"x").unwrap(), 1);
    client.ping().unwrap();
}

/// Topic-like strings: mostly valid characters, with wildcards, dots, `$`, spaces and any
/// Unicode mixed in, from empty to well past the 255-byte limit.
fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z.]{0,300}",
        "[A-Za-z0-9_.*>$ -]{0,280}",
        any::<String>(),
        (250usize..=260).prop_map(|n| "x".repeat(n)),
        (0usize..600).prop_map(|n| "é".repeat(n)),
    ]
}

#[test]
fn no_name_or_payload_size_panics_the_client() {
    let mut broker_config = config(2);
    broker_config.message_bytes_max = MESSAGE_BYTES_MAX;
    let broker = start(broker_config);
    // TestRunner takes a `Fn`: the client lives in a RefCell.
    let client = std::cell::RefCell::new(client(broker.native_addr()));
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (names(), names(), 0usize..MESSAGE_BYTES_MAX * 2, 0usize..100);
    runner
        .run(&strategy, |(topic, reply_to, payload_len, consumer_len)| {
            let client = &mut *client.borrow_mut();
            let payload = vec![b'p'; payload_len];
            let too_large = payload_len > MESSAGE_BYTES_MAX;
            let oversized = |result: &Result<_, Error>| {
                result.as_ref().err().and_then(Error::server_code)
                    == Some(ErrorCode::MessageTooLarge)
            };
            let quiet = client.publish(&topic, &payload);
            prop_assert!(quiet.is_ok() || matches!(quiet, Err(Error::Invalid(_))));
            let confirmed = client.publish_confirmed(&topic, &payload);
            if too_large && topic.len() <= 255 {
                prop_assert!(oversized(&confirmed), "{confirmed:?}");
            }
            if too_large || topic.len() > 255 {
                prop_assert!(matches!(confirmed, Err(Error::Invalid(_))), "{confirmed:?}");
            }
            let _ = client.publish_with_reply(&topic, &payload, &reply_to);
            let _ = client.request(&topic, &payload, Duration::from_millis(1));
            let options = SubscribeOptions {
                sharing: Sharing::Group("g".repeat(consumer_len)),
                ..SubscribeOptions::default()
            };
            if let Ok(subscription) = client.subscribe_with(&topic, options) {
                client.unsubscribe(subscription).unwrap();
            }
            let _ = client.create_topic(&topic, TopicOptions::default());
            let _ = client.delete_topic(&topic);
            // Whatever happened, the connection still works.
            prop_assert!(client.ping().is_ok());
            Ok(())
        })
        .unwrap();
}

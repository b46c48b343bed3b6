//! What the broker says when it refuses something (issue 11, defect 8): each text names the
//! setting or limit involved, in the user's words, not the broker's internals.

mod common;

use common::{client, config, start};
use corebus::client::{AckSettings, Error, Sharing, SubscribeOptions, TopicOptions};
use corebus::error::ErrorCode;

fn refusal<T>(result: Result<T, Error>) -> (Option<ErrorCode>, String) {
    match result {
        Err(Error::Server(e)) => (e.code(), e.message),
        Err(other) => panic!("expected a refusal from the broker, got {other}"),
        Ok(_) => panic!("expected a refusal, got OK"),
    }
}

#[test]
fn refusals_name_what_was_wrong() {
    let mut broker_config = config(2);
    broker_config.topics_max = 2;
    let broker = start(broker_config);
    let mut c = client(broker.native_addr());

    let (code, text) = refusal(c.create_topic("a.*", TopicOptions::default()));
    assert_eq!(code, Some(ErrorCode::BadTopic));
    assert!(
        !text.contains("publishing") && text.contains("exact topic"),
        "{text}"
    );

    let too_many = TopicOptions {
        replay_messages_max: Some(10_000_000),
        ..TopicOptions::default()
    };
    let (code, text) = refusal(c.create_topic("big", too_many));
    assert_eq!(code, Some(ErrorCode::OptionOutOfRange));
    assert!(
        text.contains("65536") && text.contains("--topic-replay-messages-max"),
        "{text}"
    );

    let (code, text) = refusal(c.delete_topic("never.made"));
    assert_eq!(code, Some(ErrorCode::TopicNotFound));
    assert!(!text.contains("owner"), "{text}");

    let acked = || SubscribeOptions {
        sharing: Sharing::Consumer("billing".into()),
        acks: Some(AckSettings::default()),
        ..SubscribeOptions::default()
    };
    let _first = c.subscribe_with("jobs", acked()).unwrap();
    let (code, text) = refusal(c.subscribe_with("jobs", acked()));
    assert_eq!(code, Some(ErrorCode::ConsumerInUse));
    assert!(
        text.contains("`billing`") && text.contains("one subscription at a time"),
        "{text}"
    );
    assert!(text.contains("acks on"), "{text}");

    // topics-max 2 over 2 shards: one per shard, and `jobs` holds its shard's. A new topic
    // on the same shard finds no room.
    let jobs_shard = corebus::protocol::topic::owner_shard("jobs", 2);
    let same_shard = (0..)
        .map(|i| format!("t{i}"))
        .find(|t| corebus::protocol::topic::owner_shard(t, 2) == jobs_shard)
        .unwrap();
    let (code, text) = refusal(c.publish_confirmed(&same_shard, b"x"));
    assert_eq!(code, Some(ErrorCode::TooManyTopics));
    assert!(
        text.contains("--topics-max") && text.contains("1 of 2"),
        "{text}"
    );
}

//! What a shard knows about topics, in its two roles.
//!
//! - As **owner** ([`OwnedTopics`]): for the topics that hash to this shard, the sequence
//!   counter, the epoch, and which shards have subscribers (exact subscriptions counted per
//!   shard; pattern interest looked up in the shard-wide pattern table and cached per topic
//!   by generation). The owner forwards each message once per interested shard.
//! - As **holder of connections** ([`LocalSubscriptions`]): which local subscriptions match a
//!   topic, exact ones in a hash map and patterns in a token trie, so a delivery that arrives
//!   from an owner fans out here without asking anyone.

use crate::mesh::message::Refusal;
use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use compact_str::CompactString;
use hashbrown::HashTable;

use crate::error::ErrorCode;
use crate::ids::{ShardId, Subscriber};
use crate::mesh::message::{ConsumerRequest, Replay, Subscribed, TopicPosition};
use crate::message::Message;
use crate::protocol::native::AckKind;
use crate::protocol::subscribe_options::AckSettings;
use crate::protocol::topic::{self, pattern_matches};
use crate::shard::consumers::{Consumer, ConsumerAction, Member};
use crate::shard::pattern_groups::AckedGroup;
use crate::shard::replay::{ReplayLimits, ReplayRing, Start};
use crate::shard::sublist::Sublist;

/// One topic on its owner shard.
pub struct OwnedTopic {
    /// Random per incarnation, so a resume against a re-created topic is detected.
    pub epoch: u64,
    pub last_seq: u64,
    /// Never decreases, even if the wall clock steps back.
    pub last_timestamp_ns: u64,
    /// Exact subscriptions per shard; `exact_mask` has a bit for each non-zero count.
    exact_subscribers_by_shard: Vec<u32>,
    exact_mask: u64,
    /// The sum of `exact_subscribers_by_shard`, for a publish's receiver count.
    exact_total: u32,
    /// Shards with a matching pattern subscription, valid while `pattern_generation` equals
    /// the pattern table's generation.
    pattern_mask: u64,
    /// Matching pattern subscriptions on every shard, valid with `pattern_mask`.
    pattern_count: u32,
    pattern_generation: u64,
    /// A subscriber of this topic on another shard is past its stall watermark until then
    /// (Unix ns, renewed while it stays there): publishers to it pause for a lease each.
    pressed_until_ns: u64,
    /// Recent messages, for subscribers that start in the past.
    pub replay: ReplayRing<Message>,
    /// Durable consumers and groups, by name.
    pub consumers: AHashMap<Box<str>, Consumer>,
    /// Created by CREATE_TOPIC rather than by first use: someone asked for it (and perhaps
    /// for its own replay limits), so it is not reclaimed for being idle.
    pub explicit: bool,
    /// Created with the PRESENCE option: its subscriptions' joins and leaves are published
    /// on `$sys.presence.<topic>`.
    pub presence: bool,
    /// The connection that made it by using it, counted against its
    /// `--topics-per-connection-max` until the topic goes.
    creator: Option<Creator>,
    /// This shard's own exact subscriptions to it, as of `LocalSubscriptions`' generation.
    local_exact: LocalExactCopy,
}

/// An owned topic's copy of the exact subscriptions held by its owner shard's own
/// connections, so that a publish reaches them without a second lookup by name (the
/// lookup cost about 160 instructions a message, callgrind, fan-in 8 to 1). It is valid
/// while the shard's exact subscriptions are unchanged since it was taken
/// ([`LocalSubscriptions`] counts changes), and taken again otherwise.
#[derive(Default)]
struct LocalExactCopy {
    /// 0 for never taken: generations start at 1.
    generation: u64,
    subscribers: Vec<Subscriber>,
}

/// A connection that makes topics by using them, named by its shard and id: topics are
/// created on their owner shard, which counts each connection's creations itself (see
/// [`OwnedTopics::set_creations_per_connection_max`]).
pub type Creator = (ShardId, crate::ids::ConnectionId);

impl OwnedTopic {
    /// A new incarnation; its numbering continues after `last_seq` (0 for a name never used,
    /// else the last of a deleted incarnation, so an ack still in flight for the old one
    /// cannot name a message of the new one).
    fn new(shards: usize, replay_limits: ReplayLimits, last_seq: u64) -> Self {
        OwnedTopic {
            replay: ReplayRing::continuing_after(replay_limits, last_seq),
            consumers: AHashMap::new(),
            explicit: false,
            presence: false,
            creator: None,
            epoch: rand::random(),
            last_seq,
            last_timestamp_ns: 0,
            exact_subscribers_by_shard: vec![0; shards],
            exact_mask: 0,
            exact_total: 0,
            pattern_mask: 0,
            pattern_count: 0,
            pattern_generation: u64::MAX,
            pressed_until_ns: 0,
            local_exact: LocalExactCopy::default(),
        }
    }

    pub fn position(&self) -> TopicPosition {
        TopicPosition {
            epoch: self.epoch,
            last_seq: self.last_seq,
        }
    }

    /// Refuses a start that names a message this incarnation never numbered: from another
    /// epoch, or beyond the next sequence number. Starting there silently would hand the
    /// subscriber messages it did not ask for and hide that its history is gone.
    fn check_start(&self, start: Start) -> Result<(), Refusal> {
        let refused = |code| Refusal {
            code,
            position: Some(self.position()),
        };
        match start {
            Start::FromSeqOfEpoch { epoch, .. } if epoch != self.epoch => {
                Err(refused(ErrorCode::EpochMismatch))
            }
            Start::FromSeq(seq) | Start::FromSeqOfEpoch { seq, .. }
                if seq > self.last_seq.saturating_add(1) =>
            {
                Err(refused(ErrorCode::StartBeyondEnd))
            }
            _ => Ok(()),
        }
    }

    pub fn subscriber_count(&self) -> u64 {
        self.exact_subscribers_by_shard
            .iter()
            .map(|&n| u64::from(n))
            .sum()
    }
}

/// Reply topics of request/reply (`Client::request`): one per request, answered once, so
/// they keep no history and are reclaimed as soon as they are idle.
pub const INBOX_PREFIX: &str = "_inbox.";

fn replay_limits_for(topic: &str, limits: ReplayLimits) -> ReplayLimits {
    if topic.starts_with(INBOX_PREFIX) {
        ReplayLimits {
            messages_max: 0,
            ..limits
        }
    } else {
        limits
    }
}

/// A message's place in its topic, and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequenced {
    pub seq: u64,
    pub timestamp_ns: u64,
    /// Shards with at least one matching subscription.
    pub shard_mask: u64,
    /// Subscriptions it goes to on every shard, exact and pattern (Redis's PUBLISH answer).
    pub receivers: u32,
    /// A subscriber of the topic on another shard is past its stall watermark: the
    /// publisher should pause (see `Shard::stall_for_lease`).
    pub pressed: bool,
}

/// An unused topic younger than this (since its last publish) is never reclaimed to make room:
/// one being published to right now, whose subscriber may be about to arrive, keeps its place.
pub const PRESSURE_IDLE_NS: u64 = 1_000_000_000;
/// A full table frees `topics_max / PRESSURE_RECLAIM_DIVISOR` unused topics at a time.
const PRESSURE_RECLAIM_DIVISOR: usize = 64;

/// A topic made by `creator` went: it no longer counts against that connection.
fn forget_creation(creations: &mut AHashMap<Creator, u32>, creator: Option<Creator>) {
    let Some(creator) = creator else {
        return;
    };
    if let std::collections::hash_map::Entry::Occupied(mut made) = creations.entry(creator) {
        *made.get_mut() -= 1;
        if *made.get() == 0 {
            made.remove();
        }
    }
}

/// The topics this shard owns.
pub struct OwnedTopics {
    topics: TopicTable,
    topics_max: usize,
    shards: usize,
    replay_limits: ReplayLimits,
    pattern_matches: Vec<ShardId>,
    /// Topics with at least one consumer, so timers visit only those.
    consumer_topics: AHashSet<Box<str>>,
    consumers_len: usize,
    consumers_max: usize,
    /// Topics made by CREATE_TOPIC (never reclaimed, so counted apart).
    created_len: usize,
    created_max: usize,
    deleted: DeletedTopics,
    /// Topics each connection made by use on this shard and that still exist.
    creations: AHashMap<Creator, u32>,
    creations_max: usize,
    /// Creations refused for `creations_max`, all told.
    creations_refused: u64,
    /// After a pressure scan found nothing to reclaim, none before this time.
    pressure_scan_after_ns: Option<u64>,
    reclaimed_under_pressure: u64,
    /// `--auto-create-topics`: off, only CREATE_TOPIC makes client topics (the broker's own,
    /// `$dlq.*` and `_inbox.*`, are still made when used).
    auto_create: bool,
}

/// Where a topic sat in the owner's table when the publish path looked it up, so that
/// sequencing the publish does not look again. Only a hint: it holds while the table has
/// added and removed nothing since (a topic made by the same publish's pattern-group
/// consumers, say, may have moved every bucket), and a stale one costs a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSlot {
    index: usize,
    generation: u64,
    /// The length of the name it was found for (see [`TopicTable::holds`]).
    name_len: usize,
}

/// What a connection remembers of where its publishes found their topics, so that the
/// next publish to the same topic skips the lookup (see [`OwnedTopics::publishable_at`]).
#[derive(Clone, Copy, Debug)]
pub struct TopicHint {
    /// Where its last publish found its topic, and a sketch of the name: made once two
    /// lookups in a row found the same bucket, so a publisher that names another topic each
    /// time (the many-topics row) pays no sketch or renewal a message, only this test.
    held: Option<(TopicSlot, NameSketch)>,
    /// The bucket its last lookup found (`usize::MAX`: none).
    last_index: usize,
}

impl Default for TopicHint {
    fn default() -> TopicHint {
        TopicHint {
            held: None,
            last_index: usize::MAX,
        }
    }
}

impl TopicHint {
    /// A lookup found nothing held here.
    #[inline(always)]
    pub fn not_found(&mut self) {
        self.held = None;
        self.last_index = usize::MAX;
    }
}

/// A name's length and its first and last bytes, read as two words (overlapping when it is
/// shorter than 16 bytes): equal sketches of names up to 16 bytes mean equal names, and
/// names that differ anywhere in their ends (`orders.1`, `orders.2`) differ in sketch, so a
/// publisher that changes topic every time pays a few instructions for its hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NameSketch {
    len: usize,
    head: u64,
    tail: u64,
}

impl NameSketch {
    /// The longest name a sketch determines.
    const EXACT_BYTES: usize = 16;

    #[inline(always)]
    fn of(bytes: &[u8]) -> NameSketch {
        let len = bytes.len();
        let (head, tail) = match (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
            (Some(head), Some(tail)) => (u64::from_le_bytes(*head), u64::from_le_bytes(*tail)),
            _ => match (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
                (Some(head), Some(tail)) => (
                    u64::from(u32::from_le_bytes(*head)),
                    u64::from(u32::from_le_bytes(*tail)),
                ),
                // 0 to 3 bytes: the first, middle and last cover them all.
                _ => match (bytes.first(), bytes.get(len / 2), bytes.last()) {
                    (Some(&first), Some(&middle), Some(&last)) => (
                        u64::from(first) | u64::from(middle) << 8 | u64::from(last) << 16,
                        0,
                    ),
                    _ => (0, 0),
                },
            },
        };
        NameSketch { len, head, tail }
    }
}

/// What the bytes a publish names are, for [`OwnedTopics::publishable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishedNames {
    /// Topic names (the native and WebSocket ports, the embedded bus).
    Topics,
    /// Redis channel names (the RESP port).
    RedisChannels,
}

/// One topic in the owner's table.
struct TableEntry {
    /// Names up to 24 bytes are stored in the bucket itself: a publish's lookup compares the
    /// key it just found, and a boxed name was one more cache miss after the bucket's (among
    /// a thousand busy topics whose replay rings stream through the cache, the key compare
    /// took 15% of the shard's time in a `perf` profile, 10% without it).
    name: CompactString,
    /// The name passes `parse_publish_topic`, so a client's publish that finds it here by its
    /// bytes needs no check of its own (the broker's `$` topics are the ones that do not).
    client_publishable: bool,
    /// The name is also a Redis channel name as it is (`plain_unescaped_topic`: no `--`, which
    /// the Redis port's channel mapping escapes), so a Redis publish may find it by its
    /// channel's bytes.
    redis_plain: bool,
    topic: OwnedTopic,
}

impl TableEntry {
    /// Whether a client's publish naming `bytes` (as `names`) goes to this topic.
    #[inline]
    fn publishable_as(&self, bytes: &[u8], names: PublishedNames) -> bool {
        self.allows(names) && self.name.as_bytes() == bytes
    }

    /// Whether a client's publish naming it as `names` may go to this topic.
    #[inline(always)]
    fn allows(&self, names: PublishedNames) -> bool {
        match names {
            PublishedNames::Topics => self.client_publishable,
            PublishedNames::RedisChannels => self.redis_plain,
        }
    }
}

/// The owner's topics by name: a hash table whose hash the publish path computes once, from
/// the bytes the client sent, for the lookup that both proves the name and finds the topic.
struct TopicTable {
    hasher: ahash::RandomState,
    entries: HashTable<TableEntry>,
    /// Counts insertions and removals: a [`TopicSlot`] of an older generation may name
    /// another topic's bucket, or none.
    generation: u64,
}

impl TopicTable {
    fn new() -> TopicTable {
        TopicTable {
            hasher: ahash::RandomState::new(),
            entries: HashTable::new(),
            generation: 0,
        }
    }

    #[inline]
    fn hash(&self, name: &[u8]) -> u64 {
        self.hasher.hash_one(name)
    }

    fn slot_of(&self, hash: u64, name: &[u8]) -> Option<TopicSlot> {
        let index = self
            .entries
            .find_bucket_index(hash, |entry| entry.name.as_bytes() == name)?;
        Some(self.slot(index, name))
    }

    fn slot(&self, index: usize, name: &[u8]) -> TopicSlot {
        TopicSlot {
            index,
            generation: self.generation,
            name_len: name.len(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn contains_key(&self, name: &str) -> bool {
        self.slot_of(self.hash(name.as_bytes()), name.as_bytes())
            .is_some()
    }

    fn get(&self, name: &str) -> Option<&OwnedTopic> {
        let hash = self.hash(name.as_bytes());
        self.entries
            .find(hash, |entry| entry.name == name)
            .map(|entry| &entry.topic)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut OwnedTopic> {
        let hash = self.hash(name.as_bytes());
        self.entries
            .find_mut(hash, |entry| entry.name == name)
            .map(|entry| &mut entry.topic)
    }

    /// Whether `name` is still at `slot`: the table has added and removed nothing since the
    /// slot was found, for a name of this length. The name itself is not compared (with the
    /// call it cost, about 70 instructions a publish, callgrind): slots reach sequencing
    /// from the publish path's lookups ([`OwnedTopics::publishable`], a connection's hint
    /// through [`OwnedTopics::publishable_at`], the embedded bus's remembered slot), each
    /// with the name the message is then made of. The length catches most slips of a future
    /// caller that pairs a slot with another name; debug builds compare the name.
    fn holds(&self, slot: TopicSlot, name: &str) -> bool {
        debug_assert!(
            slot.generation != self.generation
                || self
                    .entries
                    .get_bucket(slot.index)
                    .is_some_and(|entry| entry.name == name),
            "a slot passed with another topic's name"
        );
        slot.generation == self.generation && slot.name_len == name.len()
    }

    /// The topic at a slot just found, or one [`TopicTable::holds`] said holds it.
    fn at_mut(&mut self, slot: TopicSlot) -> Option<&mut OwnedTopic> {
        self.entries
            .get_bucket_mut(slot.index)
            .map(|entry| &mut entry.topic)
    }

    /// Adds a topic the caller found absent (under `hash`, from [`TopicTable::hash`]).
    fn insert_new(&mut self, hash: u64, name: &str, topic: OwnedTopic) -> TopicSlot {
        let hasher = &self.hasher;
        let entry = TableEntry {
            name: name.into(),
            client_publishable: topic::parse_publish_topic(name.as_bytes()).is_ok(),
            redis_plain: topic::plain_unescaped_topic(name.as_bytes()).is_some(),
            topic,
        };
        let index = self
            .entries
            .insert_unique(hash, entry, |entry| hasher.hash_one(entry.name.as_bytes()))
            .bucket_index();
        self.generation += 1;
        self.slot(index, name.as_bytes())
    }

    fn remove(&mut self, name: &str) -> Option<OwnedTopic> {
        let hash = self.hash(name.as_bytes());
        let entry = self
            .entries
            .find_entry(hash, |entry| entry.name == name)
            .ok()?;
        self.generation += 1;
        Some(entry.remove().0.topic)
    }

    fn retain(&mut self, mut keep: impl FnMut(&str, &mut OwnedTopic) -> bool) {
        self.generation += 1;
        self.entries
            .retain(|entry| keep(&entry.name, &mut entry.topic));
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &OwnedTopic)> {
        self.entries
            .iter()
            .map(|entry| (entry.name.as_str(), &entry.topic))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut OwnedTopic> {
        self.entries.iter_mut().map(|entry| &mut entry.topic)
    }
}

/// The last sequence number of deleted topics, by name, so a topic made again continues the
/// numbering. At most `topics_max` names; past that the oldest deletion is forgotten.
#[derive(Default)]
struct DeletedTopics {
    last_seqs: AHashMap<Box<str>, u64>,
    /// Deletion order, for forgetting; may hold names already taken back.
    order: VecDeque<Box<str>>,
}

impl DeletedTopics {
    fn remember(&mut self, topic: &str, last_seq: u64, names_max: usize) {
        while self.last_seqs.len() >= names_max.max(1) {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.last_seqs.remove(&oldest);
        }
        if self.order.len() >= names_max.max(1) * 2 {
            // Drop names taken back already, so the queue stays bounded too.
            let last_seqs = &self.last_seqs;
            self.order.retain(|name| last_seqs.contains_key(name));
        }
        self.last_seqs.insert(topic.into(), last_seq);
        self.order.push_back(topic.into());
    }

    /// The last sequence number of a deleted topic of this name (forgotten once used), or 0.
    fn take(&mut self, topic: &str) -> u64 {
        if self.last_seqs.is_empty() {
            return 0;
        }
        self.last_seqs.remove(topic).unwrap_or(0)
    }
}

impl OwnedTopics {
    pub fn new(shards: usize, topics_max: usize, replay_limits: ReplayLimits) -> Self {
        OwnedTopics {
            topics: TopicTable::new(),
            topics_max,
            replay_limits,
            consumer_topics: AHashSet::new(),
            consumers_len: 0,
            consumers_max: usize::MAX,
            created_len: 0,
            created_max: usize::MAX,
            deleted: DeletedTopics::default(),
            creations: AHashMap::new(),
            creations_max: usize::MAX,
            creations_refused: 0,
            pressure_scan_after_ns: None,
            reclaimed_under_pressure: 0,
            auto_create: true,
            shards,
            pattern_matches: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Caps the topics CREATE_TOPIC may make on this shard.
    pub fn set_created_max(&mut self, created_max: usize) {
        self.created_max = created_max;
    }

    /// Caps the topics one connection may make by use (publish or subscribe to a new name)
    /// on this shard: its share of `--topics-per-connection-max`.
    ///
    /// Why the owner counts: a topic is created on its owner shard, inside `sequence` or
    /// `add_subscriber`, and only there is it known whether a name is new; a quiet publish
    /// gets no answer unless refused, so the connection's own shard could learn of its
    /// creations only late, after a pipelined burst had made thousands. Each owner shard
    /// therefore allows each connection `ceil(max / shards)`, checked in the same lookup
    /// that creates the topic: no extra message, no lock, exact per shard. Names hash
    /// uniformly over the owners, so a connection making new names is capped at about `max`
    /// in all (never above `shards * ceil(max / shards)`); one whose names all happen to hash
    /// to one shard is capped at that shard's share. A topic counts against its creator until
    /// it goes (idle reclaim, delete); the broker's own `$...` and `_inbox.*` topics, and
    /// topics made by CREATE_TOPIC (`--created-topics-max`), never count.
    pub fn set_creations_per_connection_max(&mut self, creations_max: usize) {
        self.creations_max = creations_max;
    }

    /// Creations refused for `--topics-per-connection-max`, all told.
    pub fn creations_refused(&self) -> u64 {
        self.creations_refused
    }

    pub fn set_auto_create(&mut self, auto_create: bool) {
        self.auto_create = auto_create;
    }

    /// Caps the durable consumers and groups this shard holds.
    pub fn set_consumers_max(&mut self, consumers_max: usize) {
        self.consumers_max = consumers_max;
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    pub fn get(&self, topic: &str) -> Option<&OwnedTopic> {
        self.topics.get(topic)
    }

    /// Whether `slot`, where `topic` was found before, still holds it: the table has added
    /// and removed nothing since, and the lengths agree. The caller knows the name is the
    /// one found there (debug builds compare it).
    #[inline]
    pub fn holds(&self, slot: TopicSlot, topic: &str) -> bool {
        self.topics.holds(slot, topic)
    }

    /// A topic this shard holds that a client may publish to, found by the bytes the client
    /// sent: the name as a `&str` and where it sits, which [`OwnedTopics::sequence`] takes
    /// so as not to look again. One lookup instead of a check of the name's bytes and then
    /// the lookup: most publishes go to a topic that exists, and on the native port the
    /// check was about 100 instructions of a 1,400-instruction message (callgrind, 1:1).
    /// `None` for a new name or a `$` topic: the caller checks the name as before.
    /// `names`: whether `bytes` are a topic name or a Redis channel name (which is its own
    /// topic only if plain, see [`crate::protocol::resp_channel`]).
    #[inline]
    pub fn publishable<'a>(
        &self,
        bytes: &'a [u8],
        names: PublishedNames,
    ) -> Option<(&'a str, TopicSlot)> {
        let table = &self.topics;
        let index = table
            .entries
            .find_bucket_index(table.hash(bytes), |entry| {
                entry.publishable_as(bytes, names)
            })?;
        // SAFETY: `bytes` equal the bytes of a `str` key, so they are valid UTF-8: the lookup
        // found an entry only where `publishable_as` compared them equal (which it must keep
        // doing for this to hold).
        let name = unsafe { std::str::from_utf8_unchecked(bytes) };
        Some((name, table.slot(index, bytes)))
    }

    /// A lookup for the connection holding `hint` found its topic at `slot` (just now, in
    /// this generation of the table). The sketch is made from the name in the bucket, not
    /// from what the caller looked up, so a held hint always describes its own bucket; it
    /// is made only on the second lookup in a row to find this bucket, which is rare, so
    /// reading the name there costs nothing a message.
    #[inline(always)]
    pub fn note_found(&self, hint: &mut TopicHint, slot: TopicSlot) {
        if slot.index != hint.last_index {
            hint.held = None;
            hint.last_index = slot.index;
            return;
        }
        hint.held = (slot.generation == self.topics.generation)
            .then(|| self.topics.entries.get_bucket(slot.index))
            .flatten()
            .map(|entry| (slot, NameSketch::of(entry.name.as_bytes())));
    }

    /// [`OwnedTopics::publishable`] at `hint`, where the same connection's last publish
    /// found its topic: most publishers send to one topic again and again, and checking the
    /// hint is cheaper than hashing the name and probing (about 70 instructions of a
    /// 1,300-instruction message, callgrind). `None` when the hint does not hold `bytes`.
    #[inline(always)]
    pub fn publishable_at<'a>(
        &self,
        bytes: &'a [u8],
        names: PublishedNames,
        hint: &TopicHint,
    ) -> Option<(&'a str, TopicSlot)> {
        let (slot, sketch) = hint.held?;
        let table = &self.topics;
        if slot.generation != table.generation || sketch != NameSketch::of(bytes) {
            return None;
        }
        // The sketch is the whole name up to 16 bytes; a longer one is compared in full.
        // Either way the entry must still be publishable under these rules.
        let entry = table.entries.get_bucket(slot.index)?;
        let long = bytes.len() > NameSketch::EXACT_BYTES;
        if !entry.allows(names) || (long && entry.name.as_bytes() != bytes) {
            return None;
        }
        // SAFETY: `bytes` equal the bytes of this `str` key: compared above, or, up to 16
        // bytes, their sketch equals the sketch `note_found` made of this very key, in this
        // generation of the table (so the key is unchanged since).
        let name = unsafe { std::str::from_utf8_unchecked(bytes) };
        Some((name, slot))
    }

    /// The topic a publish goes to: at `slot` if the caller found it there, else by one
    /// lookup, which makes it if it is new (the key allocated only then). On every publish.
    #[inline]
    fn get_or_create(
        &mut self,
        topic: &str,
        slot: Option<TopicSlot>,
        creator: Option<Creator>,
        now_ns: u64,
    ) -> Result<&mut OwnedTopic, ErrorCode> {
        let slot = match slot {
            Some(slot) if self.topics.holds(slot, topic) => slot,
            _ => {
                let hash = self.topics.hash(topic.as_bytes());
                match self.topics.slot_of(hash, topic.as_bytes()) {
                    Some(slot) => slot,
                    None => self.create_by_use(hash, topic, creator, now_ns)?,
                }
            }
        };
        // Always there: just found, made, or checked above.
        self.topics.at_mut(slot).ok_or(ErrorCode::Internal)
    }

    /// Makes a topic on its first use (a publish, a subscription), unless that is refused:
    /// a full table with nothing to reclaim, auto-creation off, the creator's share used up.
    #[cold]
    fn create_by_use(
        &mut self,
        hash: u64,
        topic: &str,
        creator: Option<Creator>,
        now_ns: u64,
    ) -> Result<TopicSlot, ErrorCode> {
        // Reclaiming removes only other topics, so `hash` still finds no `topic` after it.
        if self.topics.len() >= self.topics_max && self.reclaim_under_pressure(now_ns) == 0 {
            return Err(ErrorCode::TooManyTopics);
        }
        let brokers_own = topic.starts_with('$') || topic.starts_with(INBOX_PREFIX);
        if !self.auto_create && !brokers_own {
            return Err(ErrorCode::TopicNotFound);
        }
        let creator = creator.filter(|_| !brokers_own);
        if let Some(creator) = creator {
            let made = self.creations.get(&creator).copied().unwrap_or(0);
            if made as usize >= self.creations_max {
                self.creations_refused += 1;
                return Err(ErrorCode::TooManyTopics);
            }
            *self.creations.entry(creator).or_insert(0) += 1;
        }
        let last_seq = self.deleted.take(topic);
        let limits = replay_limits_for(topic, self.replay_limits);
        let mut owned = OwnedTopic::new(self.shards, limits, last_seq);
        owned.creator = creator;
        Ok(self.topics.insert_new(hash, topic, owned))
    }

    /// The replay limits a topic created by first use gets.
    pub fn default_replay_limits(&self) -> ReplayLimits {
        self.replay_limits
    }

    /// Creates a topic on request (CREATE_TOPIC), with its own replay limits.
    pub fn create(
        &mut self,
        topic: &str,
        replay_limits: ReplayLimits,
    ) -> Result<TopicPosition, ErrorCode> {
        if self.topics.contains_key(topic) {
            return Err(ErrorCode::TopicExists);
        }
        if self.topics.len() >= self.topics_max || self.created_len >= self.created_max {
            return Err(ErrorCode::TooManyTopics);
        }
        self.created_len += 1;
        let last_seq = self.deleted.take(topic);
        let mut owned = OwnedTopic::new(self.shards, replay_limits, last_seq);
        owned.explicit = true;
        let position = owned.position();
        let hash = self.topics.hash(topic.as_bytes());
        self.topics.insert_new(hash, topic, owned);
        Ok(position)
    }

    /// Turns presence events on for a topic just created.
    pub fn set_presence(&mut self, topic: &str, presence: bool) {
        if let Some(owned) = self.topics.get_mut(topic) {
            owned.presence = presence;
        }
    }

    /// Deletes a topic with its retained messages and consumers (DELETE_TOPIC).
    pub fn delete(&mut self, topic: &str) -> Result<(), ErrorCode> {
        let owned = self.topics.remove(topic).ok_or(ErrorCode::TopicNotFound)?;
        forget_creation(&mut self.creations, owned.creator);
        self.deleted
            .remember(topic, owned.last_seq, self.topics_max);
        self.consumers_len -= owned.consumers.len();
        self.created_len -= usize::from(owned.explicit);
        self.consumer_topics.remove(topic);
        Ok(())
    }

    /// Counts a subscription from `shard` and gathers what it asked to replay. Live messages
    /// for it are those sequenced after this call, so replay and live meet with no gap and no
    /// duplicate.
    pub fn add_subscriber(
        &mut self,
        topic: &str,
        (shard, creator): (ShardId, Option<Creator>),
        start: Start,
        now_ns: u64,
    ) -> Result<Subscribed, Refusal> {
        let owned = self.get_or_create(topic, None, creator, now_ns)?;
        owned.check_start(start)?;
        owned.exact_subscribers_by_shard[shard.index()] += 1;
        owned.exact_mask |= shard.bit();
        owned.exact_total += 1;
        let mut replay = Replay::default();
        if start != Start::New {
            let plan = owned.replay.plan(start, now_ns);
            replay.missed = plan.missed;
            replay.messages = owned
                .replay
                .range(plan.first_seq, usize::MAX)
                .map(|(_, message)| message.clone())
                .collect();
        }
        Ok(Subscribed {
            position: owned.position(),
            replay,
            presence: owned.presence,
        })
    }

    /// Attaches a durable consumer or group member, creating the consumer on first use at
    /// the requested start, and starts delivering to it.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_consumer(
        &mut self,
        topic: &str,
        request: &ConsumerRequest,
        shard: ShardId,
        start: Start,
        now_ns: u64,
        backoff_max_ns: u64,
        out: &mut Vec<ConsumerAction>,
    ) -> Result<Subscribed, Refusal> {
        if !self.consumer_topics.contains(topic) {
            self.consumer_topics.insert(topic.into());
        }
        let at_limit = self.consumers_len >= self.consumers_max;
        let owned = self.get_or_create(topic, None, None, now_ns)?;
        owned.check_start(start)?;
        let member = Member {
            shard,
            subscriber: request.subscriber,
        };
        let mut created = false;
        let consumer = match owned.consumers.get_mut(&*request.name) {
            // The first subscription fixes what the consumer is; a later one that asks for
            // something else would silently get the wrong guarantee.
            Some(consumer)
                if consumer.is_group != request.is_group
                    || consumer.takes_acks() != request.acks.is_some() =>
            {
                return Err(ErrorCode::ConsumerInUse.into());
            }
            Some(consumer) => consumer,
            None if at_limit => return Err(ErrorCode::TooManyConsumers.into()),
            None => {
                created = true;
                // The consumer starts where it asked; what is already evicted there is
                // reported as a gap by its first pump.
                let plan = owned.replay.plan(start, now_ns);
                let first_seq = plan.first_seq.saturating_sub(plan.missed).max(1);
                owned.consumers.insert(
                    request.name.clone(),
                    Consumer::new(request.is_group, first_seq, request.acks, backoff_max_ns),
                );
                owned
                    .consumers
                    .get_mut(&*request.name)
                    .expect("just inserted")
            }
        };
        let attached = consumer.attach(member, now_ns, out);
        if attached.is_ok() {
            consumer.pump(&owned.replay, None, now_ns, out);
        }
        let position = owned.position();
        let presence = owned.presence;
        if created {
            self.consumers_len += 1;
        }
        attached.map_err(Refusal::from).map(|()| Subscribed {
            position,
            replay: Replay::default(),
            presence,
        })
    }

    /// Makes sure `topic` has the per-topic consumer of an at-least-once pattern group, with
    /// the group's members, before a message of the topic is sequenced. A new one starts at
    /// the next message: a group gets what is published after it joined. Request/reply
    /// inboxes are answers for one requester, not work for a group, and get none.
    pub fn ensure_group_consumer(
        &mut self,
        topic: &str,
        group: AckedGroup<'_>,
        now_ns: u64,
        backoff_max_ns: u64,
    ) -> Result<(), ErrorCode> {
        if topic.starts_with(INBOX_PREFIX)
            || self
                .topics
                .get(topic)
                .is_some_and(|owned| owned.consumers.contains_key(group.consumer_key))
        {
            return Ok(());
        }
        if self.consumers_len >= self.consumers_max {
            return Err(ErrorCode::TooManyConsumers);
        }
        let owned = self.get_or_create(topic, None, None, now_ns)?;
        let mut consumer =
            Consumer::new(true, owned.last_seq + 1, Some(group.acks), backoff_max_ns);
        consumer.made_for_pattern = true;
        for &member in group.members {
            // A group's attach never answers with actions: nothing is in flight yet.
            let attached = consumer.attach(member, now_ns, &mut Vec::new());
            debug_assert!(attached.is_ok(), "a group admits every member");
        }
        owned.consumers.insert(group.consumer_key.into(), consumer);
        self.consumers_len += 1;
        if !self.consumer_topics.contains(topic) {
            self.consumer_topics.insert(topic.into());
        }
        Ok(())
    }

    /// Whether every consumer of the group on a topic here was made with `acks`: a member
    /// asking for other settings must not join them.
    pub fn group_consumers_accept(
        &self,
        (pattern, consumer_key): (&str, &str),
        acks: Option<AckSettings>,
    ) -> bool {
        self.consumer_topics
            .iter()
            .filter(|topic| pattern_matches(pattern, topic))
            .filter_map(|topic| self.topics.get(topic)?.consumers.get(consumer_key))
            .all(|consumer| consumer.settings() == acks)
    }

    /// Applies a pattern group's join (`joining`) or leave to the group's consumer on every
    /// topic here that matches `pattern`. A leaving member's unacknowledged messages go to the
    /// others; a member that joins starts getting the next messages.
    pub fn change_group_members(
        &mut self,
        (pattern, consumer_key): (&str, &str),
        member: Member,
        joining: bool,
        now_ns: u64,
        out: &mut Vec<(Box<str>, ConsumerAction)>,
    ) {
        let mut actions = Vec::new();
        for topic in &self.consumer_topics {
            if !pattern_matches(pattern, topic) {
                continue;
            }
            let Some(owned) = self.topics.get_mut(topic) else {
                continue;
            };
            let Some(consumer) = owned.consumers.get_mut(consumer_key) else {
                continue;
            };
            if joining {
                let attached = consumer.attach(member, now_ns, &mut actions);
                debug_assert!(attached.is_ok(), "a group admits every member");
            } else {
                consumer.detach(member, now_ns, &mut actions);
            }
            consumer.pump(&owned.replay, None, now_ns, &mut actions);
            out.extend(actions.drain(..).map(|action| (topic.clone(), action)));
        }
    }

    pub fn detach_consumer(
        &mut self,
        topic: &str,
        name: &str,
        leaving: Member,
        now_ns: u64,
        out: &mut Vec<ConsumerAction>,
    ) {
        if let Some(owned) = self.topics.get_mut(topic) {
            if let Some(consumer) = owned.consumers.get_mut(name) {
                consumer.detach(leaving, now_ns, out);
                consumer.pump(&owned.replay, None, now_ns, out);
            }
        }
    }

    /// Applies an ack; returns when the acked message was last delivered (an ack or a
    /// cumulative ack of a message in flight; not a nack), for its round trip.
    pub fn ack_consumer(
        &mut self,
        (topic, name): (&str, &str),
        acker: Member,
        ack: (u64, AckKind),
        now_ns: u64,
        out: &mut Vec<ConsumerAction>,
    ) -> Option<u64> {
        let owned = self.topics.get_mut(topic)?;
        let consumer = owned.consumers.get_mut(name)?;
        let delivered_ns = match ack.1 {
            AckKind::Nack => None,
            AckKind::Single | AckKind::Cumulative => consumer.delivered_ns(ack.0),
        };
        consumer.ack(acker, ack, now_ns, out);
        consumer.pump(&owned.replay, None, now_ns, out);
        delivered_ns
    }

    /// Redeliveries and dead letters that are due, and consumers idle past `consumer_ttl_ns`
    /// removed, as are pattern groups' consumers with nothing to remember on a topic idle for
    /// `topic_idle_ns`. Returns the earliest deadline still pending.
    pub fn consumer_timers(
        &mut self,
        now_ns: u64,
        (consumer_ttl_ns, topic_idle_ns): (u64, u64),
        out: &mut Vec<(Box<str>, ConsumerAction)>,
    ) -> Option<u64> {
        let mut next_deadline_ns: Option<u64> = None;
        let mut actions = Vec::new();
        let topics = &mut self.topics;
        let consumers_len = &mut self.consumers_len;
        self.consumer_topics.retain(|topic| {
            let Some(owned) = topics.get_mut(topic) else {
                return false;
            };
            owned.consumers.retain(|_, consumer| {
                consumer.on_timer(now_ns, &mut actions);
                consumer.pump(&owned.replay, None, now_ns, &mut actions);
                if let Some(deadline) = consumer.next_deadline_ns() {
                    next_deadline_ns = Some(next_deadline_ns.map_or(deadline, |d| d.min(deadline)));
                }
                let forgettable = consumer.made_for_pattern
                    && consumer.next_seq > owned.last_seq
                    && consumer.in_flight() == 0
                    && now_ns.saturating_sub(owned.last_timestamp_ns) >= topic_idle_ns;
                let keep = !forgettable
                    && consumer
                        .detached_since_ns
                        .is_none_or(|since| now_ns.saturating_sub(since) < consumer_ttl_ns);
                if !keep {
                    *consumers_len -= 1;
                }
                keep
            });
            out.extend(actions.drain(..).map(|action| (topic.clone(), action)));
            !owned.consumers.is_empty()
        });
        next_deadline_ns
    }

    /// Forgets topics nobody uses: no exact subscriber, no consumer, and nothing published for
    /// `idle_ns` (request/reply inboxes at once), so one-off topics do not use up
    /// `--topics-max`. A topic published to again starts afresh, with a new epoch. Returns how
    /// many were removed.
    pub fn reclaim_idle(&mut self, now_ns: u64, idle_ns: u64) -> usize {
        let before = self.topics.len();
        let creations = &mut self.creations;
        self.topics.retain(|name, owned| {
            let unused = !owned.explicit && owned.exact_mask == 0 && owned.consumers.is_empty();
            let idle = now_ns.saturating_sub(owned.last_timestamp_ns) >= idle_ns;
            let reclaim = unused && (idle || name.starts_with(INBOX_PREFIX));
            if reclaim {
                forget_creation(creations, owned.creator);
            }
            !reclaim
        });
        before - self.topics.len()
    }

    /// Makes room in a full table: reclaims the oldest unused topics (no subscriber, no
    /// consumer, not made by CREATE_TOPIC) that have seen no publish for
    /// [`PRESSURE_IDLE_NS`], a batch of `topics_max / PRESSURE_RECLAIM_DIVISOR` (at least one)
    /// at a time so the scan is paid once per batch of creations, not per creation. Without
    /// this, unused topics made by many clients would hold the table for `--topic-idle-ttl`
    /// (an hour) and refuse every new name meanwhile. A scan that finds nothing is not
    /// repeated for [`PRESSURE_IDLE_NS`]. Returns how many were removed.
    fn reclaim_under_pressure(&mut self, now_ns: u64) -> usize {
        if self
            .pressure_scan_after_ns
            .is_some_and(|after_ns| now_ns < after_ns)
        {
            return 0;
        }
        let mut candidates: Vec<(u64, &str)> = self
            .topics
            .iter()
            .filter(|(_, owned)| {
                !owned.explicit
                    && owned.exact_mask == 0
                    && owned.consumers.is_empty()
                    && now_ns.saturating_sub(owned.last_timestamp_ns) >= PRESSURE_IDLE_NS
            })
            .map(|(name, owned)| (owned.last_timestamp_ns, name))
            .collect();
        if candidates.is_empty() {
            self.pressure_scan_after_ns = Some(now_ns.saturating_add(PRESSURE_IDLE_NS));
            return 0;
        }
        self.pressure_scan_after_ns = None;
        let batch = (self.topics_max / PRESSURE_RECLAIM_DIVISOR)
            .max(1)
            .min(candidates.len());
        if batch < candidates.len() {
            candidates.select_nth_unstable(batch - 1);
        }
        let names: Vec<Box<str>> = candidates[..batch]
            .iter()
            .map(|(_, name)| (*name).into())
            .collect();
        for name in &names {
            if let Some(owned) = self.topics.remove(name) {
                forget_creation(&mut self.creations, owned.creator);
            }
        }
        self.reclaimed_under_pressure += names.len() as u64;
        names.len()
    }

    /// Topics reclaimed to make room in a full table, all told.
    pub fn reclaimed_under_pressure(&self) -> u64 {
        self.reclaimed_under_pressure
    }

    /// Forgets a request/reply inbox topic as soon as its one answer is out, unless someone
    /// subscribed to it exactly.
    // Inlined: asked after every publish, and almost never an inbox (a call cost 9).
    #[inline]
    pub fn reclaim_inbox(&mut self, topic: &str) {
        if topic.starts_with(INBOX_PREFIX) {
            self.reclaim_answered_inbox(topic);
        }
    }

    fn reclaim_answered_inbox(&mut self, topic: &str) {
        if self
            .topics
            .get(topic)
            .is_some_and(|owned| owned.exact_mask == 0 && owned.consumers.is_empty())
        {
            self.topics.remove(topic);
        }
    }

    /// Evicts messages past their age limit in every topic (idle topics too).
    pub fn evict_expired(&mut self, now_ns: u64) -> usize {
        self.topics
            .values_mut()
            .map(|owned| owned.replay.evict_expired(now_ns))
            .sum()
    }

    /// A subscription counted in incarnation `epoch` went away. If the topic was deleted
    /// meanwhile (and perhaps made again), there is nothing to uncount.
    pub fn remove_subscriber(&mut self, topic: &str, shard: ShardId, epoch: u64) {
        let Some(owned) = self
            .topics
            .get_mut(topic)
            .filter(|owned| owned.epoch == epoch)
        else {
            return;
        };
        let count = &mut owned.exact_subscribers_by_shard[shard.index()];
        debug_assert!(*count > 0, "more unsubscribes than subscribes");
        if *count > 0 {
            owned.exact_total -= 1;
        }
        *count = count.saturating_sub(1);
        if *count == 0 {
            owned.exact_mask &= !shard.bit();
        }
    }

    /// Stamps the message with the topic's next sequence number and publish time, retains it
    /// for replay, and finds the shards to deliver it to.
    ///
    /// Appends this shard's own exact subscriptions to the topic to `local_exact.1`, from
    /// the topic's copy of them (a `LocalExactCopy`).
    pub fn sequence(
        &mut self,
        message: &mut Message,
        (patterns, now_ns): (&Sublist<ShardId>, u64),
        consumer_actions: &mut Vec<ConsumerAction>,
        (creator, slot): (Option<Creator>, Option<TopicSlot>),
        local_exact: (&LocalSubscriptions, &mut Vec<Subscriber>),
    ) -> Result<Sequenced, ErrorCode> {
        let mut scratch = std::mem::take(&mut self.pattern_matches);
        let result = self
            .get_or_create(message.topic(), slot, creator, now_ns)
            .map(|owned| {
                owned.last_seq += 1;
                // The publish time is when the PUBLISH was read (never later than now, should
                // the clock have stepped back); the broker's own messages have none.
                let published_ns = match message.read_ns() {
                    0 => now_ns,
                    read_ns => read_ns.min(now_ns),
                };
                owned.last_timestamp_ns = owned.last_timestamp_ns.max(published_ns);
                message.stamp(owned.last_seq, owned.last_timestamp_ns);
                // Stamped above, so still only the owner's: its reference costs a store.
                let kept = message.clone_while_unique();
                owned.replay.push(
                    owned.last_seq,
                    owned.last_timestamp_ns,
                    message.frame_len(),
                    kept,
                    now_ns,
                );
                if let Some(next_evicted) = owned.replay.next_evicted() {
                    next_evicted.prefetch_for_release();
                }
                for consumer in owned.consumers.values_mut() {
                    consumer.pump(&owned.replay, Some(message), now_ns, consumer_actions);
                }
                let topic = message.topic();
                let (local, matches) = local_exact;
                local.exact_through(topic, &mut owned.local_exact, matches);
                if owned.pattern_generation != patterns.generation() {
                    scratch.clear();
                    patterns.match_into(topic, &mut scratch);
                    owned.pattern_mask = scratch.iter().fold(0, |mask, shard| mask | shard.bit());
                    owned.pattern_count = scratch.len() as u32;
                    owned.pattern_generation = patterns.generation();
                }
                Sequenced {
                    seq: owned.last_seq,
                    timestamp_ns: owned.last_timestamp_ns,
                    shard_mask: owned.exact_mask | owned.pattern_mask,
                    receivers: owned.exact_total + owned.pattern_count,
                    pressed: owned.pressed_until_ns > now_ns,
                }
            });
        self.pattern_matches = scratch;
        result
    }

    /// A subscriber of `topic` on another shard is past its stall watermark: publishers to
    /// it pause until `until_ns` (a topic gone since is left alone).
    pub fn press(&mut self, topic: &str, until_ns: u64) {
        if let Some(owned) = self.topics.get_mut(topic) {
            owned.pressed_until_ns = owned.pressed_until_ns.max(until_ns);
        }
    }

    /// Whether `topic` is pressed at `now_ns` (see [`OwnedTopics::press`]).
    pub fn is_pressed(&self, topic: &str, now_ns: u64) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|owned| owned.pressed_until_ns > now_ns)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &OwnedTopic)> {
        self.topics.iter()
    }
}

/// The subscriptions held by this shard's connections.
pub struct LocalSubscriptions {
    exact: AHashMap<Box<str>, Vec<Subscriber>>,
    /// Changes to `exact` so far, from 1: what an owned topic's [`LocalExactCopy`] is
    /// checked against.
    exact_generation: u64,
    patterns: Sublist<Subscriber>,
    /// Local subscriptions per pattern: the shard announces a pattern to the others on the
    /// first and withdraws it on the last.
    pattern_refs: AHashMap<Box<str>, u32>,
}

impl LocalSubscriptions {
    pub fn new(pattern_cache_entries_max: usize) -> Self {
        LocalSubscriptions {
            exact: AHashMap::new(),
            exact_generation: 1,
            patterns: Sublist::new(pattern_cache_entries_max),
            pattern_refs: AHashMap::new(),
        }
    }

    pub fn add_exact(&mut self, topic: &str, subscriber: Subscriber) {
        self.exact_generation += 1;
        match self.exact.get_mut(topic) {
            Some(list) => list.push(subscriber),
            None => {
                self.exact.insert(topic.into(), vec![subscriber]);
            }
        }
    }

    /// Every exact subscription to `topic`, removed (the topic was deleted).
    pub fn take_exact(&mut self, topic: &str) -> Vec<Subscriber> {
        self.exact_generation += 1;
        self.exact.remove(topic).unwrap_or_default()
    }

    pub fn remove_exact(&mut self, topic: &str, subscriber: Subscriber) -> bool {
        let Some(list) = self.exact.get_mut(topic) else {
            return false;
        };
        let Some(position) = list.iter().position(|s| *s == subscriber) else {
            return false;
        };
        list.swap_remove(position);
        if list.is_empty() {
            self.exact.remove(topic);
        }
        self.exact_generation += 1;
        true
    }

    /// Returns true when this is the shard's first subscription to `pattern`.
    pub fn add_pattern(&mut self, pattern: &str, subscriber: Subscriber) -> bool {
        self.patterns.insert(pattern, subscriber);
        let refs = self.pattern_refs.entry(pattern.into()).or_insert(0);
        *refs += 1;
        *refs == 1
    }

    /// Returns `Some(true)` when that was the shard's last subscription to `pattern`, `None`
    /// when the subscription was not there.
    pub fn remove_pattern(&mut self, pattern: &str, subscriber: Subscriber) -> Option<bool> {
        if !self.patterns.remove(pattern, subscriber) {
            return None;
        }
        let refs = self.pattern_refs.get_mut(pattern)?;
        *refs -= 1;
        if *refs == 0 {
            self.pattern_refs.remove(pattern);
            return Some(true);
        }
        Some(false)
    }

    /// Appends every local subscription matching `topic`: exact ones first, then patterns.
    /// A connection with several matching subscriptions appears once per subscription.
    pub fn matching(&mut self, topic: &str, out: &mut Vec<Subscriber>) {
        if let Some(list) = self.exact.get(topic) {
            out.extend_from_slice(list);
        }
        self.matching_patterns(topic, out);
    }

    /// Appends the local pattern subscriptions matching `topic`.
    // Inlined: once per publish, and usually there are none (a call cost 17 instructions).
    #[inline]
    pub fn matching_patterns(&mut self, topic: &str, out: &mut Vec<Subscriber>) {
        if !self.patterns.is_empty() {
            out.extend_from_slice(self.patterns.match_cached(topic));
        }
    }

    /// Appends the exact subscriptions to `topic` as `copy` holds them, taking the copy
    /// again first if they changed since.
    fn exact_through(&self, topic: &str, copy: &mut LocalExactCopy, out: &mut Vec<Subscriber>) {
        if copy.generation != self.exact_generation {
            copy.subscribers.clear();
            if let Some(list) = self.exact.get(topic) {
                copy.subscribers.extend_from_slice(list);
            }
            copy.generation = self.exact_generation;
        }
        out.extend_from_slice(&copy.subscribers);
    }

    /// The distinct patterns subscribed to here.
    pub fn pattern_names(&self) -> impl Iterator<Item = &str> {
        self.pattern_refs.keys().map(|name| &**name)
    }

    pub fn exact_topic_count(&self) -> usize {
        self.exact.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnectionId;

    fn subscriber(index: u32, sub_id: u32) -> Subscriber {
        Subscriber {
            connection: ConnectionId {
                index,
                generation: 0,
            },
            sub_id,
        }
    }

    const LIMITS: ReplayLimits = ReplayLimits {
        messages_max: 4,
        bytes_max: 1 << 20,
        ttl_ns: 0,
    };

    fn message(topic: &str) -> Message {
        Message::from_publish(&mut Vec::new(), topic, None, b"payload")
    }

    fn sequence(
        owned: &mut OwnedTopics,
        topic: &str,
        patterns: &Sublist<ShardId>,
        now_ns: u64,
    ) -> Result<Sequenced, ErrorCode> {
        let local = LocalSubscriptions::new(16);
        owned.sequence(
            &mut message(topic),
            (patterns, now_ns),
            &mut Vec::new(),
            (None, None),
            (&local, &mut Vec::new()),
        )
    }

    fn sequenced((seq, receivers): (u64, u32), shard_mask: u64) -> Result<Sequenced, ErrorCode> {
        Ok(Sequenced {
            seq,
            timestamp_ns: 100,
            shard_mask,
            receivers,
            pressed: false,
        })
    }

    fn sequence_at(
        owned: &mut OwnedTopics,
        topic: &str,
        slot: Option<TopicSlot>,
    ) -> Result<Sequenced, ErrorCode> {
        owned.sequence(
            &mut message(topic),
            (&Sublist::new(16), 100),
            &mut Vec::new(),
            (None, slot),
            (&LocalSubscriptions::new(16), &mut Vec::new()),
        )
    }

    #[test]
    fn only_names_a_client_may_publish_to_are_found_by_their_bytes() {
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        for name in ["orders.eu", "a--b", "$dlq.orders", "_inbox.x.1"] {
            sequence_at(&mut owned, name, None).unwrap();
        }
        let found =
            |bytes: &'static [u8], names| owned.publishable(bytes, names).map(|(name, _)| name);
        assert_eq!(
            found(b"orders.eu", PublishedNames::Topics),
            Some("orders.eu")
        );
        assert_eq!(
            found(b"orders.eu", PublishedNames::RedisChannels),
            Some("orders.eu")
        );
        assert_eq!(
            found(b"_inbox.x.1", PublishedNames::Topics),
            Some("_inbox.x.1")
        );
        // The broker's own topic is there, but a client's publish to it must be refused.
        assert_eq!(found(b"$dlq.orders", PublishedNames::Topics), None);
        // `a--b` is a topic name, but the Redis channel `a--b` maps to another topic.
        assert_eq!(found(b"a--b", PublishedNames::Topics), Some("a--b"));
        assert_eq!(found(b"a--b", PublishedNames::RedisChannels), None);
        // Unknown names, prefixes of known ones and bytes that are not UTF-8: not found.
        for unknown in [&b"orders"[..], b"orders.eu.x", b"", b"\xff\xfe"] {
            assert_eq!(found(unknown, PublishedNames::Topics), None, "{unknown:?}");
        }
    }

    #[test]
    fn a_slot_from_before_the_table_changed_is_not_used() {
        let mut owned = OwnedTopics::new(1, 1_000, LIMITS);
        sequence_at(&mut owned, "kept", None).unwrap();
        let (_, slot) = owned.publishable(b"kept", PublishedNames::Topics).unwrap();
        assert_eq!(sequence_at(&mut owned, "kept", Some(slot)).unwrap().seq, 2);
        // Growing the table moves every bucket; the old slot would name another topic's, or
        // none. The publish still goes to its own topic.
        for i in 0..200 {
            sequence_at(&mut owned, &format!("other.{i}"), None).unwrap();
        }
        assert_eq!(sequence_at(&mut owned, "kept", Some(slot)).unwrap().seq, 3);
        // The same after a removal, which frees a bucket a later topic may take.
        let (_, slot) = owned.publishable(b"kept", PublishedNames::Topics).unwrap();
        owned.delete("other.0").unwrap();
        sequence_at(&mut owned, "new", None).unwrap();
        assert_eq!(sequence_at(&mut owned, "kept", Some(slot)).unwrap().seq, 4);
        assert_eq!(
            owned.get("other.1").unwrap().last_seq,
            1,
            "no other topic moved on"
        );
        assert_eq!(owned.get("new").unwrap().last_seq, 1);
    }

    #[test]
    fn a_pressed_topic_marks_its_publishes_until_the_pressure_runs_out() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        assert!(!sequence(&mut owned, "t", &patterns, 100).unwrap().pressed);
        owned.press("t", 1_000);
        // A later word never shortens the pressure; a topic that does not exist is ignored.
        owned.press("t", 500);
        owned.press("absent", 1_000);
        assert!(owned.is_pressed("t", 999));
        assert!(sequence(&mut owned, "t", &patterns, 999).unwrap().pressed);
        assert!(!owned.is_pressed("t", 1_000));
        assert!(!sequence(&mut owned, "t", &patterns, 1_000).unwrap().pressed);
        assert!(!owned.is_pressed("absent", 0));
    }

    #[test]
    fn timestamps_never_go_back_along_a_topic() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 50)
                .unwrap()
                .timestamp_ns,
            50
        );
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 40)
                .unwrap()
                .timestamp_ns,
            50
        );
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 60)
                .unwrap()
                .timestamp_ns,
            60
        );
    }

    #[test]
    fn sequence_numbers_start_at_one_and_masks_follow_interest() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(4, 10, LIMITS);
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((1, 0), 0)
        );
        let epoch = owned
            .add_subscriber("a", (ShardId(2), None), Start::New, 0)
            .map(|s| s.position.epoch)
            .unwrap();
        owned
            .add_subscriber("a", (ShardId(2), None), Start::New, 0)
            .map(|s| s.position)
            .unwrap();
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((2, 2), 0b100)
        );
        owned.remove_subscriber("a", ShardId(2), epoch);
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((3, 1), 0b100)
        );
        // An unsubscribe from an older incarnation changes nothing.
        owned.remove_subscriber("a", ShardId(2), epoch ^ 1);
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((4, 1), 0b100)
        );
        owned.remove_subscriber("a", ShardId(2), epoch);
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((5, 0), 0)
        );
        // Deleted: gone with its count, and made again by the next publish, with a new epoch
        // and numbering that continues, so a late ack cannot name a new message.
        owned.delete("a").unwrap();
        assert_eq!(owned.delete("a"), Err(ErrorCode::TopicNotFound));
        owned.remove_subscriber("a", ShardId(2), epoch);
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((6, 0), 0)
        );
        assert_ne!(owned.get("a").unwrap().epoch, epoch);
        assert_eq!(
            owned
                .get("a")
                .unwrap()
                .replay
                .plan(Start::All, 100)
                .first_seq,
            6
        );
    }

    #[test]
    fn deleted_names_are_remembered_up_to_the_topic_limit() {
        let mut deleted = DeletedTopics::default();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            deleted.remember(name, 10 + i as u64, 2);
        }
        assert_eq!(deleted.take("a"), 0, "the oldest was forgotten");
        assert_eq!(deleted.take("b"), 11);
        assert_eq!(deleted.take("b"), 0, "taken once");
        assert_eq!(deleted.take("c"), 12);
        for i in 0..100 {
            deleted.remember("d", i, 2);
            deleted.take("d");
        }
        assert!(deleted.order.len() <= 4, "{}", deleted.order.len());
    }

    #[test]
    fn a_topics_copy_of_its_local_subscribers_follows_every_change() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        let mut local = LocalSubscriptions::new(16);
        let publish = |owned: &mut OwnedTopics, local: &LocalSubscriptions| {
            let mut matches = Vec::new();
            owned
                .sequence(
                    &mut message("t"),
                    (&patterns, 100),
                    &mut Vec::new(),
                    (None, None),
                    (local, &mut matches),
                )
                .unwrap();
            matches
        };
        assert_eq!(publish(&mut owned, &local), []);
        local.add_exact("t", subscriber(1, 1));
        local.add_exact("other", subscriber(2, 1));
        assert_eq!(publish(&mut owned, &local), [subscriber(1, 1)]);
        local.add_exact("t", subscriber(3, 7));
        assert_eq!(
            publish(&mut owned, &local),
            [subscriber(1, 1), subscriber(3, 7)]
        );
        assert!(local.remove_exact("t", subscriber(1, 1)));
        assert_eq!(publish(&mut owned, &local), [subscriber(3, 7)]);
        assert_eq!(local.take_exact("t"), [subscriber(3, 7)]);
        assert_eq!(publish(&mut owned, &local), []);
    }

    #[test]
    fn pattern_interest_is_recomputed_when_the_pattern_table_changes() {
        let mut patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(4, 10, LIMITS);
        assert_eq!(
            sequence(&mut owned, "a.b", &patterns, 100),
            sequenced((1, 0), 0)
        );
        patterns.insert("a.*", ShardId(3));
        assert_eq!(
            sequence(&mut owned, "a.b", &patterns, 100),
            sequenced((2, 1), 0b1000)
        );
        patterns.remove("a.*", ShardId(3));
        assert_eq!(
            sequence(&mut owned, "a.b", &patterns, 100),
            sequenced((3, 0), 0)
        );
    }

    #[test]
    fn each_connection_makes_its_quota_of_topics_and_gets_it_back_as_they_go() {
        let patterns = Sublist::new(0);
        let mut owned = OwnedTopics::new(2, 100, LIMITS);
        owned.set_creations_per_connection_max(2);
        let greedy = Some((
            ShardId(1),
            crate::ids::ConnectionId {
                index: 3,
                generation: 0,
            },
        ));
        let other = Some((
            ShardId(0),
            crate::ids::ConnectionId {
                index: 3,
                generation: 0,
            },
        ));
        let publish = |owned: &mut OwnedTopics, topic: &str, creator| {
            owned
                .sequence(
                    &mut message(topic),
                    (&patterns, 100),
                    &mut Vec::new(),
                    (creator, None),
                    (&LocalSubscriptions::new(16), &mut Vec::new()),
                )
                .map(|sequenced| sequenced.seq)
        };
        assert_eq!(publish(&mut owned, "a", greedy), Ok(1));
        assert_eq!(publish(&mut owned, "b", greedy), Ok(1));
        assert_eq!(
            publish(&mut owned, "c", greedy),
            Err(ErrorCode::TooManyTopics)
        );
        assert_eq!(
            owned
                .add_subscriber("c", (ShardId(1), greedy), Start::New, 100)
                .map(drop),
            Err(ErrorCode::TooManyTopics.into())
        );
        // Topics that exist are used freely, the broker's own are never counted, and another
        // connection has its own quota.
        assert_eq!(publish(&mut owned, "a", greedy), Ok(2));
        assert_eq!(publish(&mut owned, "_inbox.x.1", greedy), Ok(1));
        assert_eq!(publish(&mut owned, "c", other), Ok(1));
        // A topic that goes gives its creator room again.
        owned.delete("a").unwrap();
        assert_eq!(publish(&mut owned, "d", greedy), Ok(1));
        assert_eq!(owned.reclaim_idle(10_000, 1), 4);
        assert!(owned.creations.is_empty());
    }

    #[test]
    fn topic_limit_refuses_new_topics_but_serves_existing_ones() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 1, LIMITS);
        assert!(sequence(&mut owned, "a", &patterns, 100).is_ok());
        assert_eq!(
            sequence(&mut owned, "b", &patterns, 100),
            Err(ErrorCode::TooManyTopics)
        );
        assert_eq!(
            owned
                .add_subscriber("b", (ShardId(0), None), Start::New, 0)
                .map(|s| s.position),
            Err(ErrorCode::TooManyTopics.into())
        );
        assert_eq!(
            sequence(&mut owned, "a", &patterns, 100),
            sequenced((2, 0), 0)
        );
    }

    #[test]
    fn a_full_table_reclaims_its_oldest_unused_topics_to_make_room() {
        const SECOND: u64 = 1_000_000_000;
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 3, LIMITS);
        sequence(&mut owned, "kept", &patterns, 100).unwrap();
        owned
            .add_subscriber("kept", (ShardId(0), None), Start::New, 100)
            .unwrap();
        sequence(&mut owned, "old", &patterns, 200).unwrap();
        sequence(&mut owned, "recent", &patterns, SECOND).unwrap();
        // Every unused topic was published to less than a second ago: nothing to reclaim.
        assert_eq!(
            sequence(&mut owned, "new", &patterns, SECOND + 100),
            Err(ErrorCode::TooManyTopics)
        );
        // Later, the oldest unused one goes (not the subscribed one, not the recent one).
        assert!(sequence(&mut owned, "new", &patterns, 3 * SECOND).is_ok());
        assert!(owned.get("old").is_none());
        assert!(owned.get("kept").is_some() && owned.get("recent").is_some());
        assert_eq!(owned.reclaimed_under_pressure(), 1);
    }

    #[test]
    fn a_subscriber_starting_in_the_past_gets_the_retained_messages_and_the_gap() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        for _ in 0..6 {
            sequence(&mut owned, "a", &patterns, 100).unwrap();
        }
        let subscribed = owned
            .add_subscriber("a", (ShardId(0), None), Start::LastN(5), 100)
            .unwrap();
        assert_eq!(subscribed.position.last_seq, 6);
        assert_eq!(
            subscribed.replay.missed, 1,
            "seq 2 was evicted (4 retained)"
        );
        let seqs: Vec<u64> = subscribed
            .replay
            .messages
            .iter()
            .map(Message::seq)
            .collect();
        assert_eq!(seqs, [3, 4, 5, 6]);
        let live = owned
            .add_subscriber("a", (ShardId(0), None), Start::New, 100)
            .unwrap();
        assert!(live.replay.messages.is_empty());
        assert_eq!(live.replay.missed, 0);
    }

    #[test]
    fn idle_unused_topics_are_reclaimed_and_inboxes_at_once() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        sequence(&mut owned, "kept", &patterns, 100).unwrap();
        sequence(&mut owned, "idle", &patterns, 100).unwrap();
        owned
            .add_subscriber("kept", (ShardId(0), None), Start::New, 100)
            .unwrap();
        sequence(&mut owned, "_inbox.abc.1", &patterns, 100).unwrap();
        owned.reclaim_inbox("_inbox.abc.1");
        assert!(owned.get("_inbox.abc.1").is_none());
        assert_eq!(owned.reclaim_idle(150, 100), 0, "not idle long enough");
        assert_eq!(owned.reclaim_idle(200, 100), 1);
        assert!(owned.get("idle").is_none());
        assert!(owned.get("kept").is_some(), "it has a subscriber");
        // A reclaimed topic starts afresh.
        assert_eq!(sequence(&mut owned, "idle", &patterns, 300).unwrap().seq, 1);
    }

    #[test]
    fn created_topics_keep_their_own_limits_and_are_never_reclaimed_as_idle() {
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 2, LIMITS);
        let own_limits = ReplayLimits {
            messages_max: 2,
            bytes_max: 1 << 20,
            ttl_ns: 50,
        };
        let position = owned.create("made", own_limits).unwrap();
        assert_eq!(position.last_seq, 0);
        assert_eq!(owned.create("made", LIMITS), Err(ErrorCode::TopicExists));
        for now_ns in [100, 110, 120] {
            sequence(&mut owned, "made", &patterns, now_ns).unwrap();
        }
        let replay = &owned.get("made").unwrap().replay;
        assert_eq!(replay.limits(), own_limits);
        assert_eq!(replay.len(), 2, "its own count limit, not the default 4");
        assert_eq!(owned.evict_expired(165), 1, "its own age limit");
        // Auto-created topics count against the same limit, and exist already.
        sequence(&mut owned, "used", &patterns, 100).unwrap();
        assert_eq!(owned.create("used", LIMITS), Err(ErrorCode::TopicExists));
        assert_eq!(owned.create("third", LIMITS), Err(ErrorCode::TooManyTopics));
        let mut capped = OwnedTopics::new(1, 10, LIMITS);
        capped.set_created_max(1);
        capped.create("one", LIMITS).unwrap();
        assert_eq!(capped.create("two", LIMITS), Err(ErrorCode::TooManyTopics));
        sequence(&mut capped, "used", &patterns, 100).unwrap();
        assert_eq!(owned.reclaim_idle(1_000_000, 100), 1);
        assert!(owned.get("used").is_none());
        assert!(owned.get("made").is_some(), "created explicitly, so kept");
    }

    #[test]
    fn a_pattern_groups_consumers_start_at_the_next_message_and_follow_membership() {
        use crate::protocol::subscribe_options::AckSettings;
        use crate::shard::consumers::test_member;
        let patterns = Sublist::new(16);
        let mut owned = OwnedTopics::new(1, 10, LIMITS);
        sequence(&mut owned, "jobs.a", &patterns, 100).unwrap();
        let members = [test_member(1), test_member(2)];
        let group = || AckedGroup {
            consumer_key: "g@jobs.*",
            acks: AckSettings::default(),
            members: &members,
        };
        owned
            .ensure_group_consumer("jobs.a", group(), 100, 1)
            .unwrap();
        owned
            .ensure_group_consumer("jobs.a", group(), 100, 1)
            .unwrap();
        let mut actions = Vec::new();
        owned
            .sequence(
                &mut message("jobs.a"),
                (&patterns, 110),
                &mut actions,
                (None, None),
                (&LocalSubscriptions::new(16), &mut Vec::new()),
            )
            .unwrap();
        let delivered: Vec<u64> = actions
            .iter()
            .map(|action| match action {
                ConsumerAction::Deliver { message, .. } => message.seq(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delivered, [2], "seq 1 came before the group's consumer");
        // The member holding seq 2 leaves: it goes to the other one at once.
        let ConsumerAction::Deliver { member: holder, .. } = actions[0] else {
            unreachable!()
        };
        let mut due = Vec::new();
        owned.change_group_members(("jobs.*", "g@jobs.*"), holder, false, 120, &mut due);
        assert_eq!(due.len(), 1);
        assert!(
            matches!(&due[0], (topic, ConsumerAction::Deliver { member, message })
            if &**topic == "jobs.a" && *member != holder && message.seq() == 2)
        );
        // Topics the pattern does not match are left alone.
        due.clear();
        owned.change_group_members(("other.*", "g@jobs.*"), holder, true, 130, &mut due);
        assert!(due.is_empty());
        owned.set_consumers_max(1);
        assert_eq!(
            owned.ensure_group_consumer("jobs.b", group(), 100, 1),
            Err(ErrorCode::TooManyConsumers)
        );
    }

    #[test]
    fn local_matching_counts_each_subscription() {
        let mut local = LocalSubscriptions::new(16);
        local.add_exact("a.b", subscriber(1, 1));
        assert!(local.add_pattern("a.*", subscriber(1, 2)));
        assert!(!local.add_pattern("a.*", subscriber(2, 1)));
        let mut out = Vec::new();
        local.matching("a.b", &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(local.remove_pattern("a.*", subscriber(1, 2)), Some(false));
        assert_eq!(local.remove_pattern("a.*", subscriber(2, 1)), Some(true));
        assert_eq!(local.remove_pattern("a.*", subscriber(2, 1)), None);
        assert!(local.remove_exact("a.b", subscriber(1, 1)));
        assert!(!local.remove_exact("a.b", subscriber(1, 1)));
        out.clear();
        local.matching("a.b", &mut out);
        assert!(out.is_empty());
        assert_eq!(local.exact_topic_count(), 0);
    }

    /// Property tests of the publish path's slots and name lookups (from a review).
    mod slots {
        use super::*;
        use crate::protocol::resp_channel::channel_to_topic;
        use crate::protocol::topic::{parse_publish_topic, plain_unescaped_topic};
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            "a",
            "b.c",
            "a--b",
            "$dlq.a",
            "$sys.presence.a",
            "_inbox.x.1",
            "user--3a42",
            "x-y",
            "-a",
            "A_b.C-d",
            "zz",
        ];

        fn name(i: usize) -> String {
            if i < NAMES.len() {
                NAMES[i].to_string()
            } else {
                format!("filler.{i}")
            }
        }

        #[derive(Clone, Debug)]
        enum Mutation {
            Create(usize),
            Delete(usize),
            ReclaimIdle,
            ReclaimInbox(usize),
            Publish(usize, u64),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                (0usize..120).prop_map(Mutation::Create),
                (0usize..120).prop_map(Mutation::Delete),
                Just(Mutation::ReclaimIdle),
                (0usize..120).prop_map(Mutation::ReclaimInbox),
                (0usize..120, 0u64..4).prop_map(|(i, t)| Mutation::Publish(i, t)),
            ]
        }

        fn publish(
            owned: &mut OwnedTopics,
            topic: &str,
            slot: Option<TopicSlot>,
            now_ns: u64,
        ) -> Result<Sequenced, ErrorCode> {
            owned.sequence(
                &mut message(topic),
                (&Sublist::new(16), now_ns),
                &mut Vec::new(),
                (
                    Some((
                        ShardId(0),
                        ConnectionId {
                            index: 1,
                            generation: 0,
                        },
                    )),
                    slot,
                ),
                (&LocalSubscriptions::new(16), &mut Vec::new()),
            )
        }

        fn seqs(owned: &OwnedTopics) -> std::collections::BTreeMap<String, u64> {
            owned
                .iter()
                .map(|(n, t)| (n.to_string(), t.last_seq))
                .collect()
        }

        fn apply(owned: &mut OwnedTopics, m: &Mutation, now: &mut u64) {
            match *m {
                Mutation::Create(i) => {
                    let _ = owned.create(&name(i), LIMITS);
                }
                Mutation::Delete(i) => {
                    let _ = owned.delete(&name(i));
                }
                Mutation::ReclaimIdle => {
                    owned.reclaim_idle(*now, PRESSURE_IDLE_NS);
                }
                Mutation::ReclaimInbox(i) => owned.reclaim_inbox(&name(i)),
                Mutation::Publish(i, t) => {
                    *now += t * PRESSURE_IDLE_NS;
                    let _ = publish(owned, &name(i), None, *now);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn a_slot_never_reaches_another_topic(
                topics_max in 4usize..200,
                steps in proptest::collection::vec(
                    (0usize..120, proptest::collection::vec(mutation(), 0..6)), 1..60),
            ) {
                let mut owned = OwnedTopics::new(1, topics_max, LIMITS);
                let mut now = 1u64;
                for (target, between) in steps {
                    let target = name(target);
                    let slot = owned
                        .publishable(target.as_bytes(), PublishedNames::Topics)
                        .map(|(found, slot)| {
                            assert_eq!(found, target);
                            slot
                        });
                    for m in &between {
                        apply(&mut owned, m, &mut now);
                    }
                    // What the release build does not check: a slot of the current
                    // generation sits on its own topic.
                    if let Some(slot) = slot {
                        if slot.generation == owned.topics.generation {
                            let at = owned.topics.entries.get_bucket(slot.index);
                            prop_assert_eq!(at.map(|e| e.name.as_str()), Some(target.as_str()));
                        }
                    }
                    let before = seqs(&owned);
                    let result = publish(&mut owned, &target, slot, now);
                    let after = seqs(&owned);
                    for (n, seq) in &before {
                        if *n != target {
                            let now = after.get(n).copied().unwrap_or(*seq);
                            prop_assert_eq!(now, *seq, "{} moved", n);
                        }
                    }
                    if let Ok(s) = result {
                        prop_assert_eq!(after.get(&target).copied(), Some(s.seq));
                        if let Some(prev) = before.get(&target) {
                            prop_assert_eq!(s.seq, prev + 1);
                        }
                    }
                }
            }

            #[test]
            fn publishable_agrees_with_the_checks(
                names in proptest::collection::vec("[a-c.\\-$_:*>~\u{e9}]{0,6}", 0..20),
                probe in "[a-c.\\-$_:*>~\u{e9}]{0,6}",
            ) {
                let mut owned = OwnedTopics::new(1, 1000, LIMITS);
                for n in &names {
                    if parse_subscription_exact(n) {
                        let _ = publish(&mut owned, n, None, 1);
                    }
                }
                let held = owned.get(&probe).is_some();
                let as_topic = owned.publishable(probe.as_bytes(), PublishedNames::Topics);
                prop_assert_eq!(
                    as_topic.map(|(n, _)| n),
                    if held { parse_publish_topic(probe.as_bytes()).ok() } else { None }
                );
                let as_channel = owned.publishable(probe.as_bytes(), PublishedNames::RedisChannels);
                if let Some((n, _)) = as_channel {
                    prop_assert_eq!(plain_unescaped_topic(probe.as_bytes()), Some(n));
                    let mapped = channel_to_topic(probe.as_bytes()).unwrap();
                    prop_assert_eq!(mapped.as_ref(), n);
                } else if held {
                    prop_assert!(plain_unescaped_topic(probe.as_bytes()).is_none());
                }
            }
        }

        /// Names for the connection hint: two long ones with the same length and the same
        /// first and last eight bytes (one sketch), short ones that differ in one byte, one a
        /// Redis channel does not name as it is, and one a client may not publish to.
        const HINT_NAMES: &[&str] = &[
            "orders.eu.AAA.created",
            "orders.eu.BBB.created",
            "orders.eu.AAAA.created",
            "t.1",
            "t.2",
            "a--b",
            "$dlq.t.1",
            "x",
        ];

        #[derive(Clone, Debug)]
        enum HintStep {
            /// Looks a name up as a client's publish would, through the hint.
            Look(usize, bool),
            Publish(usize),
            Delete(usize),
            Other(Mutation),
        }

        fn hint_step() -> impl Strategy<Value = HintStep> {
            let names = 0..HINT_NAMES.len();
            prop_oneof![
                4 => (names.clone(), any::<bool>()).prop_map(|(i, r)| HintStep::Look(i, r)),
                2 => names.clone().prop_map(HintStep::Publish),
                1 => names.prop_map(HintStep::Delete),
                1 => mutation().prop_map(HintStep::Other),
            ]
        }

        /// What the publish path does with a connection's hint (`Shard::look_up_topic`).
        fn look_up<'a>(
            owned: &OwnedTopics,
            hint: &mut TopicHint,
            bytes: &'a [u8],
            names: PublishedNames,
        ) -> (Option<(&'a str, TopicSlot)>, bool) {
            if let Some(found) = owned.publishable_at(bytes, names, hint) {
                return (Some(found), true);
            }
            let found = owned.publishable(bytes, names);
            match found {
                Some((_, slot)) => owned.note_found(hint, slot),
                None => hint.not_found(),
            }
            (found, false)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            #[test]
            fn a_hint_finds_what_the_lookup_finds(
                steps in proptest::collection::vec(hint_step(), 1..80),
            ) {
                let mut owned = OwnedTopics::new(1, 50, LIMITS);
                let mut hint = TopicHint::default();
                let mut now = 1u64;
                for step in steps {
                    match step {
                        HintStep::Look(i, redis) => {
                            let names = if redis {
                                PublishedNames::RedisChannels
                            } else {
                                PublishedNames::Topics
                            };
                            let bytes = HINT_NAMES[i].as_bytes();
                            let expected = owned.publishable(bytes, names);
                            let (found, _) = look_up(&owned, &mut hint, bytes, names);
                            prop_assert_eq!(found, expected, "{}", HINT_NAMES[i]);
                        }
                        HintStep::Publish(i) => {
                            let _ = publish(&mut owned, HINT_NAMES[i], None, now);
                        }
                        HintStep::Delete(i) => {
                            let _ = owned.delete(HINT_NAMES[i]);
                        }
                        HintStep::Other(m) => apply(&mut owned, &m, &mut now),
                    }
                }
            }

            #[test]
            fn a_sketch_tells_names_up_to_16_bytes_apart(
                a in proptest::collection::vec(0u8..3, 0..20),
                at in any::<proptest::sample::Index>(),
                change in 0u8..4,
            ) {
                // `b` is `a` with one byte changed, or one byte shorter or longer: the
                // near misses a sketch that skips a byte would take for equal.
                let mut b = a.clone();
                match change {
                    0 if !b.is_empty() => {
                        let i = at.index(b.len());
                        b[i] = (b[i] + 1) % 3;
                    }
                    1 => b.push(0),
                    2 if !b.is_empty() => {
                        b.pop();
                    }
                    _ => {}
                }
                let same = NameSketch::of(&a) == NameSketch::of(&b);
                if a == b {
                    prop_assert!(same);
                } else if a.len() <= NameSketch::EXACT_BYTES && b.len() <= NameSketch::EXACT_BYTES {
                    prop_assert!(!same, "{:?} and {:?}", a, b);
                }
            }
        }

        #[test]
        fn a_publishers_hint_skips_the_lookup_only_for_its_own_topic() {
            let mut owned = OwnedTopics::new(1, 50, LIMITS);
            for name in HINT_NAMES {
                publish(&mut owned, name, None, 1).unwrap();
            }
            let topics = PublishedNames::Topics;
            let mut hint = TopicHint::default();
            let [a, b, ..] = HINT_NAMES else {
                unreachable!()
            };
            // The second lookup in a row of the same topic makes the hint; the third uses it.
            assert!(!look_up(&owned, &mut hint, a.as_bytes(), topics).1);
            assert!(!look_up(&owned, &mut hint, a.as_bytes(), topics).1);
            let (found, hinted) = look_up(&owned, &mut hint, a.as_bytes(), topics);
            assert!(hinted);
            assert_eq!(found.map(|(name, _)| name), Some(*a));
            // Same length, same ends, another middle: compared in full, not taken for `a`.
            assert_eq!(owned.publishable_at(b.as_bytes(), topics, &hint), None);
            // Short names are told apart by the sketch alone.
            for _ in 0..2 {
                look_up(&owned, &mut hint, b"t.1", topics);
            }
            assert!(owned.publishable_at(b"t.1", topics, &hint).is_some());
            assert_eq!(owned.publishable_at(b"t.2", topics, &hint), None);
            // The rules of the names still apply: `a--b` is a topic, not a plain channel.
            for _ in 0..2 {
                look_up(&owned, &mut hint, b"a--b", topics);
            }
            assert!(owned.publishable_at(b"a--b", topics, &hint).is_some());
            let channels = PublishedNames::RedisChannels;
            assert_eq!(owned.publishable_at(b"a--b", channels, &hint), None);
            // Any change to the table ends the hint.
            owned.delete("x").unwrap();
            assert_eq!(owned.publishable_at(b"a--b", topics, &hint), None);
        }

        fn parse_subscription_exact(n: &str) -> bool {
            matches!(
                crate::protocol::topic::parse_subscription(n.as_bytes()),
                Ok((_, crate::protocol::topic::SubjectKind::Exact))
            )
        }
    }
}

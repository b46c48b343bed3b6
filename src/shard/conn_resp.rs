//! The Redis connection kind: RESP2 and RESP3 on the RESP listener (`--resp-listen`), so
//! redis-cli, redis-benchmark and every Redis client's pub/sub work against corebus.
//!
//! Requests are framed by [`crate::protocol::resp::RequestDecoder`] and checked against
//! Redis's command table ([`crate::protocol::resp_commands::resolve`]); pub/sub commands go to
//! the same protocol-neutral handlers as native and WebSocket ones, with channels mapped to
//! topics by [`crate::protocol::resp_channel`] and glob patterns carried as glob subjects
//! ([`crate::protocol::topic::GLOB_MARK`]).
//!
//! Redis answers every request in order, but the core answers some later than others (a
//! publish to a topic another shard owns, a subscribe waiting for every shard, `INFO`
//! gathering stats over the rings). So each request takes a slot in the session's
//! reply queue and its reply leaves only when every earlier one has: pipelining keeps its
//! order whatever shard each request touched. Replies also stay behind deliveries already
//! queued, as in Redis, so an `unsubscribe` confirmation is the last thing said about a
//! channel.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;

use ahash::AHashMap;

use crate::error::{CloseReason, ErrorCode};
use crate::ids::ConnectionId;
use crate::mesh::message::ReplyTarget;
use crate::message::Message;
use crate::protocol::glob::glob_match;
use crate::protocol::resp::{
    self, encode_array_header, encode_bulk, encode_error, encode_integer, encode_map_header,
    encode_null, encode_set_header, encode_verbatim, HelloInfo, Request, RequestDecoder,
    RequestLimits, RespVersion, SubscriptionKind,
};
use crate::protocol::resp_channel::{channel_to_topic, topic_to_channel};
use crate::protocol::resp_commands::{
    self, errors, ClientKind, CommandId, KillFilter, KillRequest, Refusal, COMMANDS,
};
use crate::protocol::subscribe_options::SubscribeOptions;
use crate::protocol::topic;

use super::commands::{Publish, PublishTopic, TopicLookup};
use super::conn_ws::{EventCache, EventFormat};
use super::connection::ReadBuffer;
use super::stats::ShardStats;
use super::topics::PublishedNames;
use super::wire::{throttled_reason, Answer};
use super::{Flow, Shard};

/// Replies waiting behind an unanswered request, past which the connection is not read
/// until answers come back (a client pipelining faster than the rings answer).
const REPLIES_WAITING_MAX: usize = 64 * 1024;

/// Request ids run over `1..=REQUEST_ID_SPAN` (0 means the connection itself).
const REQUEST_ID_SPAN: u32 = 1 << 31;

/// The three kinds of Redis subscription, each with its own confirmation words and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Channel,
    Pattern,
    ShardChannel,
}

impl Family {
    fn subscribe_word(self) -> SubscriptionKind {
        match self {
            Family::Channel => SubscriptionKind::Subscribe,
            Family::Pattern => SubscriptionKind::PSubscribe,
            Family::ShardChannel => SubscriptionKind::SSubscribe,
        }
    }

    fn unsubscribe_word(self) -> SubscriptionKind {
        match self {
            Family::Channel => SubscriptionKind::Unsubscribe,
            Family::Pattern => SubscriptionKind::PUnsubscribe,
            Family::ShardChannel => SubscriptionKind::SUnsubscribe,
        }
    }
}

/// What a waiting slot will say once the core answers.
enum Awaiting {
    /// `:N`, the receivers.
    Publish,
    /// A (un)subscribe confirmation, counted when the request was read (as Redis counts
    /// it). `subscribing` names a subscribe's id, forgotten if the core refuses it.
    Confirmation {
        word: SubscriptionKind,
        name: Box<[u8]>,
        count: usize,
        subscribing: Option<u32>,
        /// The version in force when the request was read (a `HELLO` or `RESET` read
        /// after it, while it waits, does not change how it is worded).
        version: RespVersion,
    },
    /// `CLIENT KILL`, answered once every shard has closed its matching clients.
    Kill {
        /// Shards that answered (this one included).
        answered: usize,
        killed: u64,
        /// The address form: `+OK`, or an error for none (the filter form says how many).
        address_form: bool,
    },
    /// Stats from every shard.
    Gather {
        query: GatherQuery,
        parts: Vec<ShardStats>,
    },
}

/// What a gather was for.
#[derive(Clone, Debug)]
enum GatherQuery {
    Info { section: Option<Vec<u8>> },
    Channels { pattern: Option<Vec<u8>> },
    NumSub { channels: Vec<Vec<u8>> },
    NumPat,
    ClientList,
}

enum Slot {
    Ready(Vec<u8>),
    Waiting(Awaiting),
    /// A message that came while a reply was still waiting: it goes out after the replies
    /// to every request read before it, as in Redis, where commands run in turn (a
    /// channel's messages never ahead of its `subscribe` confirmation, nor a message array
    /// where a RESP2 client reads the answer to its `INFO`).
    Delivery(Vec<u8>, LinedUp),
}

/// What a `Slot::Delivery` holds: a message counts as delivered or undelivered in the
/// stats; a notice (the broker ended a subscription) is not a message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LinedUp {
    Message,
    Notice,
}

/// Replies in request order. The front slot's request id is `head_id`; ids follow in order.
#[derive(Default)]
struct ReplyQueue {
    slots: VecDeque<Slot>,
    head_id: u32,
    /// Bytes of the `Slot::Delivery`s in line, counted against `--outbound-bytes-max`.
    delivery_bytes: usize,
    /// Messages among the `Slot::Delivery`s in line.
    messages_in_line: u64,
    /// Messages moved from the line to the output, and given up with it (a slow-consumer
    /// cut), since [`RespSession::take_line_counts`]: the shard's `delivered` and
    /// `undelivered` counters would miss them otherwise, since they leave as reply bytes.
    messages_sent: u64,
    messages_abandoned: u64,
}

impl ReplyQueue {
    fn next_id(id: u32) -> u32 {
        id % REQUEST_ID_SPAN + 1
    }

    fn index_of(&self, request_id: u32) -> Option<usize> {
        if request_id == 0 || request_id > REQUEST_ID_SPAN {
            return None;
        }
        let distance = (u64::from(request_id) + u64::from(REQUEST_ID_SPAN)
            - u64::from(self.head_id))
            % u64::from(REQUEST_ID_SPAN);
        let index = distance as usize;
        (index < self.slots.len()).then_some(index)
    }

    /// Takes a slot for a request the core will answer; returns its request id.
    fn reserve(&mut self, awaiting: Awaiting) -> u32 {
        if self.slots.is_empty() {
            self.head_id = Self::next_id(self.head_id);
        }
        // `next_id` applied once per slot already waiting, in one step.
        let behind = (self.slots.len() % REQUEST_ID_SPAN as usize) as u64;
        let id = (u64::from(self.head_id) - 1 + behind) % u64::from(REQUEST_ID_SPAN) + 1;
        self.slots.push_back(Slot::Waiting(awaiting));
        id as u32
    }

    /// Gives back the last slot taken (its request was postponed, not made).
    fn unreserve_last(&mut self) {
        self.slots.pop_back();
    }

    /// A reply known at once: straight out if nothing is waiting, else in line.
    fn complete_now(&mut self, bytes: &[u8], output: &mut Vec<u8>) {
        if self.slots.is_empty() {
            output.extend_from_slice(bytes);
        } else {
            self.slots.push_back(Slot::Ready(bytes.to_vec()));
        }
    }

    fn waiting_mut(&mut self, request_id: u32) -> Option<&mut Awaiting> {
        let index = self.index_of(request_id)?;
        match &mut self.slots[index] {
            Slot::Waiting(awaiting) => Some(awaiting),
            Slot::Ready(_) | Slot::Delivery(..) => None,
        }
    }

    /// Puts a message in line behind the replies not yet sent, unless that would take the
    /// connection past `bytes_max` with the `queued_elsewhere` bytes it has queued already.
    fn line_up_delivery(
        &mut self,
        frame: Vec<u8>,
        (queued_elsewhere, bytes_max): (usize, usize),
        before_last: bool,
    ) -> bool {
        if queued_elsewhere + self.delivery_bytes + frame.len() > bytes_max {
            return false;
        }
        self.delivery_bytes += frame.len();
        self.messages_in_line += 1;
        // With `before_last`, ahead of the last slot when that is a reply already made
        // (QUIT's `+OK`): a message for a request read before QUIT goes out before the
        // connection's last word. Nothing refers to that slot by its id, so moving it up
        // one is safe.
        match self.slots.back() {
            Some(Slot::Ready(_)) if before_last => {
                self.slots.insert(
                    self.slots.len() - 1,
                    Slot::Delivery(frame, LinedUp::Message),
                );
            }
            _ => self
                .slots
                .push_back(Slot::Delivery(frame, LinedUp::Message)),
        }
        true
    }

    /// Gives up every slot (the connection is closing): answers that come later for them
    /// find no slot, and later requests get fresh ids.
    fn abandon(&mut self) {
        if let Some(last) = self.slots.len().checked_sub(1) {
            let last_id =
                (u64::from(self.head_id) - 1 + last as u64) % u64::from(REQUEST_ID_SPAN) + 1;
            self.head_id = last_id as u32;
        }
        self.slots.clear();
        self.delivery_bytes = 0;
        self.messages_abandoned += std::mem::take(&mut self.messages_in_line);
    }

    fn take_waiting(&mut self, request_id: u32) -> Option<Awaiting> {
        let index = self.index_of(request_id)?;
        match std::mem::replace(&mut self.slots[index], Slot::Ready(Vec::new())) {
            Slot::Waiting(awaiting) => Some(awaiting),
            ready => {
                self.slots[index] = ready;
                None
            }
        }
    }

    /// Whether `request_id` is the oldest waiting request and a message (or notice) is lined
    /// up right behind it.
    fn lined_up_behind_head(&self, request_id: u32) -> bool {
        self.head_id == request_id && matches!(self.slots.get(1), Some(Slot::Delivery(..)))
    }

    /// Fills the oldest slot, a `PUBLISH`'s, and moves its reply behind the messages lined up
    /// right after it. They came while it was the newest request in flight, its own message
    /// to this connection among them (a RESP3 client subscribed to the channel it publishes
    /// on), and Redis, which runs a command whole, sends the messages a `PUBLISH` produced
    /// before its reply. Only for the oldest: a later request's messages may sit behind an
    /// earlier reply that was answered out of turn, and must not overtake it. Only ready
    /// replies and messages change places, so every waiting slot keeps its request id.
    fn fill_head_behind_lined_up(&mut self, bytes: Vec<u8>) {
        // Waiting, or the empty reply `take_waiting` left in its place.
        if matches!(self.slots.front(), None | Some(Slot::Delivery(..))) {
            return;
        }
        let mut index = 0;
        self.slots[index] = Slot::Ready(bytes);
        while matches!(self.slots.get(index + 1), Some(Slot::Delivery(..))) {
            self.slots.swap(index, index + 1);
            index += 1;
        }
    }

    fn fill(&mut self, request_id: u32, bytes: Vec<u8>) {
        if let Some(index) = self.index_of(request_id) {
            if !matches!(self.slots[index], Slot::Delivery(..)) {
                self.slots[index] = Slot::Ready(bytes);
            }
        }
    }

    /// Moves every ready reply (and message) at the front to `output`.
    fn drain_ready(&mut self, output: &mut Vec<u8>) {
        loop {
            match self.slots.front() {
                Some(Slot::Ready(bytes)) => output.extend_from_slice(bytes),
                Some(Slot::Delivery(bytes, lined_up)) => {
                    output.extend_from_slice(bytes);
                    self.delivery_bytes -= bytes.len();
                    if *lined_up == LinedUp::Message {
                        self.messages_in_line -= 1;
                        self.messages_sent += 1;
                    }
                }
                _ => return,
            }
            self.pop_front();
        }
    }

    /// Drops the front slot, its reply written; the next slot's id becomes the head.
    fn pop_front(&mut self) {
        self.slots.pop_front();
        if !self.slots.is_empty() {
            self.head_id = Self::next_id(self.head_id);
        }
    }
}

/// One subscription of the session.
struct RespSubscription {
    family: Family,
    /// The channel or pattern as the client wrote it.
    name: Box<[u8]>,
}

pub struct RespSession {
    version: RespVersion,
    decoder: RequestDecoder,
    /// Broker-wide unique (`CLIENT ID`).
    pub client_id: u64,
    name: Vec<u8>,
    lib_name: Vec<u8>,
    lib_ver: Vec<u8>,
    by_name: [AHashMap<Box<[u8]>, u32>; 3],
    subscriptions: AHashMap<u32, RespSubscription>,
    next_sub_id: u32,
    replies: ReplyQueue,
    /// Replies ready to go, in order, for the connection to queue behind its deliveries.
    output: Vec<u8>,
    /// Arguments of the request at the head of the read buffer already carried out: a
    /// multi-channel SUBSCRIBE interrupted by a full ring resumes there.
    resume_at: usize,
    /// QUIT or a fatal protocol error: close once the replies before it are out.
    closing: bool,
    /// A stats gather (`INFO`, `PUBSUB`, `CLIENT LIST`) is out. One at a time: each builds
    /// every shard's stats, so a client pipelining thousands without reading the answers
    /// held that many snapshots at once (an audit: 2.4 MB of `INFO` took the broker from
    /// 21 MB to 864 MB). The next is not read until this one is answered.
    gathering: bool,
    created: std::time::Instant,
    last_command: &'static str,
}

impl RespSession {
    pub fn new(client_id: u64, message_bytes_max: usize) -> Self {
        RespSession {
            version: RespVersion::Resp2,
            decoder: RequestDecoder::new(RequestLimits::for_message_bytes_max(message_bytes_max)),
            client_id,
            name: Vec::new(),
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            by_name: Default::default(),
            subscriptions: AHashMap::new(),
            next_sub_id: 1,
            replies: ReplyQueue::default(),
            output: Vec::new(),
            resume_at: 1,
            closing: false,
            gathering: false,
            created: std::time::Instant::now(),
            last_command: "NULL",
        }
    }

    /// `CLIENT SETNAME`'s (or `HELLO ... SETNAME`'s) name, empty if none.
    pub(super) fn client_name(&self) -> &[u8] {
        &self.name
    }

    fn names(&self, family: Family) -> &AHashMap<Box<[u8]>, u32> {
        &self.by_name[family as usize]
    }

    fn names_mut(&mut self, family: Family) -> &mut AHashMap<Box<[u8]>, u32> {
        &mut self.by_name[family as usize]
    }

    /// What Redis reports after a (un)subscribe: channels and patterns for the classic
    /// commands, shard channels for the `S` ones.
    fn count(&self, family: Family) -> usize {
        match family {
            Family::ShardChannel => self.names(Family::ShardChannel).len(),
            _ => self.names(Family::Channel).len() + self.names(Family::Pattern).len(),
        }
    }

    fn subscription_total(&self) -> usize {
        self.subscriptions.len()
    }

    /// A RESP2 connection with a subscription may run only the subscription commands,
    /// `PING`, `QUIT` and `RESET`.
    fn resp2_subscribed(&self) -> bool {
        self.version == RespVersion::Resp2 && self.subscription_total() > 0
    }

    fn remember(&mut self, family: Family, name: &[u8]) -> u32 {
        let sub_id = self.next_sub_id;
        self.next_sub_id = self.next_sub_id.wrapping_add(1).max(1);
        self.names_mut(family).insert(name.into(), sub_id);
        self.subscriptions.insert(
            sub_id,
            RespSubscription {
                family,
                name: name.into(),
            },
        );
        sub_id
    }

    fn forget(&mut self, sub_id: u32) -> Option<RespSubscription> {
        let subscription = self.subscriptions.remove(&sub_id)?;
        self.names_mut(subscription.family)
            .remove(&subscription.name);
        Some(subscription)
    }

    /// Gives up the slot of request `request_id` if it is the only one and a PUBLISH's, with
    /// no ready output ahead of it: its answer may then be worded straight into the
    /// connection's write buffer (see `Connection::answer`).
    pub fn take_sole_publish_slot(&mut self, request_id: u32) -> bool {
        let sole_publish = self.output.is_empty()
            && self.replies.slots.len() == 1
            && self.replies.head_id == request_id
            && matches!(
                self.replies.slots.front(),
                Some(Slot::Waiting(Awaiting::Publish))
            );
        if sole_publish {
            self.replies.pop_front();
        }
        sole_publish
    }

    /// Words the core's answer to request `request_id` (0: the connection itself, which is
    /// about to close) and moves what became ready to the output.
    pub fn encode_answer(&mut self, request_id: u32, answer: Answer<'_>) {
        if request_id == 0 {
            // Redis just closes at shutdown; a slow-consumer cut is worth saying first. The
            // connection is closing: what waits in line (replies owed, messages lined up
            // behind them) would never go out, and must not hold the error back.
            if let Answer::Refused { code, reason } = answer {
                if code != ErrorCode::ShuttingDown {
                    self.replies.drain_ready(&mut self.output);
                    self.replies.abandon();
                    encode_error(&mut self.output, reason.as_bytes());
                }
            }
            return;
        }
        // The common case, a pipelined PUBLISH answered in turn, worded straight out without
        // taking its slot apart.
        if let (Answer::Published(published), Some(Slot::Waiting(Awaiting::Publish))) =
            (&answer, self.replies.slots.front())
        {
            if self.replies.head_id == request_id && !self.publish_goes_behind_lined_up(request_id)
            {
                encode_integer(&mut self.output, i64::from(published.receivers));
                self.replies.pop_front();
                self.replies.drain_ready(&mut self.output);
                return;
            }
        }
        let Some(awaiting) = self.replies.take_waiting(request_id) else {
            return;
        };
        // `take_waiting` leaves the slot in place, so what lies behind it is unchanged.
        let behind_lined_up =
            matches!(awaiting, Awaiting::Publish) && self.publish_goes_behind_lined_up(request_id);
        // The oldest waiting request (the usual case: pipelined publishes answered in turn)
        // is worded straight into the output; a later one waits in its slot.
        let at_head = self.replies.index_of(request_id) == Some(0) && !behind_lined_up;
        let mut slot_bytes = Vec::new();
        let bytes = if at_head {
            &mut self.output
        } else {
            &mut slot_bytes
        };
        let mut refused_sub = None;
        match (awaiting, answer) {
            (_, Answer::Throttled { retry_after_ms }) => {
                encode_error(bytes, throttled_reason(retry_after_ms).as_bytes())
            }
            (
                Awaiting::Confirmation {
                    subscribing: Some(sub_id),
                    ..
                },
                Answer::Refused { code, reason },
            ) if code != ErrorCode::UnknownSubscription => {
                refused_sub = Some(sub_id);
                encode_error(bytes, reason.as_bytes());
            }
            // Done, or a subscribe overtaken by its own UNSUBSCRIBE (pipelined; the core then
            // says "unknown subscription"): to the client it happened, and Redis would
            // confirm it before the unsubscribe.
            (
                Awaiting::Confirmation {
                    word,
                    name,
                    count,
                    version,
                    ..
                },
                _,
            ) => resp::encode_subscription(bytes, version, word, Some(&name), count),
            (_, Answer::Refused { reason, .. }) => encode_error(bytes, reason.as_bytes()),
            (Awaiting::Publish, Answer::Published(published)) => {
                encode_integer(bytes, i64::from(published.receivers))
            }
            (Awaiting::Publish, _) => encode_integer(bytes, 0),
            // Answered by `answer_kill`, never through here.
            (Awaiting::Kill { .. }, _) => encode_error(bytes, b"internal error"),
            (Awaiting::Gather { .. }, _) => encode_error(bytes, b"internal error"),
        }
        if let Some(sub_id) = refused_sub {
            self.forget(sub_id);
        }
        if at_head {
            self.replies.pop_front();
        } else if behind_lined_up {
            self.replies.fill_head_behind_lined_up(slot_bytes);
        } else {
            self.replies.fill(request_id, slot_bytes);
        }
        self.replies.drain_ready(&mut self.output);
    }

    /// The bytes of a delivery to subscription `sub_id`, or `None` for a channel subscription
    /// that is the message's first (the common case), whose delivery is queued as the
    /// message itself and worded as a `message` frame straight into the write buffer when
    /// staged ([`stage_message`]): no buffer to allocate, fill, share and free per message.
    /// `message` frames of a message with more channel subscribers than one, and `smessage`
    /// frames, are shared per message through `cache`; `pmessage` frames name the pattern, so
    /// each is its own.
    pub fn encoded_delivery(
        &self,
        cache: &mut EventCache,
        sub_id: u32,
        message: &Message,
    ) -> Option<Arc<[u8]>> {
        // Most connections hold channel subscriptions only: no lookup (a cache miss per
        // delivery when they hold many) to learn what every delivery is then.
        if self.names(Family::Pattern).is_empty() && self.names(Family::ShardChannel).is_empty() {
            return cache.resp_message_frame(self.version, message);
        }
        let version = self.version;
        match self.subscriptions.get(&sub_id) {
            Some(RespSubscription {
                family: Family::Pattern,
                name,
            }) => {
                let channel = topic_to_channel(message.topic());
                let mut frame = Vec::with_capacity(message.payload().len() + name.len() + 64);
                resp::encode_pmessage(&mut frame, version, name, &channel, message.payload());
                Some(frame.into())
            }
            Some(RespSubscription {
                family: Family::ShardChannel,
                ..
            }) => Some(cache.frame(EventFormat::SMessage { version }, message, 0)),
            _ => cache.resp_message_frame(version, message),
        }
    }

    /// Whether the answer to `request_id`, if a `PUBLISH`'s, goes behind the messages lined up
    /// right after it (see [`ReplyQueue::fill_head_behind_lined_up`]). RESP3 only: that is
    /// where a connection may publish to a channel it subscribes to, while a RESP2 message
    /// lined up there belongs to a subscription the client already left, and would take the
    /// place of the reply it waits for.
    fn publish_goes_behind_lined_up(&self, request_id: u32) -> bool {
        self.version == RespVersion::Resp3 && self.replies.lined_up_behind_head(request_id)
    }

    pub fn version(&self) -> RespVersion {
        self.version
    }

    /// Whether a request read earlier is still unanswered, so replies are in line.
    pub fn replies_in_line(&self) -> bool {
        !self.replies.slots.is_empty()
    }

    /// QUIT or a fatal error: the connection closes once the replies before it are out.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// Bytes of the messages (and notices) lined up behind a waiting reply.
    pub fn lined_up_bytes(&self) -> usize {
        self.replies.delivery_bytes
    }

    /// A notice about a subscription (the broker ended it) goes behind the messages lined up
    /// for it. Never refused: one per subscription.
    pub fn line_up_notice(&mut self, notice: Vec<u8>) {
        self.replies.delivery_bytes += notice.len();
        self.replies
            .slots
            .push_back(Slot::Delivery(notice, LinedUp::Notice));
    }

    /// Messages that left the line since the last call: (written to the output, given up
    /// by a slow-consumer cut).
    pub fn take_line_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.replies.messages_sent),
            std::mem::take(&mut self.replies.messages_abandoned),
        )
    }

    /// Messages still lined up behind a waiting reply (lost if the connection closes now).
    pub fn messages_in_line(&self) -> u64 {
        self.replies.messages_in_line
    }

    /// A delivery that comes while replies are in line: worded now and put behind them.
    /// False, with nothing queued, when that would take the connection past `bytes_max`
    /// with the `queued_elsewhere` bytes it has queued already (the caller applies the
    /// slow-consumer policy).
    pub fn line_up_delivery(
        &mut self,
        cache: &mut EventCache,
        (sub_id, message): (u32, &Message),
        queued_elsewhere: usize,
        bytes_max: usize,
    ) -> bool {
        let mut frame = Vec::new();
        match self.encoded_delivery(cache, sub_id, message) {
            Some(encoded) => frame.extend_from_slice(&encoded),
            None => stage_message(&mut frame, self.version, message),
        }
        self.replies
            .line_up_delivery(frame, (queued_elsewhere, bytes_max), self.closing)
    }

    #[cfg(test)]
    pub fn set_version_for_tests(&mut self, version: RespVersion) {
        self.version = version;
    }

    /// The broker ended the subscription (its topic was deleted): Redis has no such notice,
    /// so the client is told it was unsubscribed, with its new count.
    pub fn encode_ended(&mut self, sub_id: u32, out: &mut Vec<u8>) {
        if let Some(subscription) = self.forget(sub_id) {
            let count = self.count(subscription.family);
            resp::encode_subscription(
                out,
                self.version,
                subscription.family.unsubscribe_word(),
                Some(&subscription.name),
                count,
            );
        }
    }

    /// Replies ready to be queued, in order; [`RespSession::clear_output`] once queued (the
    /// buffer keeps its capacity: a pipelining client refills it for every batch).
    pub fn output(&self) -> Option<&[u8]> {
        (!self.output.is_empty()).then_some(self.output.as_slice())
    }

    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    /// Whether the connection should close now: QUIT was answered and nothing waits.
    pub fn done(&self) -> bool {
        self.closing && self.replies.slots.is_empty()
    }
}

/// Encodes a delivery as a `message` frame to share (see [`EventCache::resp_message_frame`]).
pub fn encode_message_event(version: RespVersion, message: &Message) -> Vec<u8> {
    let channel = topic_to_channel(message.topic());
    let payload = message.payload();
    let mut frame = Vec::with_capacity(resp::message_len(channel.len(), payload.len()));
    resp::encode_message(&mut frame, version, &channel, payload);
    frame
}

/// Encodes a delivery as an `smessage` frame (see [`EventCache`]).
pub fn encode_smessage_event(version: RespVersion, message: &Message) -> Vec<u8> {
    let channel = topic_to_channel(message.topic());
    let payload = message.payload();
    let mut frame = Vec::with_capacity(resp::message_len(channel.len(), payload.len()) + 1);
    resp::encode_smessage(&mut frame, version, &channel, payload);
    frame
}

/// The most a `message` frame adds to its channel and payload: `*3`, `$7 message`, two
/// lengths of up to 20 digits and five line ends.
const MESSAGE_FRAME_OVERHEAD_MAX: usize = 4 + 13 + 2 * (1 + 20 + 2) + 2 * 2;

/// Writes a channel subscription's delivery as a `message` frame (see
/// [`RespSession::encoded_delivery`]).
#[inline]
pub fn stage_message(out: &mut Vec<u8>, version: RespVersion, message: &Message) {
    let channel = topic_to_channel(message.topic());
    let payload = message.payload();
    // A bound rather than the exact length, which costs three decimal-length loops.
    out.reserve(channel.len() + payload.len() + MESSAGE_FRAME_OVERHEAD_MAX);
    resp::encode_message(out, version, &channel, payload);
}

impl Shard {
    /// Decodes and runs every complete request in the connection's read buffer.
    pub(super) fn process_resp(&mut self, id: ConnectionId) -> Flow {
        let text_bytes_max = self.text_bytes_max();
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if conn.is_closing() {
            return Flow::Stop;
        }
        let super::wire::Wire::Resp(session) = &mut conn.wire else {
            return Flow::Stop;
        };
        if session.closing {
            return Flow::Stop;
        }
        if session.replies.slots.len() >= REPLIES_WAITING_MAX {
            conn.paused_for_own_requests = true;
            return Flow::Blocked;
        }
        // Buffer and decoder are taken out so handlers may borrow the whole shard while the
        // request borrows the bytes; both go back below.
        let mut decoder = std::mem::replace(
            &mut session.decoder,
            RequestDecoder::new(RequestLimits::default()),
        );
        let mut buffer = std::mem::replace(&mut conn.read, ReadBuffer::new(0));
        let flow = loop {
            let (ran, len) = match self.resp_fast_publish(id, buffer.filled(), &mut decoder) {
                Some(done) => done,
                None => match decoder.decode(buffer.filled()) {
                    Ok(None) => {
                        if buffer.filled().len() >= text_bytes_max {
                            // The decoder's own limits allow more (a million small
                            // arguments), but no request may be larger than the read buffer
                            // may grow.
                            self.resp_fatal(
                                id,
                                b"Protocol error: request is larger than the message size limit \
                                  allows",
                            );
                            break Flow::Stop;
                        }
                        break Flow::Continue;
                    }
                    Ok(Some((request, len))) => {
                        if request.is_empty() {
                            buffer.consume(len);
                            continue;
                        }
                        (self.run_resp_request(id, &request), len)
                    }
                    Err(error) => {
                        self.counters.protocol_errors += 1;
                        let mut text = Vec::new();
                        error.encode(&mut text);
                        self.resp_fatal_encoded(id, &text);
                        break Flow::Stop;
                    }
                },
            };
            match ran {
                Flow::Continue => {
                    buffer.consume(len);
                    if let Some(conn) = self.connection_mut(id) {
                        if let super::wire::Wire::Resp(session) = &mut conn.wire {
                            session.resume_at = 1;
                            if session.closing {
                                break Flow::Stop;
                            }
                            if session.replies.slots.len() >= REPLIES_WAITING_MAX {
                                conn.paused_for_own_requests = true;
                                break Flow::Blocked;
                            }
                        }
                    }
                }
                Flow::Blocked => break Flow::Blocked,
                Flow::Stop => {
                    buffer.consume(len);
                    break Flow::Stop;
                }
            }
            if self.connection_mut(id).is_none_or(|conn| conn.is_closing()) {
                break Flow::Stop;
            }
        };
        if let Some(conn) = self.connection_mut(id) {
            conn.read = buffer;
            if let super::wire::Wire::Resp(session) = &mut conn.wire {
                session.decoder = decoder;
            }
        }
        self.resp_flush(id);
        flow
    }

    /// Switches the protocol version (`HELLO`, `RESET`). Deliveries already queued are worded
    /// in the version they were queued under first: they leave ahead of the reply that tells
    /// the client about the switch, so it reads them in the old one.
    fn resp_set_version(&mut self, id: ConnectionId, version: RespVersion) {
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let super::wire::Wire::Resp(session) = &mut conn.wire else {
            return;
        };
        if session.version != version {
            conn.out.word_resp_messages(session.version);
            session.version = version;
        }
    }

    fn resp_session(&mut self, id: ConnectionId) -> Option<&mut RespSession> {
        match &mut self.connection_mut(id)?.wire {
            super::wire::Wire::Resp(session) => Some(session),
            _ => None,
        }
    }

    /// Queues the session's ready replies behind the connection's deliveries, and closes a
    /// connection whose QUIT (or fatal error) has been answered.
    fn resp_flush(&mut self, id: ConnectionId) {
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        conn.queue_resp_output();
        let done = matches!(&conn.wire, super::wire::Wire::Resp(session) if session.done());
        self.mark_dirty(id);
        if done {
            self.begin_close(id, CloseReason::ClientQuit);
        }
    }

    /// Replies with `text` in turn (after every earlier reply).
    fn resp_reply(&mut self, id: ConnectionId, text: &[u8]) {
        if let Some(session) = self.resp_session(id) {
            session.replies.complete_now(text, &mut session.output);
        }
    }

    fn resp_error(&mut self, id: ConnectionId, message: &[u8]) {
        let mut text = Vec::with_capacity(message.len() + 8);
        encode_error(&mut text, message);
        self.resp_reply(id, &text);
    }

    /// A framing error: Redis replies and closes, since the stream cannot be framed again.
    fn resp_fatal(&mut self, id: ConnectionId, message: &[u8]) {
        let mut text = Vec::new();
        encode_error(&mut text, message);
        self.resp_fatal_encoded(id, &text);
    }

    fn resp_fatal_encoded(&mut self, id: ConnectionId, text: &[u8]) {
        if let Some(session) = self.resp_session(id) {
            session.replies.complete_now(text, &mut session.output);
            session.closing = true;
        }
    }

    /// Runs a `PUBLISH` at the start of `input` if it is in the one form clients send
    /// ([`resp::decode_publish`]) and the connection may publish: the same outcome as decoding
    /// and resolving it, without either. Returns the flow and the bytes taken, or `None` for
    /// the general path.
    fn resp_fast_publish(
        &mut self,
        id: ConnectionId,
        input: &[u8],
        decoder: &mut RequestDecoder,
    ) -> Option<(Flow, usize)> {
        let publish = resp::decode_publish(input, decoder.limits())?;
        let session = self.resp_session(id)?;
        if session.resp2_subscribed() {
            // Redis refuses PUBLISH there; the general path words the error.
            return None;
        }
        session.last_command = resp_commands::PUBLISH_NAME;
        // The decoder may have seen part of this request in an earlier read.
        decoder.reset();
        let flow = self.resp_publish(id, publish.channel, publish.payload);
        Some((flow, publish.consumed))
    }

    fn run_resp_request(&mut self, id: ConnectionId, request: &Request<'_>) -> Flow {
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        let spec = match resp_commands::resolve(request, session.resp2_subscribed()) {
            Ok(spec) => spec,
            Err(Refusal::Close) => {
                // HTTP sent to the Redis port: Redis logs it and closes without a word.
                if let Some(session) = self.resp_session(id) {
                    session.closing = true;
                }
                return Flow::Stop;
            }
            Err(Refusal::Error(text)) => {
                self.resp_error(id, &text);
                return Flow::Continue;
            }
        };
        session.last_command = spec.full_name;
        let version = session.version;
        let resume_at = session.resume_at;
        match spec.id {
            CommandId::Subscribe => self.resp_subscribe(id, request, Family::Channel, resume_at),
            CommandId::SSubscribe => {
                self.resp_subscribe(id, request, Family::ShardChannel, resume_at)
            }
            CommandId::PSubscribe => self.resp_subscribe(id, request, Family::Pattern, resume_at),
            CommandId::Unsubscribe => self.resp_unsubscribe(id, request, Family::Channel),
            CommandId::SUnsubscribe => self.resp_unsubscribe(id, request, Family::ShardChannel),
            CommandId::PUnsubscribe => self.resp_unsubscribe(id, request, Family::Pattern),
            CommandId::Publish | CommandId::SPublish => {
                let channel = request.arg(1).unwrap_or_default();
                let payload = request.arg(2).unwrap_or_default();
                self.resp_publish(id, channel, payload)
            }
            CommandId::Ping => {
                let subscribed = self.resp_session(id).is_some_and(|s| s.resp2_subscribed());
                let mut text = Vec::new();
                resp::encode_pong(&mut text, subscribed, request.arg(1));
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::Echo => {
                let mut text = Vec::new();
                encode_bulk(&mut text, request.arg(1).unwrap_or_default());
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::Hello => self.resp_hello(id, request),
            CommandId::Select => {
                match resp_commands::select_database(request.arg(1).unwrap_or_default()) {
                    Ok(()) => self.resp_reply(id, b"+OK\r\n"),
                    Err(message) => self.resp_error(id, message.as_bytes()),
                }
                Flow::Continue
            }
            CommandId::Quit => {
                self.resp_reply(id, b"+OK\r\n");
                if let Some(session) = self.resp_session(id) {
                    session.closing = true;
                }
                Flow::Stop
            }
            CommandId::Reset => self.resp_reset(id),
            CommandId::FlushDb | CommandId::FlushAll => {
                // Pub/sub keeps no keys: there is nothing to flush. Redis takes one optional
                // ASYNC or SYNC and refuses anything else.
                let mode_ok = match request.len() {
                    1 => true,
                    2 => request.arg(1).is_some_and(|mode| {
                        mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync")
                    }),
                    _ => false,
                };
                if mode_ok {
                    self.resp_reply(id, b"+OK\r\n");
                } else {
                    self.resp_error(id, errors::SYNTAX_ERROR.as_bytes());
                }
                Flow::Continue
            }
            CommandId::Info => {
                let section = request.arg(1).map(<[u8]>::to_ascii_lowercase);
                self.resp_gather(id, GatherQuery::Info { section })
            }
            CommandId::PubSubChannels | CommandId::PubSubShardChannels => {
                let pattern = request.arg(2).map(<[u8]>::to_vec);
                self.resp_gather(id, GatherQuery::Channels { pattern })
            }
            CommandId::PubSubNumSub | CommandId::PubSubShardNumSub => {
                let channels: Vec<Vec<u8>> = request.args().skip(2).map(<[u8]>::to_vec).collect();
                if channels.is_empty() {
                    self.resp_reply(id, b"*0\r\n");
                    return Flow::Continue;
                }
                self.resp_gather(id, GatherQuery::NumSub { channels })
            }
            CommandId::PubSubNumPat => self.resp_gather(id, GatherQuery::NumPat),
            CommandId::ClientList => self.resp_gather(id, GatherQuery::ClientList),
            CommandId::ClientSetName => {
                let name = request.arg(2).unwrap_or_default();
                if let Some(error) = resp_commands::client_name_error(name) {
                    self.resp_error(id, error.as_bytes());
                } else {
                    if let Some(session) = self.resp_session(id) {
                        session.name = name.to_vec();
                    }
                    self.resp_reply(id, b"+OK\r\n");
                }
                Flow::Continue
            }
            CommandId::ClientGetName => {
                let mut text = Vec::new();
                match self.resp_session(id).map(|s| s.name.clone()) {
                    Some(name) if !name.is_empty() => encode_bulk(&mut text, &name),
                    _ => encode_null(&mut text, version),
                }
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::ClientId => {
                let client_id = self.resp_session(id).map_or(0, |s| s.client_id);
                let mut text = Vec::new();
                encode_integer(&mut text, client_id as i64);
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::ClientSetInfo => self.resp_client_setinfo(id, request),
            CommandId::ClientInfo => {
                let line = self.resp_client_line(id).unwrap_or_default();
                let mut text = Vec::new();
                encode_verbatim(&mut text, version, *b"txt", line.as_bytes());
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::ClientKill => self.resp_client_kill(id, request),
            CommandId::Command => {
                let mut text = Vec::new();
                encode_array_header(&mut text, COMMANDS.len());
                for command in COMMANDS {
                    encode_command_info(&mut text, version, command);
                }
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::CommandCount => {
                let mut text = Vec::new();
                encode_integer(&mut text, COMMANDS.len() as i64);
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::CommandInfo => {
                let names: Vec<&[u8]> = request.args().skip(2).collect();
                let mut text = Vec::new();
                if names.is_empty() {
                    encode_array_header(&mut text, COMMANDS.len());
                    for command in COMMANDS {
                        encode_command_info(&mut text, version, command);
                    }
                } else {
                    encode_array_header(&mut text, names.len());
                    for name in names {
                        match COMMANDS
                            .iter()
                            .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
                        {
                            Some(command) => encode_command_info(&mut text, version, command),
                            None => resp::encode_null_array(&mut text, version),
                        }
                    }
                }
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::CommandDocs => {
                // Clients probe DOCS for help texts; corebus has none to give, and an empty
                // map is Redis's answer for commands it has no docs for.
                let mut text = Vec::new();
                encode_map_header(&mut text, version, 0);
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::ConfigGet => {
                let parameters: Vec<&[u8]> = request.args().skip(2).collect();
                let text = self.resp_config_get(version, &parameters);
                self.resp_reply(id, &text);
                Flow::Continue
            }
            CommandId::CommandHelp
            | CommandId::PubSubHelp
            | CommandId::ClientHelp
            | CommandId::ConfigHelp => {
                let mut text = Vec::new();
                let lines = help_lines(spec.id);
                encode_array_header(&mut text, lines.len());
                for line in lines {
                    resp::encode_simple(&mut text, line.as_bytes());
                }
                self.resp_reply(id, &text);
                Flow::Continue
            }
        }
    }

    fn resp_subscribe(
        &mut self,
        id: ConnectionId,
        request: &Request<'_>,
        family: Family,
        resume_at: usize,
    ) -> Flow {
        for index in resume_at..request.len() {
            let name = request.arg(index).unwrap_or_default();
            let Some(session) = self.resp_session(id) else {
                return Flow::Stop;
            };
            let version = session.version;
            if session.names(family).contains_key(name) {
                // Already subscribed: Redis confirms again with the count unchanged.
                let mut text = Vec::new();
                let count = session.count(family);
                resp::encode_subscription(
                    &mut text,
                    version,
                    family.subscribe_word(),
                    Some(name),
                    count,
                );
                session.replies.complete_now(&text, &mut session.output);
                continue;
            }
            let subject = match family {
                Family::Pattern => topic::glob_subject(name).map(std::borrow::Cow::Owned),
                _ => channel_to_topic(name),
            };
            let subject = match subject {
                Ok(subject) => subject,
                Err(error) => {
                    self.resp_error(id, error.message().as_bytes());
                    continue;
                }
            };
            let Some(session) = self.resp_session(id) else {
                return Flow::Stop;
            };
            let sub_id = session.remember(family, name);
            let count = session.count(family);
            let request_id = session.replies.reserve(Awaiting::Confirmation {
                word: family.subscribe_word(),
                name: name.into(),
                count,
                subscribing: Some(sub_id),
                version: session.version,
            });
            let flow = self.handle_subscribe(
                id,
                request_id,
                sub_id,
                subject.as_bytes(),
                SubscribeOptions::default(),
            );
            if flow == Flow::Blocked {
                if let Some(session) = self.resp_session(id) {
                    session.replies.unreserve_last();
                    session.forget(sub_id);
                    session.resume_at = index;
                }
                return Flow::Blocked;
            }
            if flow == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn resp_unsubscribe(
        &mut self,
        id: ConnectionId,
        request: &Request<'_>,
        family: Family,
    ) -> Flow {
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        let names: Vec<Box<[u8]>> = if request.len() > 1 {
            request.args().skip(1).map(Into::into).collect()
        } else {
            let mut all: Vec<Box<[u8]>> = session.names(family).keys().cloned().collect();
            all.sort();
            all
        };
        if names.is_empty() {
            let mut text = Vec::new();
            let count = session.count(family);
            resp::encode_subscription(
                &mut text,
                session.version,
                family.unsubscribe_word(),
                None,
                count,
            );
            session.replies.complete_now(&text, &mut session.output);
            return Flow::Continue;
        }
        for name in names {
            let Some(session) = self.resp_session(id) else {
                return Flow::Stop;
            };
            let Some(&sub_id) = session.names(family).get(&name) else {
                let mut text = Vec::new();
                let count = session.count(family);
                resp::encode_subscription(
                    &mut text,
                    session.version,
                    family.unsubscribe_word(),
                    Some(&name),
                    count,
                );
                session.replies.complete_now(&text, &mut session.output);
                continue;
            };
            session.forget(sub_id);
            let count = session.count(family);
            let request_id = session.replies.reserve(Awaiting::Confirmation {
                word: family.unsubscribe_word(),
                name,
                count,
                subscribing: None,
                version: session.version,
            });
            // Never postponed (see `withdraw_subscription`).
            self.handle_unsubscribe(id, request_id, sub_id);
        }
        Flow::Continue
    }

    fn resp_publish(&mut self, id: ConnectionId, channel: &[u8], payload: &[u8]) -> Flow {
        // A plain name is its own topic and publishable as it is (proven so by being found
        // in this shard's table, else by a look at its bytes); any other is mapped, and the
        // publish path checks what it maps to.
        let mapped;
        let topic = match self.look_up_topic(Some(id), channel, PublishedNames::RedisChannels) {
            TopicLookup::Held(topic, slot) => PublishTopic::Held(topic, slot),
            TopicLookup::Unheld(owner) => match topic::plain_unescaped_topic(channel) {
                // A plain channel is its topic: routed by the same bytes.
                Some(topic) => PublishTopic::Checked(topic, owner),
                None => match channel_to_topic(channel) {
                    Ok(topic) => {
                        mapped = topic;
                        PublishTopic::Unchecked(mapped.as_bytes())
                    }
                    Err(error) => {
                        self.resp_error(id, error.message().as_bytes());
                        return Flow::Continue;
                    }
                },
            },
        };
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        let request_id = session.replies.reserve(Awaiting::Publish);
        let flow = self.handle_publish(
            id,
            request_id,
            Publish {
                topic,
                reply_to: None,
                headers: &[],
                payload,
                quiet: false,
            },
        );
        if flow == Flow::Blocked {
            if let Some(session) = self.resp_session(id) {
                session.replies.unreserve_last();
            }
        }
        flow
    }

    fn resp_hello(&mut self, id: ConnectionId, request: &Request<'_>) -> Flow {
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        let mut version = session.version;
        if let Some(number) = request.arg(1) {
            match resp::parse_redis_integer(number) {
                None => {
                    self.resp_error(id, errors::HELLO_PROTO_NOT_INTEGER.as_bytes());
                    return Flow::Continue;
                }
                Some(number) => match RespVersion::from_number(number) {
                    Some(asked) => version = asked,
                    None => {
                        // Redis's NOPROTO is its own error kind, not ERR.
                        self.resp_error(id, errors::HELLO_NOPROTO.as_bytes());
                        return Flow::Continue;
                    }
                },
            }
        }
        let mut name = None;
        let mut index = 2;
        while index < request.len() {
            let option = request.arg(index).unwrap_or_default();
            let remaining = request.len() - index - 1;
            if option.eq_ignore_ascii_case(b"AUTH") && remaining >= 2 {
                // corebus has no users: like Redis's passwordless `default` user, any
                // credentials are accepted.
                index += 3;
            } else if option.eq_ignore_ascii_case(b"SETNAME") && remaining >= 1 {
                let value = request.arg(index + 1).unwrap_or_default();
                if let Some(error) = resp_commands::client_name_error(value) {
                    self.resp_error(id, error.as_bytes());
                    return Flow::Continue;
                }
                name = Some(value.to_vec());
                index += 2;
            } else {
                self.resp_error(id, &resp_commands::hello_option_error(option));
                return Flow::Continue;
            }
        }
        self.resp_set_version(id, version);
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        if let Some(name) = name {
            session.name = name;
        }
        let mut text = Vec::new();
        resp::encode_hello(&mut text, &HelloInfo::corebus(version, session.client_id));
        self.resp_reply(id, &text);
        Flow::Continue
    }

    /// RESET: leave every subscription, back to RESP2, no name; `+RESET`.
    fn resp_reset(&mut self, id: ConnectionId) -> Flow {
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        let sub_ids: Vec<u32> = session.subscriptions.keys().copied().collect();
        for sub_id in sub_ids {
            if let Some(session) = self.resp_session(id) {
                session.forget(sub_id);
            }
            // Answered as a plain unsubscribe would be, but no confirmation is owed.
            let removed = self
                .connection_mut(id)
                .and_then(|conn| conn.subscriptions.remove(&sub_id));
            if let Some(record) = removed {
                self.withdraw_subscription(
                    crate::ids::Subscriber {
                        connection: id,
                        sub_id,
                    },
                    &record,
                );
            }
        }
        self.resp_set_version(id, RespVersion::Resp2);
        if let Some(session) = self.resp_session(id) {
            session.name.clear();
        }
        self.resp_reply(id, b"+RESET\r\n");
        Flow::Continue
    }

    fn resp_client_setinfo(&mut self, id: ConnectionId, request: &Request<'_>) -> Flow {
        let attribute = request.arg(2).unwrap_or_default();
        let value = request.arg(3).unwrap_or_default();
        let is_name = attribute.eq_ignore_ascii_case(b"LIB-NAME");
        let is_version = attribute.eq_ignore_ascii_case(b"LIB-VER");
        if !is_name && !is_version {
            self.resp_error(id, &resp_commands::setinfo_option_error(attribute));
            return Flow::Continue;
        }
        if !resp_commands::client_attribute_ok(value) {
            self.resp_error(id, &resp_commands::setinfo_value_error(attribute));
            return Flow::Continue;
        }
        if let Some(session) = self.resp_session(id) {
            if is_name {
                session.lib_name = value.to_vec();
            } else {
                session.lib_ver = value.to_vec();
            }
        }
        self.resp_reply(id, b"+OK\r\n");
        Flow::Continue
    }

    /// `CLIENT KILL ID id` (on whichever shard holds it: the id names the shard), or the old
    /// `CLIENT KILL addr:port` (this shard's connections only: an address names no shard).
    /// `CLIENT KILL`, both forms: every shard closes its matching clients and says how many.
    fn resp_client_kill(&mut self, id: ConnectionId, request: &Request<'_>) -> Flow {
        let args: Vec<&[u8]> = (2..request.len())
            .filter_map(|at| request.arg(at))
            .collect();
        let (filter, address_form) = match resp_commands::parse_client_kill(&args) {
            Ok(KillRequest::Address(addr)) => (KillFilter::address(&addr), true),
            Ok(KillRequest::Filters(filter)) => (filter, false),
            Err(text) => {
                self.resp_error(id, text.as_bytes());
                return Flow::Continue;
            }
        };
        for peer in 0..self.links.len() {
            if let Some(link) = self.links[peer].as_mut() {
                if !link.requests_out.make_room() {
                    return Flow::Blocked;
                }
            }
        }
        let Some(session) = self.resp_session(id) else {
            return Flow::Stop;
        };
        let asker = session.client_id;
        let spare = filter.skip_me.then_some(asker);
        let request_id = session.replies.reserve(Awaiting::Kill {
            answered: 0,
            killed: 0,
            address_form,
        });
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        if self.shard_count > 1 {
            self.gather_deadlines.push_back((
                std::time::Instant::now() + super::stats::GATHER_DEADLINE,
                reply,
            ));
        }
        for peer in 0..self.links.len() {
            if let Some(link) = self.links[peer].as_mut() {
                link.requests_out
                    .push(crate::mesh::message::OwnerRequest::KillClients {
                        filter: Box::new(filter.clone()),
                        spare,
                        reply,
                    });
            }
        }
        // The asker itself, if it matches, closes only once its answer is out.
        let kills_itself = spare.is_none()
            && self
                .connections
                .get(id.index as usize)
                .is_some_and(|conn| conn.id == id && client_matches(conn, &filter));
        let killed = self.kill_resp_clients(&filter, Some(asker));
        self.answer_kill(reply, killed + u32::from(kills_itself));
        if kills_itself {
            if let Some(session) = self.resp_session(id) {
                session.closing = true;
            }
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn resp_config_get(&self, version: RespVersion, patterns: &[&[u8]]) -> Vec<u8> {
        let config = &self.config;
        let limits = RequestLimits::for_message_bytes_max(config.message_bytes_max);
        let resp_port = self.resp_addr().map_or(0, |addr| addr.port());
        let parameters: [(&str, String); 7] = [
            // Nothing is persisted (redis-benchmark asks).
            ("save", String::new()),
            ("appendonly", "no".to_owned()),
            ("maxclients", config.connections_max.to_string()),
            ("databases", "1".to_owned()),
            ("proto-max-bulk-len", limits.bulk_bytes_max.to_string()),
            (
                "client-output-buffer-limit",
                format!(
                    "normal 0 0 0 slave 0 0 0 pubsub {} {} 0",
                    config.outbound_bytes_max, config.outbound_bytes_max
                ),
            ),
            ("port", resp_port.to_string()),
        ];
        let found: Vec<&(&str, String)> = parameters
            .iter()
            .filter(|(name, _)| {
                patterns
                    .iter()
                    .any(|pattern| glob_match(&pattern.to_ascii_lowercase(), name.as_bytes()))
            })
            .collect();
        let mut text = Vec::new();
        encode_map_header(&mut text, version, found.len());
        for (name, value) in found {
            encode_bulk(&mut text, name.as_bytes());
            encode_bulk(&mut text, value.as_bytes());
        }
        text
    }

    /// Starts a gather of every shard's stats for a reply in this request's turn.
    fn resp_gather(&mut self, id: ConnectionId, query: GatherQuery) -> Flow {
        if !self.terminal_room() {
            return Flow::Blocked;
        }
        let outbound_bytes_max = self.config.outbound_bytes_max;
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        // Nor while the client has not read earlier answers past --outbound-bytes-max: an
        // answer (`CLIENT LIST`, `INFO`) can be far larger than its request, so the read
        // buffer alone does not bound what a pipeline of them costs.
        let unread = conn.queued_bytes();
        let super::wire::Wire::Resp(session) = &mut conn.wire else {
            return Flow::Stop;
        };
        if session.gathering || unread > outbound_bytes_max {
            conn.paused_for_own_requests = true;
            return Flow::Blocked;
        }
        session.gathering = true;
        let client_lines = matches!(query, GatherQuery::ClientList);
        let request_id = session.replies.reserve(Awaiting::Gather {
            query,
            parts: Vec::new(),
        });
        if client_lines {
            self.start_gathering_client_lines(id, request_id);
        } else {
            self.start_gathering(id, request_id);
        }
        Flow::Continue
    }

    /// A shard's part of a RESP gather; the reply goes out once every shard's is in.
    pub(super) fn resp_stats_part(&mut self, reply: ReplyTarget, part: ShardStats) {
        let shards = self.shard_count;
        let Some(session) = self.resp_session(reply.connection) else {
            return;
        };
        let Some(Awaiting::Gather { parts, .. }) = session.replies.waiting_mut(reply.request_id)
        else {
            return;
        };
        parts.push(part);
        if parts.len() == shards {
            self.resp_answer_gather(reply);
        }
    }

    /// Answers a gather with what came (all of it, or what came before the deadline).
    pub(super) fn resp_answer_gather(&mut self, reply: ReplyTarget) {
        let uptime = self.started.elapsed().as_secs();
        let shards = self.shard_count;
        let resp_port = self.resp_addr().map_or(0, |addr| addr.port());
        let id = reply.connection;
        let Some(session) = self.resp_session(id) else {
            return;
        };
        match session.replies.waiting_mut(reply.request_id) {
            Some(Awaiting::Gather { .. }) => {}
            // The gather deadline also bounds a CLIENT KILL's wait for every shard's count.
            Some(Awaiting::Kill { .. }) => return self.finish_kill(reply),
            _ => return,
        }
        let Some(Awaiting::Gather { query, parts }) =
            session.replies.take_waiting(reply.request_id)
        else {
            return;
        };
        session.gathering = false;
        let version = session.version;
        let mut text = Vec::new();
        match query {
            GatherQuery::Info { section } => {
                let info = info_text(&parts, section.as_deref(), (uptime, shards, resp_port));
                encode_bulk(&mut text, info.as_bytes());
            }
            GatherQuery::Channels { pattern } => {
                let mut channels: Vec<Vec<u8>> = parts
                    .iter()
                    .flat_map(|part| part.topics.iter())
                    .filter(|topic| topic.subscribers > 0)
                    .map(|topic| topic_to_channel(&topic.name).into_owned())
                    .filter(|channel| pattern.as_ref().is_none_or(|p| glob_match(p, channel)))
                    .collect();
                channels.sort();
                encode_array_header(&mut text, channels.len());
                for channel in channels {
                    encode_bulk(&mut text, &channel);
                }
            }
            GatherQuery::NumSub { channels } => {
                let counts: AHashMap<&str, u64> = parts
                    .iter()
                    .flat_map(|part| part.topics.iter())
                    .map(|topic| (&*topic.name, topic.subscribers))
                    .collect();
                encode_array_header(&mut text, channels.len() * 2);
                for channel in &channels {
                    let count = channel_to_topic(channel)
                        .ok()
                        .and_then(|topic| counts.get(topic.as_ref()).copied())
                        .unwrap_or(0);
                    encode_bulk(&mut text, channel);
                    encode_integer(&mut text, count as i64);
                }
            }
            GatherQuery::NumPat => {
                let distinct: ahash::AHashSet<&str> = parts
                    .iter()
                    .flat_map(|part| part.patterns.iter().map(|p| &**p))
                    .collect();
                encode_integer(&mut text, distinct.len() as i64);
            }
            GatherQuery::ClientList => {
                let mut lines = String::new();
                for part in &parts {
                    for line in &part.resp_clients {
                        lines.push_str(line);
                        lines.push('\n');
                    }
                }
                encode_verbatim(&mut text, version, *b"txt", lines.as_bytes());
            }
        }
        let Some(session) = self.resp_session(id) else {
            return;
        };
        session.replies.fill(reply.request_id, text);
        session.replies.drain_ready(&mut session.output);
        self.resp_flush(id);
    }

    /// Closes this shard's RESP connections that match `filter`, except the client `spare`;
    /// returns how many.
    pub(super) fn kill_resp_clients(&mut self, filter: &KillFilter, spare: Option<u64>) -> u32 {
        let targets: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, conn)| {
                matches!(&conn.wire, super::wire::Wire::Resp(s) if Some(s.client_id) != spare)
                    && !conn.is_closing()
                    && client_matches(conn, filter)
            })
            .map(|(_, conn)| conn.id)
            .collect();
        for &target in &targets {
            self.begin_close(target, CloseReason::Killed);
        }
        targets.len() as u32
    }

    /// A shard's count for a `CLIENT KILL`: the reply goes out once every shard's is in.
    pub(super) fn answer_kill(&mut self, reply: ReplyTarget, killed_here: u32) {
        let shards = self.shard_count;
        let Some(session) = self.resp_session(reply.connection) else {
            return;
        };
        let Some(Awaiting::Kill {
            answered, killed, ..
        }) = session.replies.waiting_mut(reply.request_id)
        else {
            return;
        };
        *answered += 1;
        *killed += u64::from(killed_here);
        if *answered < shards {
            return;
        }
        self.finish_kill(reply);
    }

    /// Answers a `CLIENT KILL` with the count so far: every shard's, or, past the gather
    /// deadline, those that answered (a shard that never does must not hold the connection's
    /// replies forever).
    pub(super) fn finish_kill(&mut self, reply: ReplyTarget) {
        let Some(session) = self.resp_session(reply.connection) else {
            return;
        };
        let Some(Awaiting::Kill {
            killed,
            address_form,
            ..
        }) = session.replies.take_waiting(reply.request_id)
        else {
            return;
        };
        let mut text = Vec::new();
        match (address_form, killed) {
            (true, 0) => encode_error(&mut text, errors::NO_SUCH_CLIENT.as_bytes()),
            (true, _) => text.extend_from_slice(b"+OK\r\n"),
            (false, killed) => encode_integer(&mut text, killed as i64),
        }
        session.replies.fill(reply.request_id, text);
        session.replies.drain_ready(&mut session.output);
        self.resp_flush(reply.connection);
    }

    /// This shard's RESP connections, one `CLIENT LIST` line each.
    pub(super) fn resp_client_lines(&self) -> Vec<String> {
        self.connections
            .iter()
            .filter_map(|(_, conn)| match &conn.wire {
                super::wire::Wire::Resp(session) => Some(client_line(conn.peer, session)),
                _ => None,
            })
            .collect()
    }

    fn resp_client_line(&mut self, id: ConnectionId) -> Option<String> {
        let conn = self.connection_mut(id)?;
        match &conn.wire {
            super::wire::Wire::Resp(session) => Some(client_line(conn.peer, session)),
            _ => None,
        }
    }

    /// Switches a fresh connection on the RESP port to a RESP session.
    pub(super) fn open_resp(&mut self, id: ConnectionId) {
        let client_id =
            u64::from(id.generation) * self.shard_count as u64 + u64::from(self.id.0) + 1;
        let message_bytes_max = self.config.message_bytes_max;
        if let Some(conn) = self.connection_mut(id) {
            conn.wire =
                super::wire::Wire::Resp(Box::new(RespSession::new(client_id, message_bytes_max)));
            conn.state = super::connection::ConnState::Open;
        }
    }
}

/// Whether a RESP connection matches a `CLIENT KILL` filter (any other connection never does).
fn client_matches(conn: &super::connection::Connection, filter: &KillFilter) -> bool {
    let super::wire::Wire::Resp(session) = &conn.wire else {
        return false;
    };
    let kind_matches = match filter.kind {
        None => true,
        Some(ClientKind::Normal) => session.subscription_total() == 0,
        Some(ClientKind::PubSub) => session.subscription_total() > 0,
        Some(ClientKind::Replication) => false,
    };
    // The local address is a system call: asked for only when the filter names one.
    let address_matches =
        |wanted: &Option<Box<[u8]>>, address: &dyn Fn() -> Option<std::net::SocketAddr>| {
            wanted.as_deref().is_none_or(|wanted| {
                address().is_some_and(|address| address.to_string().as_bytes() == wanted)
            })
        };
    filter.id.is_none_or(|wanted| session.client_id == wanted)
        && kind_matches
        && address_matches(&filter.addr, &|| Some(conn.peer))
        && address_matches(&filter.laddr, &|| conn.socket.local_addr())
}

fn client_line(peer: std::net::SocketAddr, session: &RespSession) -> String {
    let subscriptions = |family| session.names(family).len();
    let mut line = String::new();
    let _ =
        write!(
        line,
        "id={} addr={} laddr= fd=-1 name={} age={} idle=0 flags={} db=0 sub={} psub={} ssub={} \
         multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 \
         omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
        session.client_id,
        peer,
        String::from_utf8_lossy(&session.name),
        session.created.elapsed().as_secs(),
        if session.subscription_total() > 0 { "P" } else { "N" },
        subscriptions(Family::Channel),
        subscriptions(Family::Pattern),
        subscriptions(Family::ShardChannel),
        session.last_command,
        session.version.number(),
        String::from_utf8_lossy(&session.lib_name),
        String::from_utf8_lossy(&session.lib_ver),
    );
    line
}

/// `INFO`'s text: Redis's sections that clients read, and corebus's own.
fn info_text(
    parts: &[ShardStats],
    section: Option<&[u8]>,
    (uptime, shards, port): (u64, usize, u16),
) -> String {
    let mut counters = super::ShardCounters::default();
    for part in parts {
        counters.add(&part.counters);
    }
    let connections: u64 = parts.iter().map(|part| part.connections).sum();
    let channels = parts
        .iter()
        .flat_map(|part| part.topics.iter())
        .filter(|topic| topic.subscribers > 0)
        .count();
    let patterns: ahash::AHashSet<&str> = parts
        .iter()
        .flat_map(|part| part.patterns.iter().map(|p| &**p))
        .collect();
    let wanted = |name: &str| match section {
        None => true,
        Some(section) => {
            section == b"all"
                || section == b"default"
                || section == b"everything"
                || section == name.as_bytes()
        }
    };
    let mut text = String::new();
    if wanted("server") {
        let _ = write!(
            text,
            "# Server\r\nredis_version:{}\r\nredis_mode:standalone\r\nos:{}\r\narch_bits:{}\r\n\
             multiplexing_api:epoll\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
             uptime_in_days:{}\r\nexecutable:corebus\r\n\r\n",
            resp::REDIS_COMPAT_VERSION,
            std::env::consts::OS,
            usize::BITS,
            std::process::id(),
            port,
            uptime,
            uptime / 86_400,
        );
    }
    if wanted("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{connections}\r\nblocked_clients:0\r\n\r\n"
        );
    }
    if wanted("stats") {
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\n\
             total_net_input_bytes:{}\r\ntotal_net_output_bytes:{}\r\npubsub_channels:{}\r\n\
             pubsub_patterns:{}\r\npubsubshard_channels:{}\r\n\r\n",
            counters.connections_accepted,
            counters.connections_refused,
            counters.bytes_in,
            counters.bytes_out,
            channels,
            patterns.len(),
            channels,
        );
    }
    if wanted("replication") {
        text.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if wanted("cluster") {
        text.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n");
    }
    if wanted("keyspace") {
        text.push_str("# Keyspace\r\n\r\n");
    }
    if wanted("corebus") {
        let _ = write!(
            text,
            "# corebus\r\ncorebus_version:{}\r\nshards:{}\r\nshards_answered:{}\r\n\
             published:{}\r\ndelivered:{}\r\ndropped:{}\r\nundelivered:{}\r\n\
             slow_consumer_disconnects:{}\r\ndead_lettered:{}\r\nrate_limited:{}\r\n\
             protocol_errors:{}\r\npublisher_stalls:{}\r\nframe_deadline_closes:{}\r\n\
             connections_refused_per_ip:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            shards,
            parts.len(),
            counters.published,
            counters.delivered,
            counters.dropped,
            counters.undelivered,
            counters.slow_consumer_disconnects,
            counters.dead_lettered,
            counters.rate_limited,
            counters.protocol_errors,
            counters.publisher_stalls,
            counters.frame_deadline_closes,
            counters.connections_refused_per_ip,
        );
        super::stats::write_latency_info(parts, &mut text);
    }
    text
}

/// One `COMMAND INFO` entry, in Redis 7's shape: name, arity, flags, key positions (none:
/// corebus has no keys), ACL categories, tips, key specs, subcommands.
fn encode_command_info(out: &mut Vec<u8>, version: RespVersion, command: &resp_commands::TopLevel) {
    encode_array_header(out, 10);
    encode_bulk(out, command.name.as_bytes());
    encode_integer(out, i64::from(command.spec.arity));
    let flags: &[&str] = if command.spec.allowed_in_resp2_subscribed {
        &["pubsub", "loading", "stale", "fast"]
    } else {
        &["loading", "stale", "fast"]
    };
    encode_set_header(out, version, flags.len());
    for flag in flags {
        resp::encode_simple(out, flag.as_bytes());
    }
    encode_integer(out, 0);
    encode_integer(out, 0);
    encode_integer(out, 0);
    encode_set_header(out, version, 1);
    resp::encode_simple(out, b"@pubsub");
    encode_array_header(out, 0);
    encode_array_header(out, 0);
    encode_array_header(out, command.subcommands.len());
    for sub in command.subcommands {
        encode_array_header(out, 10);
        encode_bulk(out, sub.full_name.as_bytes());
        encode_integer(out, i64::from(sub.arity));
        encode_set_header(out, version, 0);
        encode_integer(out, 0);
        encode_integer(out, 0);
        encode_integer(out, 0);
        encode_set_header(out, version, 0);
        encode_array_header(out, 0);
        encode_array_header(out, 0);
        encode_array_header(out, 0);
    }
}

fn help_lines(command: CommandId) -> &'static [&'static str] {
    match command {
        CommandId::CommandHelp => &[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all commands.",
            "COUNT",
            "    Return the total number of commands.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about commands.",
            "INFO [<command-name> ...]",
            "    Return details about the given commands, or all of them.",
        ],
        CommandId::PubSubHelp => &[
            "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "CHANNELS [<pattern>]",
            "    Return the currently active channels matching a <pattern> (default: '*').",
            "NUMPAT",
            "    Return number of subscriptions to patterns.",
            "NUMSUB [<channel> ...]",
            "    Return the number of subscribers for the specified channels.",
            "SHARDCHANNELS [<pattern>]",
            "    Return the currently active shard level channels matching a <pattern>.",
            "SHARDNUMSUB [<shardchannel> ...]",
            "    Return the number of subscribers for the specified shard level channel(s).",
        ],
        CommandId::ClientHelp => &[
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "KILL ID <client-id> | <ip:port>",
            "    Kill a connection of this shard.",
            "LIST",
            "    Return information about client connections.",
            "SETINFO <option> <value>",
            "    Set client meta attr (LIB-NAME, LIB-VER).",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
        ],
        _ => &[
            "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_request_order_whatever_order_answers_come_in() {
        let mut queue = ReplyQueue::default();
        let mut out = Vec::new();
        let first = queue.reserve(Awaiting::Publish);
        queue.complete_now(b"+PONG\r\n", &mut out);
        let third = queue.reserve(Awaiting::Publish);
        assert!(out.is_empty());
        queue.fill(third, b":3\r\n".to_vec());
        queue.drain_ready(&mut out);
        assert!(out.is_empty(), "the first is still waiting");
        queue.fill(first, b":1\r\n".to_vec());
        queue.drain_ready(&mut out);
        assert_eq!(out, b":1\r\n+PONG\r\n:3\r\n");
        assert!(queue.slots.is_empty());
        // With nothing waiting, a reply goes straight out.
        out.clear();
        queue.complete_now(b"+OK\r\n", &mut out);
        assert_eq!(out, b"+OK\r\n");
    }

    #[test]
    fn a_publish_reply_goes_behind_the_messages_lined_up_behind_it() {
        let mut queue = ReplyQueue::default();
        let mut out = Vec::new();
        let first = queue.reserve(Awaiting::Publish);
        assert!(queue.line_up_delivery(b"m1".to_vec(), (0, 100), false));
        assert!(queue.line_up_delivery(b"m2".to_vec(), (0, 100), false));
        let second = queue.reserve(Awaiting::Publish);
        assert!(queue.line_up_delivery(b"m3".to_vec(), (0, 100), false));
        assert!(queue.lined_up_behind_head(first) && !queue.lined_up_behind_head(second));
        // Answered in turn: each reply after the messages that came while it was the newest.
        queue.fill_head_behind_lined_up(b":1\r\n".to_vec());
        queue.drain_ready(&mut out);
        assert_eq!(out, b"m1m2:1\r\n");
        assert!(queue.lined_up_behind_head(second));
        queue.fill_head_behind_lined_up(b":2\r\n".to_vec());
        queue.drain_ready(&mut out);
        assert_eq!(out, b"m1m2:1\r\nm3:2\r\n");
        assert_eq!((queue.messages_sent, queue.messages_in_line), (3, 0));
        assert!(queue.slots.is_empty());

        // Answered out of turn, the later reply stays ahead of the messages behind it, which
        // may be its own, and the earlier one does not take them over.
        let mut out = Vec::new();
        let first = queue.reserve(Awaiting::Publish);
        assert!(queue.line_up_delivery(b"m1".to_vec(), (0, 100), false));
        let second = queue.reserve(Awaiting::Publish);
        assert!(queue.line_up_delivery(b"m2".to_vec(), (0, 100), false));
        queue.fill(second, b":2\r\n".to_vec());
        assert_eq!(queue.head_id, first);
        queue.fill_head_behind_lined_up(b":1\r\n".to_vec());
        queue.drain_ready(&mut out);
        assert_eq!(out, b"m1:1\r\n:2\r\nm2");
    }

    #[test]
    fn lined_up_messages_are_counted_as_they_leave_or_are_given_up() {
        let mut queue = ReplyQueue::default();
        let mut out = Vec::new();
        let first = queue.reserve(Awaiting::Publish);
        assert!(queue.line_up_delivery(b"m1".to_vec(), (0, 100), false));
        let second = queue.reserve(Awaiting::Publish);
        assert!(queue.line_up_delivery(b"m2".to_vec(), (0, 100), false));
        assert!(queue.line_up_delivery(b"m3".to_vec(), (0, 100), false));
        queue.fill(first, b":1\r\n".to_vec());
        queue.drain_ready(&mut out);
        assert_eq!(out, b":1\r\nm1");
        assert_eq!((queue.messages_sent, queue.messages_in_line), (1, 2));
        // Over the limit: refused, and not counted as in line.
        assert!(!queue.line_up_delivery(b"m4".to_vec(), (0, 5), false));
        assert_eq!(queue.messages_in_line, 2);
        assert!(queue.index_of(second).is_some());
        queue.abandon();
        assert_eq!(
            (
                queue.messages_sent,
                queue.messages_in_line,
                queue.messages_abandoned
            ),
            (1, 0, 2)
        );
    }

    #[test]
    fn request_ids_survive_wrapping_and_never_are_zero() {
        let mut queue = ReplyQueue {
            head_id: REQUEST_ID_SPAN - 1,
            ..ReplyQueue::default()
        };
        let mut out = Vec::new();
        let a = queue.reserve(Awaiting::Publish);
        let b = queue.reserve(Awaiting::Publish);
        assert_eq!((a, b), (REQUEST_ID_SPAN, 1));
        queue.fill(b, b"b".to_vec());
        queue.fill(a, b"a".to_vec());
        queue.drain_ready(&mut out);
        assert_eq!(out, b"ab");
        assert_eq!(queue.index_of(0), None);
        assert_eq!(queue.index_of(a), None, "answered ids are forgotten");
    }
}

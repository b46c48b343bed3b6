//! The in-process connection kind: a handle of [`crate::bus`] in the same process, over two
//! bounded SPSC rings and a doorbell instead of a socket (see `bus/link.rs`).
//!
//! It is one more connection in the shard's slab, with its own [`Wire`] and [`Transport`]:
//! its commands go to the same protocol-neutral handlers as the native ones, its deliveries
//! queue in the same outbound queue under the same slow-consumer policy, and its flush hands
//! the queued messages to the handle's event ring instead of writing bytes. So the topic,
//! replay and consumer code does not know it exists.
//!
//! The lifetime of an in-process connection: the handle rings `Attach` → open at once (a
//! handle needs no handshake); `Ready` rings make the shard drain its command ring; the
//! handle dropped → the commands it sent are still carried out, then the connection closes
//! as `peer_closed`; a broker-side close (slow consumer, shutdown) ends with a notice event
//! and the shard dropping its ends, which the handle sees once it has taken every event.

use crate::bus::link::{Command, Doorbell, Event, ShardEnds};
use crate::error::CloseReason;
use crate::ids::ConnectionId;
use crate::mesh::message::ReplyTarget;
use crate::message::Message;
use crate::shard::topics::{PublishedNames, TopicSlot};

use super::commands::TopicLookup;
use super::connection::{Connection, Transport};
use super::stats::ShardStats;
use super::{Flow, Shard};

/// Commands taken from one handle's ring per loop turn, so one busy handle cannot starve the
/// shard's sockets and other handles (as `--read-bytes-per-turn-max` bounds a socket's turn).
const COMMANDS_PER_TURN_MAX: usize = 256;

impl Shard {
    /// Takes every doorbell ring: new handles, and handles with work.
    pub(super) fn drain_doorbell(&mut self) {
        // Taken out while the rings are handled, which borrow the whole shard. Each handle
        // has at most one ring outstanding (its `scheduled` flag) besides its attach, so
        // this ends after at most two rings per handle.
        let Some(doorbell) = self.doorbell.take() else {
            return;
        };
        while let Ok(ring) = doorbell.try_recv() {
            match ring {
                Doorbell::Attach(ends) => self.attach_in_process(ends),
                Doorbell::Ready(key) => self.in_process_ready(key),
            }
        }
        self.doorbell = Some(doorbell);
    }

    fn attach_in_process(&mut self, ends: Box<ShardEnds>) {
        // A shard that is stopping takes no new connection: dropping the ends tells the
        // handle it is closed.
        if self.is_draining() {
            return;
        }
        let key = ends.state.key;
        let entry = self.connections.vacant_entry();
        let id = ConnectionId {
            index: entry.key() as u32,
            generation: self.next_generation,
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        entry.insert(Connection::in_process(
            ends,
            id,
            self.config.outbound_bytes_max,
        ));
        self.in_process.insert(key, id);
        log::debug!(
            "event=connection_opened shard={} conn={} protocol=inprocess",
            self.id,
            id
        );
        // Commands may have been pushed before the attach was seen.
        self.in_process_ready(key);
    }

    fn in_process_ready(&mut self, key: u64) {
        let Some(&id) = self.in_process.get(&key) else {
            // Rung by a handle whose connection closed meanwhile.
            self.counters.stale_events += 1;
            return;
        };
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        // The ring may be rung because the handle made room for events.
        if conn.write_blocked {
            conn.write_blocked = false;
            self.mark_dirty(id);
        }
        if self.process_commands(id) == Flow::Blocked {
            self.block(id);
        }
    }

    /// Carries out the commands in the handle's ring, as far as room, the per-turn budget and
    /// a publisher stall allow (the in-process counterpart of reading a socket).
    pub(super) fn process_commands(&mut self, id: ConnectionId) -> Flow {
        let mut took_any = false;
        let flow = self.process_commands_taking(id, &mut took_any);
        if took_any {
            if let Some(Transport::InProcess(ends)) =
                self.connection_mut(id).map(|conn| &conn.socket)
            {
                // A publisher waiting for room in its ring can go on. The fence pairs with
                // the handle's: either it sees the room, or this sees its flag.
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                if ends
                    .state
                    .command_room_wanted
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    ends.state.to_handle.notify();
                }
            }
        }
        flow
    }

    fn process_commands_taking(&mut self, id: ConnectionId, took_any: &mut bool) -> Flow {
        let reply_bytes_max = self.config.outbound_bytes_max;
        let mut budget = COMMANDS_PER_TURN_MAX;
        // Once per pass over the ring, as once per socket read for the other kinds.
        self.clock_ns = super::commands::unix_time_ns();
        loop {
            let Some(conn) = self.connection_mut(id) else {
                return Flow::Stop;
            };
            if conn.is_closing() {
                return Flow::Stop;
            }
            if conn.blocked || conn.read_stalled {
                conn.read_more = true;
                return Flow::Continue;
            }
            // A handle that does not take its replies stops being served (backpressure).
            if conn.out.unwritten_reply_bytes() > reply_bytes_max {
                conn.read_more = true;
                self.mark_dirty(id);
                return Flow::Continue;
            }
            if budget == 0 {
                conn.read_more = true;
                self.read_again.push(id);
                return Flow::Continue;
            }
            let Transport::InProcess(ends) = &mut conn.socket else {
                return Flow::Stop;
            };
            let command = match ends.held.take() {
                Some(command) => command,
                None => match ends.commands.try_recv() {
                    Some(command) => {
                        *took_any = true;
                        command
                    }
                    None => {
                        ends.state.unschedule();
                        // A command pushed just before `unschedule` did not ring.
                        if !ends.commands.is_empty() {
                            continue;
                        }
                        conn.read_more = false;
                        if ends
                            .state
                            .handle_gone
                            .load(std::sync::atomic::Ordering::SeqCst)
                        {
                            self.close_now(id, CloseReason::PeerClosed);
                            return Flow::Stop;
                        }
                        return Flow::Continue;
                    }
                },
            };
            let last_publish_slot = ends.last_publish_slot;
            budget -= 1;
            self.stall_reader = false;
            self.reading = true;
            let handled = self.handle_command(id, command, last_publish_slot);
            self.reading = false;
            match handled {
                Ok(Flow::Continue) => {}
                Ok(flow) => return flow,
                Err(command) => {
                    if let Some(Transport::InProcess(ends)) =
                        self.connection_mut(id).map(|conn| &mut conn.socket)
                    {
                        ends.held = Some(command);
                    }
                    return Flow::Blocked;
                }
            }
            if self.stall_reader {
                self.stall(id);
                return Flow::Continue;
            }
        }
    }

    /// One command, through the handlers every connection kind shares. A command postponed
    /// for lack of room comes back, to be carried out first next time (the handlers change
    /// nothing before they postpone).
    fn handle_command(
        &mut self,
        id: ConnectionId,
        command: Command,
        last_publish_slot: Option<TopicSlot>,
    ) -> Result<Flow, Command> {
        let flow = match &command {
            Command::Publish { .. } => {
                let Command::Publish {
                    request_id,
                    message,
                    quiet,
                    same_topic,
                } = command
                else {
                    return Ok(Flow::Continue);
                };
                let remembered = last_publish_slot.filter(|_| same_topic);
                return self
                    .publish_message(id, (request_id, quiet), remembered, message)
                    .map_err(|message| Command::Publish {
                        request_id,
                        message,
                        quiet,
                        same_topic,
                    });
            }
            Command::Subscribe {
                request_id,
                sub_id,
                subject,
                options,
            } => self.handle_subscribe(
                id,
                *request_id,
                *sub_id,
                subject.as_bytes(),
                (**options).clone(),
            ),
            Command::Unsubscribe { request_id, sub_id } => {
                self.handle_unsubscribe(id, *request_id, *sub_id)
            }
            Command::Ack {
                request_id,
                sub_id,
                topic,
                seq,
                kind,
            } => self.handle_ack(id, *request_id, (*sub_id, topic.as_bytes()), (*seq, *kind)),
            Command::CreateTopic {
                request_id,
                topic,
                options,
            } => self.handle_create_topic(id, *request_id, topic.as_bytes(), **options),
            Command::DeleteTopic { request_id, topic } => {
                self.handle_delete_topic(id, *request_id, topic.as_bytes())
            }
            Command::Stats { request_id } => self.gather_for_handle(id, *request_id),
        };
        match flow {
            Flow::Blocked => Err(command),
            flow => Ok(flow),
        }
    }

    /// A publish whose frame the handle built (and whose topic and sizes it checked with the
    /// same rules): what `handle_publish` does once it has built the frame. Kept apart from
    /// it so the native per-message path is not touched.
    /// `remembered`: where this handle's previous publish, to the same topic, found it.
    fn publish_message(
        &mut self,
        id: ConnectionId,
        (request_id, quiet): (u32, bool),
        remembered: Option<TopicSlot>,
        message: Message,
    ) -> Result<Flow, Message> {
        let topic = message.topic();
        let (owner, slot) = match remembered.filter(|slot| self.owned.holds(*slot, topic)) {
            Some(slot) => (self.id, Some(slot)),
            None => {
                let (owner, slot) =
                    match self.look_up_topic(None, topic.as_bytes(), PublishedNames::Topics) {
                        TopicLookup::Held(_, slot) => (self.id, Some(slot)),
                        // The handle checked the name with the broker's rules.
                        TopicLookup::Unheld(owner) => {
                            (owner.unwrap_or_else(|| self.owner_of(topic)), None)
                        }
                    };
                // Remembered even if the publish waits: a command retried is the same topic.
                if let Some(Transport::InProcess(ends)) =
                    self.connection_mut(id).map(|conn| &mut conn.socket)
                {
                    ends.last_publish_slot = slot;
                }
                (owner, slot)
            }
        };
        match self.admit_publish(id, request_id, owner) {
            Some(Flow::Blocked) => Err(message),
            Some(flow) => Ok(flow),
            None => {
                self.route_publish(id, (request_id, quiet), (owner, slot), message);
                Ok(Flow::Continue)
            }
        }
    }

    /// Asks every shard for its stats part, as an HTTP `/v1/stats` does.
    fn gather_for_handle(&mut self, id: ConnectionId, request_id: u32) -> Flow {
        if !self.peers_mut().all(|link| link.requests_out.make_room()) {
            return Flow::Blocked;
        }
        let Some(Transport::InProcess(ends)) = self.connection_mut(id).map(|conn| &mut conn.socket)
        else {
            return Flow::Stop;
        };
        ends.gathering = Some((request_id, Vec::new()));
        self.start_gathering(id, request_id);
        Flow::Continue
    }

    /// A shard's stats part for a handle's gather; answers once every shard has.
    pub(super) fn in_process_stats_part(&mut self, reply: ReplyTarget, part: ShardStats) {
        let shards = self.shard_count;
        let Some(Transport::InProcess(ends)) = self
            .connection_mut(reply.connection)
            .map(|conn| &mut conn.socket)
        else {
            return;
        };
        let Some((request_id, parts)) = &mut ends.gathering else {
            return;
        };
        if *request_id != reply.request_id {
            return;
        }
        parts.push(part);
        if parts.len() == shards {
            self.in_process_answer_stats(reply);
        }
    }

    /// Answers a handle's gather with what came (all parts, or those before the deadline).
    pub(super) fn in_process_answer_stats(&mut self, reply: ReplyTarget) {
        let shards = self.shard_count;
        let Some(Transport::InProcess(ends)) = self
            .connection_mut(reply.connection)
            .map(|conn| &mut conn.socket)
        else {
            return;
        };
        // The deadline of a gather answered already may come up during a later one.
        if ends.gathering.as_ref().map(|(id, _)| *id) != Some(reply.request_id) {
            return;
        }
        let Some((request_id, parts)) = ends.gathering.take() else {
            return;
        };
        ends.waiting = Some(Event::Stats {
            request_id,
            parts,
            shards,
        });
        self.mark_dirty(reply.connection);
    }
}

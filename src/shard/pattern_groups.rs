//! Groups subscribed with a pattern (`orders.*` as group `billing`): each message on a matching
//! topic goes to one member of the group.
//!
//! Any shard may own a matching topic, so every shard holds every such group's member list
//! (joins and leaves are broadcast, like pattern interest) and the owner that sequences a
//! message picks the member. Each owner keeps its own round-robin position, so the split is
//! even per owner and therefore overall.
//!
//! A group made with acks is at-least-once. Acks, redelivery and dead letters are per topic
//! (sequence numbers are), so for each matching topic it owns, an owner keeps a group
//! [`Consumer`](crate::shard::consumers::Consumer) under the group's [`consumer_key`], made when
//! the first message for the group arrives on that topic, with the pattern group's members.
//! Joins and leaves are applied to those consumers too, so a member that goes away hands its
//! unacknowledged messages to the others, as in an exact-topic group. Without acks the owner
//! just picks a member per message here.

use ahash::AHashMap;
use slab::Slab;

use crate::protocol::subscribe_options::AckSettings;
use crate::shard::consumers::Member;
use crate::shard::sublist::Sublist;

/// The name of a pattern group's per-topic consumer. `@` cannot appear in a consumer or group
/// name, so it never collides with an exact-topic consumer of the same topic.
pub fn consumer_key(pattern: &str, group: &str) -> Box<str> {
    format!("{group}@{pattern}").into()
}

struct Group {
    pattern: Box<str>,
    name: Box<str>,
    members: Vec<Member>,
    next_member: usize,
    /// Fixed by the first join: with acks, members are served by per-topic consumers.
    acks: Option<AckSettings>,
    consumer_key: Box<str>,
}

/// An at-least-once pattern group matching a topic, as its owner needs it to make the
/// topic's consumer for the group.
pub struct AckedGroup<'a> {
    pub consumer_key: &'a str,
    pub acks: AckSettings,
    pub members: &'a [Member],
}

pub struct PatternGroups {
    groups: Slab<Group>,
    /// Groups with acks, so publishing skips the per-topic consumer check when there are none.
    acked_len: usize,
    by_key: AHashMap<(Box<str>, Box<str>), usize>,
    matcher: Sublist<u32>,
}

impl PatternGroups {
    pub fn new(cache_entries_max: usize) -> Self {
        PatternGroups {
            groups: Slab::new(),
            acked_len: 0,
            by_key: AHashMap::new(),
            matcher: Sublist::new(cache_entries_max),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn has_acked(&self) -> bool {
        self.acked_len > 0
    }

    /// The ack settings of an existing group: `Some(None)` for an at-most-once group, `None`
    /// when no such group exists here.
    pub fn settings(&self, pattern: &str, name: &str) -> Option<Option<AckSettings>> {
        let key = (Box::<str>::from(pattern), Box::<str>::from(name));
        self.by_key.get(&key).map(|&index| self.groups[index].acks)
    }

    /// Adds a member; the first one fixes whether the group takes acks.
    pub fn join(&mut self, pattern: &str, name: &str, member: Member, acks: Option<AckSettings>) {
        let key = (Box::<str>::from(pattern), Box::<str>::from(name));
        let index = match self.by_key.get(&key) {
            Some(&index) => index,
            None => {
                let index = self.groups.insert(Group {
                    pattern: key.0.clone(),
                    name: key.1.clone(),
                    members: Vec::new(),
                    next_member: 0,
                    acks,
                    consumer_key: consumer_key(pattern, name),
                });
                self.matcher.insert(pattern, index as u32);
                self.by_key.insert(key, index);
                self.acked_len += usize::from(acks.is_some());
                index
            }
        };
        self.groups[index].members.push(member);
    }

    /// Members are told apart by shard and subscriber: connection ids are per shard.
    pub fn leave(&mut self, pattern: &str, name: &str, leaving: Member) {
        let key = (Box::<str>::from(pattern), Box::<str>::from(name));
        let Some(&index) = self.by_key.get(&key) else {
            return;
        };
        let group = &mut self.groups[index];
        group.members.retain(|m| *m != leaving);
        if group.members.is_empty() {
            let group = self.groups.remove(index);
            self.acked_len -= usize::from(group.acks.is_some());
            self.matcher.remove(&group.pattern, index as u32);
            self.by_key.remove(&(group.pattern, group.name));
        }
    }

    /// One member of every at-most-once group whose pattern matches `topic`.
    pub fn pick_members(&mut self, topic: &str, mut picked: impl FnMut(Member)) {
        for &index in self.matcher.match_cached(topic) {
            let group = &mut self.groups[index as usize];
            if group.acks.is_some() {
                continue;
            }
            let member = group.members[group.next_member % group.members.len()];
            group.next_member = group.next_member.wrapping_add(1);
            picked(member);
        }
    }

    /// Calls `each` for every at-least-once group whose pattern matches `topic`.
    pub fn for_each_acked(&mut self, topic: &str, mut each: impl FnMut(AckedGroup<'_>)) {
        let groups = &self.groups;
        for &index in self.matcher.match_cached(topic) {
            let group = &groups[index as usize];
            if let Some(acks) = group.acks {
                each(AckedGroup {
                    consumer_key: &group.consumer_key,
                    acks,
                    members: &group.members,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(index: u32) -> Member {
        crate::shard::consumers::test_member(index)
    }

    fn picks(groups: &mut PatternGroups, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        groups.pick_members(topic, |member| out.push(member));
        let mut picked: Vec<u32> = out.iter().map(|m| m.subscriber.connection.index).collect();
        picked.sort_unstable();
        picked
    }

    #[test]
    fn acked_groups_are_left_to_their_consumers() {
        let mut groups = PatternGroups::new(16);
        let acks = AckSettings::default();
        groups.join("a.*", "plain", member(1), None);
        groups.join("a.*", "acked", member(2), Some(acks));
        groups.join("a.*", "acked", member(3), None);
        assert_eq!(
            groups.settings("a.*", "acked"),
            Some(Some(acks)),
            "first join wins"
        );
        assert_eq!(groups.settings("a.*", "plain"), Some(None));
        assert_eq!(groups.settings("a.*", "none"), None);
        assert_eq!(
            picks(&mut groups, "a.b"),
            [1],
            "only the at-most-once group picks"
        );
        let mut seen = Vec::new();
        groups.for_each_acked("a.b", |group| {
            seen.push((group.consumer_key.to_owned(), group.members.len()))
        });
        assert_eq!(seen, [("acked@a.*".to_owned(), 2)]);
        groups.for_each_acked("b.b", |_| panic!("no match"));
    }

    #[test]
    fn members_take_turns_and_groups_are_independent() {
        let mut groups = PatternGroups::new(16);
        groups.join("a.*", "g", member(1), None);
        groups.join("a.*", "g", member(2), None);
        groups.join("a.>", "h", member(3), None);
        assert_eq!(picks(&mut groups, "a.b"), [1, 3]);
        assert_eq!(picks(&mut groups, "a.c"), [2, 3]);
        assert_eq!(picks(&mut groups, "b.c"), Vec::<u32>::new());
        groups.leave("a.*", "g", member(1));
        assert_eq!(picks(&mut groups, "a.b"), [2, 3]);
        groups.leave("a.*", "g", member(2));
        groups.leave("a.>", "h", member(3));
        assert!(groups.is_empty());
        assert!(picks(&mut groups, "a.b").is_empty());
    }
}

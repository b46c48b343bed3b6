//! Groups subscribed with a pattern (`orders.*` as group `billing`): each message on a matching
//! topic goes to one member of the group.
//!
//! Any shard may own a matching topic, so every shard holds every such group's member list
//! (joins and leaves are broadcast, like pattern interest) and the owner that sequences a
//! message picks the member. Each owner keeps its own round-robin position, so the split is
//! even per owner and therefore overall. Pattern groups are at-most-once: acknowledgements need
//! a per-topic consumer, which exact-topic groups have (see `consumers`).

use ahash::AHashMap;
use slab::Slab;

use crate::shard::consumers::Member;
use crate::shard::sublist::Sublist;

struct Group {
    pattern: Box<str>,
    name: Box<str>,
    members: Vec<Member>,
    next_member: usize,
}

pub struct PatternGroups {
    groups: Slab<Group>,
    by_key: AHashMap<(Box<str>, Box<str>), usize>,
    matcher: Sublist<u32>,
}

impl PatternGroups {
    pub fn new(cache_entries_max: usize) -> Self {
        PatternGroups {
            groups: Slab::new(),
            by_key: AHashMap::new(),
            matcher: Sublist::new(cache_entries_max),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    pub fn join(&mut self, pattern: &str, name: &str, member: Member) {
        let key = (Box::<str>::from(pattern), Box::<str>::from(name));
        let index = match self.by_key.get(&key) {
            Some(&index) => index,
            None => {
                let index = self.groups.insert(Group {
                    pattern: key.0.clone(),
                    name: key.1.clone(),
                    members: Vec::new(),
                    next_member: 0,
                });
                self.matcher.insert(pattern, index as u32);
                self.by_key.insert(key, index);
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
            self.matcher.remove(&group.pattern, index as u32);
            self.by_key.remove(&(group.pattern, group.name));
        }
    }

    /// One member of every group whose pattern matches `topic`.
    pub fn pick_members(&mut self, topic: &str, out: &mut Vec<Member>) {
        for &index in self.matcher.match_cached(topic) {
            let group = &mut self.groups[index as usize];
            let member = group.members[group.next_member % group.members.len()];
            group.next_member = group.next_member.wrapping_add(1);
            out.push(member);
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
        groups.pick_members(topic, &mut out);
        let mut picked: Vec<u32> = out.iter().map(|m| m.subscriber.connection.index).collect();
        picked.sort_unstable();
        picked
    }

    #[test]
    fn members_take_turns_and_groups_are_independent() {
        let mut groups = PatternGroups::new(16);
        groups.join("a.*", "g", member(1));
        groups.join("a.*", "g", member(2));
        groups.join("a.>", "h", member(3));
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

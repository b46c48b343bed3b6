//! The shard's subscription index: which values (subscriptions) want a given exact topic.
//!
//! Patterns live in a trie of `.`-separated tokens, in the manner of nats-server's sublist,
//! so matching a publish costs in proportion to the topic's token count and the number of
//! matches, never to the number of patterns a shard holds. A bounded per-topic cache sits in
//! front because publishers tend to reuse a small set of topics while the subscription set
//! changes rarely; any change throws the cache away wholesale, which is simpler and safer
//! than patching entries.
//!
//! Patterns and topics are expected to be validated by [`crate::protocol::topic`] already.
//! Unvalidated input never panics; it is stored or matched literally and the results are
//! simply meaningless.

use ahash::AHashMap;

use crate::protocol::glob::GlobIndex;
use crate::protocol::resp_channel::topic_to_channel;
use crate::protocol::topic::{glob_of_subject, FULL_WILDCARD, SINGLE_WILDCARD};

/// Pattern subscriptions matched without scanning every pattern. `V` is whatever identifies
/// a subscription to the caller; it is compared with `==` on removal.
#[derive(Debug)]
pub struct Sublist<V> {
    root: Node<V>,
    /// Redis glob subscriptions (subjects marked with [`crate::protocol::topic::GLOB_MARK`]), matched against a
    /// topic's Redis channel name beside the token trie.
    globs: GlobIndex<V>,
    instance_count: usize,
    generation: u64,
    cache: AHashMap<Box<str>, Vec<V>>,
    /// The generation the cached results were computed at; the cache is stale when it
    /// differs, and is emptied lazily on the next lookup so that a burst of subscribes pays
    /// for one clear, not one per subscribe.
    cache_generation: u64,
    cache_entries_max: usize,
    /// Holds the last result when caching is disabled, so `match_cached` can still return a
    /// slice without allocating per call.
    uncached_matches: Vec<V>,
}

#[derive(Debug)]
struct Node<V> {
    literal_children: AHashMap<Box<str>, Node<V>>,
    single_wildcard_child: Option<Box<Node<V>>>,
    /// Values whose pattern ends at this node.
    ends_here: Vec<V>,
    /// Values whose pattern is this node's path followed by `>`. Kept on the parent because
    /// `>` is always last, so it never needs children of its own.
    full_wildcard_below: Vec<V>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Node {
            literal_children: AHashMap::new(),
            single_wildcard_child: None,
            ends_here: Vec::new(),
            full_wildcard_below: Vec::new(),
        }
    }

    fn is_unused(&self) -> bool {
        self.ends_here.is_empty()
            && self.full_wildcard_below.is_empty()
            && self.literal_children.is_empty()
            && self.single_wildcard_child.is_none()
    }

    fn child_or_insert(&mut self, token: &str) -> &mut Node<V> {
        if token == SINGLE_WILDCARD {
            self.single_wildcard_child
                .get_or_insert_with(|| Box::new(Node::new()))
        } else {
            // Allocating the key even when the child exists is fine: this is the subscribe
            // path, which is rare next to publishes.
            self.literal_children
                .entry(Box::from(token))
                .or_insert_with(Node::new)
        }
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        1 + self
            .literal_children
            .values()
            .map(Node::count)
            .sum::<usize>()
            + self.single_wildcard_child.as_deref().map_or(0, Node::count)
    }
}

impl<V: Copy + Eq> Sublist<V> {
    /// `cache_entries_max` bounds the match cache (0 disables it).
    pub fn new(cache_entries_max: usize) -> Self {
        Sublist {
            root: Node::new(),
            globs: GlobIndex::new(0),
            instance_count: 0,
            generation: 0,
            cache: AHashMap::new(),
            cache_generation: 0,
            cache_entries_max,
            uncached_matches: Vec::new(),
        }
    }

    /// Adds one instance of `value` under `pattern`. Multiset: the same (pattern, value) may
    /// be inserted twice and must then be removed twice.
    pub fn insert(&mut self, pattern: &str, value: V) {
        if let Some(glob) = glob_of_subject(pattern) {
            self.globs.insert(&glob, value);
            self.instance_count += 1;
            self.generation = self.generation.wrapping_add(1);
            return;
        }
        let mut node = &mut self.root;
        let mut remaining = pattern;
        loop {
            let (token, rest) = split_first_token(remaining);
            match rest {
                None if token == FULL_WILDCARD => {
                    node.full_wildcard_below.push(value);
                    break;
                }
                None => {
                    node.child_or_insert(token).ends_here.push(value);
                    break;
                }
                Some(rest) => {
                    node = node.child_or_insert(token);
                    remaining = rest;
                }
            }
        }
        self.instance_count += 1;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Removes one instance; returns false if absent. Prunes nodes left empty so memory
    /// follows the live set. A failed removal changes nothing, so it keeps the generation
    /// (and the cache).
    pub fn remove(&mut self, pattern: &str, value: V) -> bool {
        let removed = match glob_of_subject(pattern) {
            Some(glob) => self.globs.remove(&glob, &value),
            None => remove_below(&mut self.root, pattern, value),
        };
        if removed {
            self.instance_count -= 1;
            self.generation = self.generation.wrapping_add(1);
        }
        removed
    }

    /// Appends the values whose pattern matches exact `topic` (one entry per inserted
    /// instance) to `out`, in no particular order.
    pub fn match_into(&self, topic: &str, out: &mut Vec<V>) {
        collect_all(&self.root, &self.globs, topic, out);
    }

    /// [`Sublist::match_into`] through the bounded cache. The slice is valid until the next
    /// `&mut` call.
    pub fn match_cached(&mut self, topic: &str) -> &[V] {
        if self.cache_entries_max == 0 {
            self.uncached_matches.clear();
            collect_all(&self.root, &self.globs, topic, &mut self.uncached_matches);
            return &self.uncached_matches;
        }
        if self.cache_generation != self.generation {
            // `clear` touches every control byte even when empty, so skip it when possible.
            if !self.cache.is_empty() {
                self.cache.clear();
            }
            self.cache_generation = self.generation;
        }
        if !self.cache.contains_key(topic) {
            if self.cache.len() >= self.cache_entries_max {
                self.evict_some_cache_entries();
            }
            let mut matches = Vec::new();
            collect_all(&self.root, &self.globs, topic, &mut matches);
            self.cache.insert(Box::from(topic), matches);
        }
        self.cache.get(topic).map_or(&[], Vec::as_slice)
    }

    /// Bumped by every insert and successful remove.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of inserted instances.
    pub fn len(&self) -> usize {
        self.instance_count
    }

    pub fn is_empty(&self) -> bool {
        self.instance_count == 0
    }

    /// Entries currently held by the match cache, stale ones included.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Drops an arbitrary quarter of the entries in one pass (as nats-server does), so the
    /// pass is amortised over many misses instead of scanning the table on each one, while
    /// most hot entries survive, unlike clearing everything.
    fn evict_some_cache_entries(&mut self) {
        let mut to_drop = (self.cache_entries_max / 4).max(1);
        self.cache.retain(|_, _| {
            if to_drop == 0 {
                return true;
            }
            to_drop -= 1;
            false
        });
    }

    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.root.count()
    }
}

/// `("a", Some("b.c"))` for `"a.b.c"`; `("c", None)` for the last token.
fn split_first_token(name: &str) -> (&str, Option<&str>) {
    match name.split_once('.') {
        Some((token, rest)) => (token, Some(rest)),
        None => (name, None),
    }
}

/// Token patterns from the trie, then globs (only when there are any: naming the channel
/// costs a scan of the topic).
fn collect_all<V: Copy + PartialEq>(
    root: &Node<V>,
    globs: &GlobIndex<V>,
    topic: &str,
    out: &mut Vec<V>,
) {
    collect_matches(root, topic, out);
    if !globs.is_empty() {
        globs.match_into(&topic_to_channel(topic), out);
    }
}

/// `remaining` holds at least one token of the topic. Recursion depth is bounded by the
/// trie's depth, which validated patterns bound at 128 tokens.
fn collect_matches<V: Copy>(node: &Node<V>, remaining: &str, out: &mut Vec<V>) {
    // `>` needs at least one token, and `remaining` always has one.
    out.extend_from_slice(&node.full_wildcard_below);
    let (token, rest) = split_first_token(remaining);
    // Skips hashing the token for the common `*`-only or leaf nodes.
    if !node.literal_children.is_empty() {
        if let Some(child) = node.literal_children.get(token) {
            collect_in_child(child, rest, out);
        }
    }
    if let Some(child) = node.single_wildcard_child.as_deref() {
        collect_in_child(child, rest, out);
    }
}

fn collect_in_child<V: Copy>(child: &Node<V>, rest: Option<&str>, out: &mut Vec<V>) {
    match rest {
        Some(rest) => collect_matches(child, rest, out),
        None => out.extend_from_slice(&child.ends_here),
    }
}

/// Removes one instance of `value` under `remaining` (at least one token) below `node`,
/// dropping any child the removal leaves unused.
fn remove_below<V: Eq>(node: &mut Node<V>, remaining: &str, value: V) -> bool {
    let (token, rest) = split_first_token(remaining);
    if rest.is_none() && token == FULL_WILDCARD {
        return remove_one(&mut node.full_wildcard_below, value);
    }
    if token == SINGLE_WILDCARD {
        let Some(child) = node.single_wildcard_child.as_deref_mut() else {
            return false;
        };
        let removed = remove_in_child(child, rest, value);
        if removed && child.is_unused() {
            node.single_wildcard_child = None;
        }
        removed
    } else {
        let Some(child) = node.literal_children.get_mut(token) else {
            return false;
        };
        let removed = remove_in_child(child, rest, value);
        if removed && child.is_unused() {
            node.literal_children.remove(token);
            shrink_map_if_sparse(&mut node.literal_children);
        }
        removed
    }
}

fn remove_in_child<V: Eq>(child: &mut Node<V>, rest: Option<&str>, value: V) -> bool {
    match rest {
        Some(rest) => remove_below(child, rest, value),
        None => remove_one(&mut child.ends_here, value),
    }
}

fn remove_one<V: Eq>(values: &mut Vec<V>, value: V) -> bool {
    let Some(index) = values.iter().position(|v| *v == value) else {
        return false;
    };
    values.swap_remove(index);
    // Hysteresis (shrink only at a quarter full) keeps a pattern whose subscriber count
    // hovers around a boundary from reallocating on every change.
    if values.capacity() > 16 && values.len() < values.capacity() / 4 {
        values.shrink_to(values.len() * 2);
    }
    true
}

fn shrink_map_if_sparse<K: Eq + std::hash::Hash, T>(map: &mut AHashMap<K, T>) {
    let live = map.len();
    if map.capacity() > 16 && live < map.capacity() / 4 {
        map.shrink_to(live * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::topic::pattern_matches;
    use proptest::prelude::*;

    fn sorted(mut values: Vec<u32>) -> Vec<u32> {
        values.sort_unstable();
        values
    }

    fn matches(sublist: &Sublist<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        sublist.match_into(topic, &mut out);
        sorted(out)
    }

    fn cached(sublist: &mut Sublist<u32>, topic: &str) -> Vec<u32> {
        sorted(sublist.match_cached(topic).to_vec())
    }

    #[test]
    fn exact_patterns_match_only_their_topic() {
        let mut sublist = Sublist::new(0);
        sublist.insert("a.b", 1);
        sublist.insert("a", 2);
        sublist.insert("a.b.c", 3);
        assert_eq!(matches(&sublist, "a.b"), vec![1]);
        assert_eq!(matches(&sublist, "a"), vec![2]);
        assert_eq!(matches(&sublist, "a.b.c"), vec![3]);
        assert_eq!(matches(&sublist, "a.c"), Vec::<u32>::new());
        assert_eq!(matches(&sublist, "b"), Vec::<u32>::new());
    }

    #[test]
    fn single_wildcard_matches_exactly_one_token() {
        let mut sublist = Sublist::new(0);
        sublist.insert("a.*", 1);
        sublist.insert("*.b", 2);
        sublist.insert("*", 3);
        sublist.insert("a.*.c", 4);
        assert_eq!(matches(&sublist, "a.b"), vec![1, 2]);
        assert_eq!(matches(&sublist, "x.b"), vec![2]);
        assert_eq!(matches(&sublist, "a"), vec![3]);
        assert_eq!(matches(&sublist, "a.b.c"), vec![4]);
        assert_eq!(matches(&sublist, "a.b.d"), Vec::<u32>::new());
    }

    #[test]
    fn full_wildcard_matches_one_or_more_tokens() {
        let mut sublist = Sublist::new(0);
        sublist.insert("a.>", 1);
        sublist.insert(">", 2);
        sublist.insert("*.>", 3);
        assert_eq!(matches(&sublist, "a"), vec![2]);
        assert_eq!(matches(&sublist, "a.b"), vec![1, 2, 3]);
        assert_eq!(matches(&sublist, "a.b.c"), vec![1, 2, 3]);
        assert_eq!(matches(&sublist, "b.c"), vec![2, 3]);
    }

    #[test]
    fn instances_are_counted_as_a_multiset() {
        let mut sublist = Sublist::new(0);
        sublist.insert("a.*", 7);
        sublist.insert("a.*", 7);
        sublist.insert("a.>", 7);
        assert_eq!(sublist.len(), 3);
        assert_eq!(matches(&sublist, "a.b"), vec![7, 7, 7]);
        assert!(sublist.remove("a.*", 7));
        assert_eq!(matches(&sublist, "a.b"), vec![7, 7]);
        assert!(sublist.remove("a.*", 7));
        assert!(!sublist.remove("a.*", 7));
        assert_eq!(matches(&sublist, "a.b"), vec![7]);
        assert!(!sublist.remove("a.>", 8));
        assert!(!sublist.remove("x.y", 7));
        assert!(sublist.remove("a.>", 7));
        assert!(sublist.is_empty());
    }

    #[test]
    fn removal_prunes_back_to_the_root() {
        let mut sublist = Sublist::new(16);
        let patterns = [
            "a", "a.b.c", "a.*.c", "*.*.*", "a.>", ">", "$dlq.>", "x.y.z.w",
        ];
        for (value, pattern) in patterns.iter().enumerate() {
            sublist.insert(pattern, value as u32);
        }
        assert!(sublist.node_count() > 1);
        // Removing a prefix first must not prune nodes still needed below it.
        assert!(sublist.remove("a", 0));
        assert_eq!(matches(&sublist, "a.b.c"), vec![1, 2, 3, 4, 5]);
        for (value, pattern) in patterns.iter().enumerate().skip(1) {
            assert!(sublist.remove(pattern, value as u32), "{pattern}");
        }
        assert!(sublist.is_empty());
        assert_eq!(sublist.node_count(), 1);
    }

    #[test]
    fn many_literal_children_shrink_after_removal() {
        let mut sublist = Sublist::new(0);
        for value in 0..1000 {
            sublist.insert(&format!("t{value}"), value);
        }
        for value in 0..1000 {
            assert!(sublist.remove(&format!("t{value}"), value));
        }
        assert_eq!(sublist.node_count(), 1);
        assert!(sublist.root.literal_children.capacity() <= 16);
    }

    #[test]
    fn cache_never_serves_a_result_from_before_a_change() {
        let mut sublist = Sublist::new(8);
        sublist.insert("a.*", 1);
        assert_eq!(cached(&mut sublist, "a.b"), vec![1]);
        assert_eq!(sublist.cache_len(), 1);
        assert_eq!(cached(&mut sublist, "a.b"), vec![1]);

        let before = sublist.generation();
        sublist.insert("a.b", 2);
        assert_ne!(sublist.generation(), before);
        assert_eq!(cached(&mut sublist, "a.b"), vec![1, 2]);

        assert!(sublist.remove("a.*", 1));
        assert_eq!(cached(&mut sublist, "a.b"), vec![2]);

        let before = sublist.generation();
        assert!(!sublist.remove("a.*", 1));
        assert_eq!(sublist.generation(), before);

        // An empty result is cached too, and must also be invalidated.
        assert_eq!(cached(&mut sublist, "c"), Vec::<u32>::new());
        sublist.insert(">", 3);
        assert_eq!(cached(&mut sublist, "c"), vec![3]);
    }

    #[test]
    fn cache_stays_within_its_bound() {
        let mut sublist = Sublist::new(10);
        sublist.insert(">", 1);
        for i in 0..1000 {
            let topic = format!("t.{i}");
            assert_eq!(cached(&mut sublist, &topic), vec![1]);
            assert!(sublist.cache_len() <= 10);
        }
        assert!(sublist.cache_len() > 0);
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let mut sublist = Sublist::new(0);
        sublist.insert("a", 1);
        assert_eq!(cached(&mut sublist, "a"), vec![1]);
        assert_eq!(cached(&mut sublist, "b"), Vec::<u32>::new());
        assert_eq!(sublist.cache_len(), 0);
    }

    #[test]
    fn unvalidated_input_does_not_panic() {
        let mut sublist = Sublist::new(4);
        for pattern in ["", ".", "..", "a..b", ">.a", "a.>.b", "*>", "\u{e9}"] {
            sublist.insert(pattern, 1);
            for topic in ["", ".", "a..b", ">.a", "a.>.b"] {
                let _ = sublist.match_cached(topic);
            }
            assert!(sublist.remove(pattern, 1));
        }
        assert_eq!(sublist.node_count(), 1);
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Insert(String, u32),
        Remove(String, u32),
        /// Removes the model's entry at this index (modulo its length), so removals that
        /// succeed are common rather than left to chance.
        RemoveExisting(usize),
        Match(String),
    }

    fn pattern() -> impl Strategy<Value = String> {
        let prefix_token = prop_oneof![Just("a"), Just("b"), Just("c"), Just("*")];
        let last_token = prop_oneof![Just("a"), Just("b"), Just("c"), Just("*"), Just(">")];
        (proptest::collection::vec(prefix_token, 0..4), last_token).prop_map(|(prefix, last)| {
            let mut tokens = prefix;
            tokens.push(last);
            tokens.join(".")
        })
    }

    fn topic() -> impl Strategy<Value = String> {
        let token = prop_oneof![Just("a"), Just("b"), Just("c"), Just("d")];
        proptest::collection::vec(token, 1..6).prop_map(|tokens| tokens.join("."))
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            3 => (pattern(), 0..4u32).prop_map(|(p, v)| Operation::Insert(p, v)),
            1 => (pattern(), 0..4u32).prop_map(|(p, v)| Operation::Remove(p, v)),
            2 => any::<usize>().prop_map(Operation::RemoveExisting),
            4 => topic().prop_map(Operation::Match),
        ]
    }

    fn model_matches(model: &[(String, u32)], topic: &str) -> Vec<u32> {
        sorted(
            model
                .iter()
                .filter(|(pattern, _)| pattern_matches(pattern, topic))
                .map(|&(_, value)| value)
                .collect(),
        )
    }

    fn model_remove(model: &mut Vec<(String, u32)>, pattern: &str, value: u32) -> bool {
        match model.iter().position(|(p, v)| p == pattern && *v == value) {
            Some(index) => {
                model.swap_remove(index);
                true
            }
            None => false,
        }
    }

    proptest! {
        #[test]
        fn trie_agrees_with_a_naive_model(
            operations in proptest::collection::vec(operation(), 1..80),
            cache_entries_max in 0..6usize,
        ) {
            let mut sublist = Sublist::new(cache_entries_max);
            let mut model: Vec<(String, u32)> = Vec::new();
            for operation in operations {
                match operation {
                    Operation::Insert(pattern, value) => {
                        sublist.insert(&pattern, value);
                        model.push((pattern, value));
                    }
                    Operation::Remove(pattern, value) => {
                        let expected = model_remove(&mut model, &pattern, value);
                        prop_assert_eq!(sublist.remove(&pattern, value), expected);
                    }
                    Operation::RemoveExisting(index) => {
                        if !model.is_empty() {
                            let (pattern, value) = model[index % model.len()].clone();
                            prop_assert!(model_remove(&mut model, &pattern, value));
                            prop_assert!(sublist.remove(&pattern, value));
                        }
                    }
                    Operation::Match(topic) => {
                        let expected = model_matches(&model, &topic);
                        prop_assert_eq!(matches(&sublist, &topic), expected.clone());
                        prop_assert_eq!(cached(&mut sublist, &topic), expected.clone());
                        // A second lookup is served from the cache when it is enabled.
                        prop_assert_eq!(cached(&mut sublist, &topic), expected);
                    }
                }
                prop_assert_eq!(sublist.len(), model.len());
                prop_assert!(sublist.cache_len() <= cache_entries_max);
            }
            for (pattern, value) in model.drain(..) {
                prop_assert!(sublist.remove(&pattern, value));
            }
            prop_assert!(sublist.is_empty());
            prop_assert_eq!(sublist.node_count(), 1);
        }
    }
}

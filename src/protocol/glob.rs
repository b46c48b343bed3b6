//! Redis glob patterns (`PSUBSCRIBE`, `PUBSUB CHANNELS pattern`): the matching rules, and
//! [`GlobIndex`], which finds the patterns matching a channel without testing every pattern.
//!
//! Redis clients expect Redis's own glob semantics, edge cases included (an unterminated
//! `[`, a `\` at the end, reversed ranges), so [`glob_match`] follows the behaviour of
//! Redis's `stringmatchlen` (case-sensitive, as pub/sub uses it) rather than a textbook glob.
//! The rules, as Redis applies them:
//!
//! - `*` matches any run of bytes, but a pattern only matches an empty subject if it is
//!   empty itself (`*` does not match the empty channel name: Redis's loop never starts).
//! - `?` matches one byte.
//! - `[...]` matches one byte from the class, `[^...]` one byte not in it. In a class, `\x`
//!   is the literal `x`, `a-z` is a range (a reversed range `z-a` is swapped), and a class
//!   with no closing `]` runs to the end of the pattern.
//! - `\x` outside a class is the literal `x`; a `\` that ends the pattern is a literal `\`.
//! - Bytes compare as C's signed `char` does on x86-64 in ranges (so `[\x80-\x7f]` behaves
//!   as Redis on Linux/x86-64 does); equality is plain byte equality.
//! - Patterns nesting more than [`GLOB_NESTING_MAX`] `*` match nothing, as in Redis: it bounds
//!   the recursion, and with the "no longer match" cut-off it bounds the time per match.
//!
//! Pure and allocation-free: the subject is a publish's channel name and the pattern comes from
//! a client, so neither may panic the shard.

use std::borrow::Cow;
use std::collections::BTreeMap;

use ahash::AHashMap;

/// Deepest `*` recursion Redis allows before declaring no match.
pub const GLOB_NESTING_MAX: usize = 1000;

/// Does `subject` match the Redis glob `pattern`? Case-sensitive, like Redis pub/sub.
pub fn glob_match(pattern: &[u8], subject: &[u8]) -> bool {
    let mut no_longer_match = false;
    match_at(pattern, subject, &mut no_longer_match, 0)
}

/// The byte at `index`, or 0 past the end: Redis reads the NUL terminator there, and the
/// rules above depend on it (e.g. a `*` peeking at the byte after the last one).
fn byte_at(bytes: &[u8], index: usize) -> u8 {
    bytes.get(index).copied().unwrap_or(0)
}

/// C's `char` is signed on x86-64, and Redis compares class ranges as `int`s of `char`s.
fn as_c_char(byte: u8) -> i32 {
    i32::from(byte as i8)
}

/// `no_longer_match` is shared by the whole call tree: once the tail after some `*` failed at
/// every position, no earlier `*` can help by matching more, so every caller gives up.
fn match_at(pattern: &[u8], subject: &[u8], no_longer_match: &mut bool, nesting: usize) -> bool {
    if nesting > GLOB_NESTING_MAX {
        return false;
    }
    let mut p = 0;
    let mut s = 0;
    while let (Some(&pattern_byte), Some(&subject_byte)) = (pattern.get(p), subject.get(s)) {
        match pattern_byte {
            b'*' => {
                while byte_at(pattern, p + 1) == b'*' {
                    p += 1;
                }
                let Some(rest) = pattern.get(p + 1..).filter(|rest| !rest.is_empty()) else {
                    return true;
                };
                while let Some(tail) = subject.get(s..).filter(|tail| !tail.is_empty()) {
                    if match_at(rest, tail, no_longer_match, nesting + 1) {
                        return true;
                    }
                    if *no_longer_match {
                        return false;
                    }
                    s += 1;
                }
                *no_longer_match = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let negated = byte_at(pattern, p) == b'^';
                if negated {
                    p += 1;
                }
                let mut matched = false;
                loop {
                    let remaining = pattern.len().saturating_sub(p);
                    let current = byte_at(pattern, p);
                    if current == b'\\' && remaining >= 2 {
                        p += 1;
                        if byte_at(pattern, p) == subject_byte {
                            matched = true;
                        }
                    } else if current == b']' {
                        break;
                    } else if remaining == 0 {
                        // Unterminated: step back so that the advance below lands on the end.
                        p -= 1;
                        break;
                    } else if remaining >= 3 && byte_at(pattern, p + 1) == b'-' {
                        let mut start = as_c_char(current);
                        let mut end = as_c_char(byte_at(pattern, p + 2));
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        let c = as_c_char(subject_byte);
                        p += 2;
                        if (start..=end).contains(&c) {
                            matched = true;
                        }
                    } else if current == subject_byte {
                        matched = true;
                    }
                    p += 1;
                }
                if matched == negated {
                    return false;
                }
                s += 1;
            }
            b'\\' => {
                if pattern.len() - p >= 2 {
                    p += 1;
                }
                if byte_at(pattern, p) != subject_byte {
                    return false;
                }
                s += 1;
            }
            literal => {
                if literal != subject_byte {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == subject.len() {
            while byte_at(pattern, p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    p == pattern.len() && s == subject.len()
}

/// The bytes every subject matching `pattern` starts with: the pattern up to its first `*`,
/// `?` or `[`, with `\x` escapes resolved. Borrowed unless an escape had to be resolved.
///
/// A pattern without any of those is matched literally, so its prefix is the whole subject
/// it matches.
pub fn literal_prefix(pattern: &[u8]) -> Cow<'_, [u8]> {
    let mut owned: Option<Vec<u8>> = None;
    let mut i = 0;
    while let Some(&byte) = pattern.get(i) {
        match byte {
            b'*' | b'?' | b'[' => break,
            b'\\' => {
                // `\x` is the literal `x`; a final `\` is a literal `\` (see `glob_match`).
                let literal = match pattern.get(i + 1) {
                    Some(&next) => next,
                    None => b'\\',
                };
                owned
                    .get_or_insert_with(|| pattern[..i].to_vec())
                    .push(literal);
                i += if i + 1 < pattern.len() { 2 } else { 1 };
            }
            _ => {
                if let Some(owned) = owned.as_mut() {
                    owned.push(byte);
                }
                i += 1;
            }
        }
    }
    match owned {
        Some(owned) => Cow::Owned(owned),
        None => Cow::Borrowed(&pattern[..i]),
    }
}

/// Patterns with values, matched against subjects (channel names) without testing every
/// pattern: patterns are grouped by their [`literal_prefix`], and a subject only tests the
/// groups whose prefix it starts with (one hash lookup per distinct prefix length in use, not
/// one per pattern). Patterns that begin with a metacharacter (`*foo`) share the empty prefix
/// and are tested for every subject; that is the price of Redis's free-form globs.
///
/// In front sits a bounded per-subject result cache, as in nats-server's sublist: any insert
/// or successful remove bumps a generation number, and a stale cache is emptied lazily on the
/// next lookup, so a burst of subscribes pays for one clear.
///
/// A multiset: the same (pattern, value) may be inserted twice and must be removed twice.
#[derive(Debug)]
pub struct GlobIndex<T> {
    by_prefix: AHashMap<Box<[u8]>, Vec<Entry<T>>>,
    /// Distinct prefix lengths in use, with how many patterns have each, so a lookup probes
    /// only lengths that can hit.
    prefix_len_counts: BTreeMap<usize, usize>,
    len: usize,
    generation: u64,
    cache: AHashMap<Box<[u8]>, Vec<T>>,
    cache_generation: u64,
    cache_entries_max: usize,
    /// Holds the last result when caching is disabled, so [`GlobIndex::matches`] still
    /// returns a slice without allocating per call.
    uncached: Vec<T>,
}

#[derive(Debug)]
struct Entry<T> {
    pattern: Box<[u8]>,
    value: T,
}

impl<T: Clone + PartialEq> GlobIndex<T> {
    /// `cache_entries_max` bounds the result cache (0 disables it).
    pub fn new(cache_entries_max: usize) -> Self {
        GlobIndex {
            by_prefix: AHashMap::new(),
            prefix_len_counts: BTreeMap::new(),
            len: 0,
            generation: 0,
            cache: AHashMap::new(),
            cache_generation: 0,
            cache_entries_max,
            uncached: Vec::new(),
        }
    }

    /// Adds one instance of `value` under `pattern`.
    pub fn insert(&mut self, pattern: &[u8], value: T) {
        let prefix = literal_prefix(pattern);
        *self.prefix_len_counts.entry(prefix.len()).or_insert(0) += 1;
        self.by_prefix
            .entry(Box::from(prefix.as_ref()))
            .or_default()
            .push(Entry {
                pattern: Box::from(pattern),
                value,
            });
        self.len += 1;
        self.generation = self.generation.wrapping_add(1);
    }

    /// Removes one instance of (`pattern`, `value`); false if there was none, in which case
    /// nothing changes (the cache stays valid).
    pub fn remove(&mut self, pattern: &[u8], value: &T) -> bool {
        let prefix = literal_prefix(pattern);
        let Some(entries) = self.by_prefix.get_mut(prefix.as_ref()) else {
            return false;
        };
        let Some(position) = entries
            .iter()
            .position(|entry| *entry.pattern == *pattern && entry.value == *value)
        else {
            return false;
        };
        entries.swap_remove(position);
        if entries.is_empty() {
            self.by_prefix.remove(prefix.as_ref());
        }
        if let Some(count) = self.prefix_len_counts.get_mut(&prefix.len()) {
            *count -= 1;
            if *count == 0 {
                self.prefix_len_counts.remove(&prefix.len());
            }
        }
        self.len -= 1;
        self.generation = self.generation.wrapping_add(1);
        true
    }

    /// Appends the values of every pattern matching `subject` (one per inserted instance) to
    /// `out`, in no particular order. Bypasses the cache.
    pub fn match_into(&self, subject: &[u8], out: &mut Vec<T>) {
        for &prefix_len in self
            .prefix_len_counts
            .range(..=subject.len())
            .map(|(l, _)| l)
        {
            let Some(entries) = subject
                .get(..prefix_len)
                .and_then(|prefix| self.by_prefix.get(prefix))
            else {
                continue;
            };
            out.extend(
                entries
                    .iter()
                    .filter(|entry| glob_match(&entry.pattern, subject))
                    .map(|entry| entry.value.clone()),
            );
        }
    }

    /// [`GlobIndex::match_into`] through the bounded cache. The slice is valid until the next
    /// `&mut` call.
    pub fn matches(&mut self, subject: &[u8]) -> &[T] {
        if self.cache_entries_max == 0 {
            let mut found = std::mem::take(&mut self.uncached);
            found.clear();
            self.match_into(subject, &mut found);
            self.uncached = found;
            return &self.uncached;
        }
        if self.cache_generation != self.generation {
            if !self.cache.is_empty() {
                self.cache.clear();
            }
            self.cache_generation = self.generation;
        }
        if !self.cache.contains_key(subject) {
            if self.cache.len() >= self.cache_entries_max {
                self.evict_some_cache_entries();
            }
            let mut found = Vec::new();
            self.match_into(subject, &mut found);
            self.cache.insert(Box::from(subject), found);
        }
        self.cache.get(subject).map_or(&[], Vec::as_slice)
    }

    /// Number of inserted instances.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bumped by every insert and successful remove.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Entries held by the result cache, stale ones included.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Drops an arbitrary quarter of the entries in one pass (as nats-server does): the pass
    /// is amortised over many misses while most hot entries survive.
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
    fn check_invariants(&self) {
        let entries: usize = self.by_prefix.values().map(Vec::len).sum();
        assert_eq!(entries, self.len);
        let counted: usize = self.prefix_len_counts.values().sum();
        assert_eq!(counted, self.len);
        for (prefix, entries) in &self.by_prefix {
            assert!(!entries.is_empty());
            assert!(self.prefix_len_counts.contains_key(&prefix.len()));
            for entry in entries {
                assert_eq!(literal_prefix(&entry.pattern).as_ref(), prefix.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(cases: &[(&[u8], &[u8], bool)]) {
        for &(pattern, subject, expected) in cases {
            assert_eq!(
                glob_match(pattern, subject),
                expected,
                "pattern {:?} subject {:?}",
                String::from_utf8_lossy(pattern),
                String::from_utf8_lossy(subject)
            );
        }
    }

    #[test]
    fn literals_and_question_marks() {
        check(&[
            (b"", b"", true),
            (b"", b"a", false),
            (b"a", b"", false),
            (b"abc", b"abc", true),
            (b"abc", b"abd", false),
            (b"abc", b"ab", false),
            (b"ab", b"abc", false),
            (b"?", b"a", true),
            (b"?", b"", false),
            (b"?", b"ab", false),
            (b"a?c", b"abc", true),
            (b"a?c", b"ac", false),
            (b"news.?", b"news.x", true),
            (b"\xff?", b"\xff\x00", true),
        ]);
    }

    #[test]
    fn stars() {
        check(&[
            (b"*", b"a", true),
            (b"*", b"anything at all", true),
            // Redis never enters its loop for an empty subject, so `*` cannot match it.
            (b"*", b"", false),
            (b"**", b"", false),
            (b"a*", b"a", true),
            (b"a**", b"a", true),
            (b"a*", b"abc", true),
            (b"a*", b"ba", false),
            (b"*a", b"a", true),
            (b"*a", b"ba", true),
            (b"*a", b"ab", false),
            (b"*a*", b"bab", true),
            (b"*a*", b"bbb", false),
            (b"a*b*c", b"axxbyyc", true),
            (b"a*b*c", b"axxbyy", false),
            (b"a*b", b"abab", true),
            (b"a*b", b"abac", false),
            (b"news:*", b"news:sport", true),
            (b"news:*", b"news:", true),
            (b"news:*", b"news", false),
            (b"*:*", b"a:b", true),
            (b"*?", b"a", true),
            (b"*?", b"", false),
            (b"?*", b"a", true),
            (b"*??", b"a", false),
            (b"*??", b"ab", true),
        ]);
    }

    #[test]
    fn classes() {
        check(&[
            (b"[abc]", b"a", true),
            (b"[abc]", b"c", true),
            (b"[abc]", b"d", false),
            (b"[abc]", b"", false),
            (b"[^abc]", b"d", true),
            (b"[^abc]", b"a", false),
            (b"[a-c]", b"b", true),
            (b"[a-c]", b"d", false),
            // Reversed ranges are swapped.
            (b"[c-a]", b"b", true),
            (b"[a-cx-z]", b"y", true),
            (b"[a-cx-z]", b"m", false),
            (b"[^a-c]", b"b", false),
            (b"[^a-c]", b"z", true),
            (b"h[ae]llo", b"hello", true),
            (b"h[ae]llo", b"hallo", true),
            (b"h[ae]llo", b"hillo", false),
            // `\` escapes inside a class.
            (b"[\\]]", b"]", true),
            (b"[\\-]", b"-", true),
            (b"[\\^]", b"^", true),
            (b"[a\\-z]", b"b", false),
            (b"[a\\-z]", b"-", true),
            // A `]` first in the class closes it at once: an empty class matches nothing...
            (b"[]", b"]", false),
            (b"[]a", b"a", false),
            // ...and a negated empty class matches any byte.
            (b"[^]", b"x", true),
            (b"[^]x", b"ax", true),
            // `-` at either end is literal, or a range end.
            (b"[-a]", b"-", true),
            (b"[a-]", b"-", false),
            (b"[a-]", b"b", false),
            (b"[a-]", b"_", true),
            (b"[a-]", b"]", true),
            // Unterminated classes run to the end of the pattern.
            (b"[", b"[", false),
            (b"[", b"a", false),
            (b"[a", b"a", true),
            (b"[abc", b"c", true),
            (b"[abc", b"d", false),
            (b"[^a", b"b", true),
            (b"[^", b"a", true),
            (b"[\\", b"\\", true),
            (b"[a-", b"-", true),
            (b"[a-", b"a", true),
            (b"x[", b"x", false),
            (b"x[", b"xy", false),
            // Class then more pattern.
            (b"[ab]*", b"bzz", true),
            (b"*[ab]", b"zzb", true),
            (b"*[ab]", b"zzc", false),
            // Signed `char` ranges: 0x80..=0xff are negative, so they sort below ASCII.
            (b"[\x80-a]", b"0", true),
            (b"[\x80-a]", b"\xff", true),
            (b"[\x80-a]", b"b", false),
            (b"[a-\xff]", b"b", false),
            (b"[a-\xff]", b"\x00", true),
        ]);
    }

    #[test]
    fn escapes() {
        check(&[
            (b"\\*", b"*", true),
            (b"\\*", b"a", false),
            (b"\\?", b"?", true),
            (b"\\?", b"a", false),
            (b"\\[a]", b"[a]", true),
            (b"\\a", b"a", true),
            (b"a\\\\b", b"a\\b", true),
            // A final `\` is a literal backslash.
            (b"\\", b"\\", true),
            (b"a\\", b"a\\", true),
            (b"a\\", b"a", false),
            (b"a\\", b"ab", false),
            (b"*\\*", b"a*", true),
            (b"*\\*", b"ab", false),
        ]);
    }

    #[test]
    fn abusive_patterns_are_bounded() {
        // Exponential without the "no longer match" cut-off.
        let pattern = b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let subject = vec![b'a'; 200];
        assert!(!glob_match(pattern, &subject));
        // Deeper than Redis allows: no match, no stack overflow.
        let deep = b"a*".repeat(GLOB_NESTING_MAX + 5);
        let subject = vec![b'a'; GLOB_NESTING_MAX + 10];
        assert!(!glob_match(&deep, &subject));
        let shallow = b"a*".repeat(10);
        assert!(glob_match(&shallow, &subject));
    }

    #[test]
    fn literal_prefixes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"abc", b"abc"),
            (b"news:*", b"news:"),
            (b"*news", b""),
            (b"a?b", b"a"),
            (b"a[bc]", b"a"),
            (b"a\\*b*", b"a*b"),
            (b"a\\", b"a\\"),
            (b"\\", b"\\"),
            (b"a\\\\*", b"a\\"),
        ];
        for &(pattern, prefix) in cases {
            assert_eq!(literal_prefix(pattern).as_ref(), prefix, "{pattern:?}");
        }
        assert!(matches!(literal_prefix(b"news:*"), Cow::Borrowed(_)));
    }

    #[test]
    fn index_matches_and_forgets() {
        let mut index = GlobIndex::new(16);
        index.insert(b"news:*", 1);
        index.insert(b"news:sport", 2);
        index.insert(b"*", 3);
        index.insert(b"n?ws:*", 4);
        index.insert(b"news:*", 1);
        index.check_invariants();
        let mut found = index.matches(b"news:sport").to_vec();
        found.sort_unstable();
        assert_eq!(found, [1, 1, 2, 3, 4]);
        let mut found = index.matches(b"nows:x").to_vec();
        found.sort_unstable();
        assert_eq!(found, [3, 4]);
        assert!(index.matches(b"").is_empty());
        assert_eq!(index.cache_len(), 3);

        let generation = index.generation();
        assert!(!index.remove(b"news:*", &9));
        assert!(!index.remove(b"nothing", &1));
        assert_eq!(index.generation(), generation);
        assert!(index.remove(b"news:*", &1));
        let mut found = index.matches(b"news:sport").to_vec();
        found.sort_unstable();
        assert_eq!(found, [1, 2, 3, 4]);
        for (pattern, value) in [
            (&b"news:*"[..], 1),
            (b"news:sport", 2),
            (b"*", 3),
            (b"n?ws:*", 4),
        ] {
            assert!(index.remove(pattern, &value));
            index.check_invariants();
        }
        assert!(index.is_empty());
        assert!(index.matches(b"news:sport").is_empty());
        assert!(index.by_prefix.is_empty() && index.prefix_len_counts.is_empty());
    }

    #[test]
    fn index_cache_is_bounded_and_optional() {
        let mut index = GlobIndex::new(4);
        index.insert(b"c*", 7);
        for i in 0..100u32 {
            let subject = format!("c{i}");
            assert_eq!(index.matches(subject.as_bytes()), [7]);
            assert!(index.cache_len() <= 4);
        }
        let mut uncached = GlobIndex::new(0);
        uncached.insert(b"c*", 7);
        assert_eq!(uncached.matches(b"c1"), [7]);
        assert!(uncached.matches(b"d1").is_empty());
        assert_eq!(uncached.cache_len(), 0);
    }

    /// A small alphabet so that patterns and subjects often interact.
    fn glob_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                4 => prop_oneof![Just(b'a'), Just(b'b'), Just(b':')],
                1 => prop_oneof![Just(b'*'), Just(b'?'), Just(b'['), Just(b']'), Just(b'^'), Just(b'-'), Just(b'\\')],
                1 => any::<u8>(),
            ],
            0..10,
        )
    }

    fn subject_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                6 => prop_oneof![Just(b'a'), Just(b'b'), Just(b':')],
                1 => any::<u8>(),
            ],
            0..10,
        )
    }

    #[derive(Clone, Debug)]
    enum Operation {
        Insert(Vec<u8>, u8),
        Remove(Vec<u8>, u8),
        Match(Vec<u8>),
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            3 => (glob_bytes(), 0..4u8).prop_map(|(p, v)| Operation::Insert(p, v)),
            2 => (glob_bytes(), 0..4u8).prop_map(|(p, v)| Operation::Remove(p, v)),
            4 => subject_bytes().prop_map(Operation::Match),
        ]
    }

    proptest! {
        #[test]
        fn glob_match_never_panics(pattern in glob_bytes(), subject in subject_bytes()) {
            let _ = glob_match(&pattern, &subject);
        }

        #[test]
        fn a_match_starts_with_the_literal_prefix(pattern in glob_bytes(), subject in subject_bytes()) {
            if glob_match(&pattern, &subject) {
                prop_assert!(subject.starts_with(&literal_prefix(&pattern)));
            }
        }

        #[test]
        fn escaped_literals_match_only_themselves(subject in subject_bytes(), other in subject_bytes()) {
            let mut pattern = Vec::new();
            for &byte in &subject {
                pattern.push(b'\\');
                pattern.push(byte);
            }
            prop_assert!(glob_match(&pattern, &subject));
            prop_assert_eq!(glob_match(&pattern, &other), other == subject);
        }

        #[test]
        fn index_agrees_with_a_naive_scan(
            operations in proptest::collection::vec(operation(), 1..60),
            cache_entries_max in 0..4usize,
        ) {
            let mut index = GlobIndex::new(cache_entries_max);
            let mut naive: Vec<(Vec<u8>, u8)> = Vec::new();
            for operation in operations {
                match operation {
                    Operation::Insert(pattern, value) => {
                        index.insert(&pattern, value);
                        naive.push((pattern, value));
                    }
                    Operation::Remove(pattern, value) => {
                        let position = naive.iter().position(|(p, v)| *p == pattern && *v == value);
                        if let Some(position) = position {
                            naive.swap_remove(position);
                        }
                        prop_assert_eq!(index.remove(&pattern, &value), position.is_some());
                    }
                    Operation::Match(subject) => {
                        let mut expected: Vec<u8> = naive
                            .iter()
                            .filter(|(pattern, _)| glob_match(pattern, &subject))
                            .map(|(_, value)| *value)
                            .collect();
                        expected.sort_unstable();
                        let mut cached = index.matches(&subject).to_vec();
                        cached.sort_unstable();
                        prop_assert_eq!(&cached, &expected);
                        let mut direct = Vec::new();
                        index.match_into(&subject, &mut direct);
                        direct.sort_unstable();
                        prop_assert_eq!(&direct, &expected);
                    }
                }
                index.check_invariants();
                prop_assert_eq!(index.len(), naive.len());
            }
        }
    }
}

//! A small ordered map kept as one sorted vector: what a vehicle's state holds per field
//! and per attribute. A `BTreeMap` node reserves room for 11 entries (a vehicle with 25
//! fields and 4 attributes held about 1.6 KB in nodes); a vector holds what is there,
//! in one allocation, in the same order.

use std::borrow::Borrow;

#[derive(Clone, PartialEq)]
pub struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.0.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// A map of `entries` at once (sorted here, not one insert at a time); of entries with
    /// the same key the last wins, as with `insert`.
    pub fn from_unsorted(mut entries: Vec<(K, V)>) -> Self {
        // Stable: equal keys keep their order, so the last of them is the one kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match kept.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => kept.push(entry),
            }
        }
        kept.shrink_to_fit();
        VecMap(kept)
    }

    /// Gives back room a shrunk or settled map no longer needs (a long-lived state keeps
    /// at most a few spare entries).
    pub fn settle(&mut self) {
        if self.0.capacity() > self.0.len() + 4 {
            self.0.shrink_to_fit();
        }
    }
}

/// As `BTreeMap`'s: panics when the key is absent.
impl<K: Ord + Borrow<Q>, Q: Ord + ?Sized, V> std::ops::Index<&Q> for VecMap<K, V> {
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for this key")
    }
}

impl<K: Ord, V> Extend<(K, V)> for VecMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = VecMap::new();
        map.extend(iter);
        map
    }
}

impl<K, V> IntoIterator for VecMap<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, K, V> IntoIterator for &'a VecMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::VecMap;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Any sequence of inserts and removes leaves the same entries, in the same
        /// order, as a BTreeMap given the same sequence.
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u8..20, any::<u16>()), 0..200)) {
            let mut ours = VecMap::new();
            let mut theirs = BTreeMap::new();
            for (insert, k, v) in ops {
                if insert {
                    prop_assert_eq!(ours.insert(k, v), theirs.insert(k, v));
                } else {
                    prop_assert_eq!(ours.remove(&k), theirs.remove(&k));
                }
                prop_assert_eq!(ours.get(&k), theirs.get(&k));
            }
            ours.settle();
            let a: Vec<_> = ours.iter().collect();
            let b: Vec<_> = theirs.iter().collect();
            prop_assert_eq!(a, b);
            prop_assert_eq!(ours.len(), theirs.len());
        }

        /// Built at once from unsorted entries with repeated keys: what a BTreeMap built
        /// by inserting them in order holds (the last of equal keys wins).
        #[test]
        fn built_at_once_like_a_btreemap(entries in proptest::collection::vec((0u8..30, any::<u16>()), 0..200)) {
            let ours = VecMap::from_unsorted(entries.clone());
            let theirs: BTreeMap<_, _> = entries.into_iter().collect();
            let a: Vec<_> = ours.iter().collect();
            let b: Vec<_> = theirs.iter().collect();
            prop_assert_eq!(a, b);
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::VecMap;
    use crate::model::{Field, Value};

    /// One vector (three words) and nothing allocated while empty: a vehicle holds
    /// several (state fields, attributes, field times). Measured under `cargo test`
    /// (debug). Growing fails: see docs/ARCHITECTURE.md, "Memory".
    #[test]
    fn a_vec_map_is_one_vector_and_empty_holds_nothing() {
        let size = std::mem::size_of::<VecMap<Field, Value>>();
        assert!(
            size <= 24,
            "a VecMap grew to {size} bytes (24): see docs/ARCHITECTURE.md \"Memory\" \
             (-Zprint-type-sizes shows the layout)"
        );
        assert_eq!(VecMap::<Field, Value>::new().0.capacity(), 0);
    }
}

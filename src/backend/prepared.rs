//! The named statements a server connection has prepared, bounded, least recently used
//! first out. Names are derived from the statement text, so clients share them.

use std::collections::HashMap;
use std::sync::Arc;

pub struct PreparedSet {
    capacity: usize,
    tick: u64,
    names: HashMap<Arc<str>, u64>,
}

impl PreparedSet {
    pub fn new(capacity: usize) -> Self {
        PreparedSet {
            capacity: capacity.max(1),
            tick: 0,
            names: HashMap::new(),
        }
    }

    /// True if present; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Adds a name; returns the one evicted to make room, which the caller must Close.
    pub fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
        self.tick += 1;
        let evicted = if self.names.len() >= self.capacity && !self.names.contains_key(&name) {
            let oldest = self
                .names
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone());
            if let Some(o) = &oldest {
                self.names.remove(o);
            }
            oldest
        } else {
            None
        };
        self.names.insert(name, self.tick);
        evicted
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    pub fn clear(&mut self) {
        self.names.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// How many names it keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut s = PreparedSet::new(2);
        assert!(s.insert("a".into()).is_none());
        assert!(s.insert("b".into()).is_none());
        assert!(s.touch("a"));
        assert_eq!(s.insert("c".into()).as_deref(), Some("b"));
        assert!(s.touch("a") && s.touch("c") && !s.touch("b"));
    }
}

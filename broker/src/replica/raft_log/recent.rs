//! The Raft term and end offset of the most recent entries, in memory: Raft asks for terms of recent
//! entries on every append it checks, and the high watermark is the end offset of the last committed one.
//! Read from the log, each would be a positioned read or two (log data is not memory-mapped).

use std::collections::VecDeque;

/// Entries remembered.
const RECENT_ENTRIES_MAX: usize = 8192;

/// (Raft index, term, offset after the entry) of the last entries appended, contiguous by index.
#[derive(Debug, Default)]
pub struct Recent {
    entries: VecDeque<(u64, u64, u64)>,
}

impl Recent {
    /// Records entry `index` of `term`, after which the log's next offset is `next_offset`. An entry that
    /// does not follow the last one starts over.
    pub fn push(&mut self, index: u64, term: u64, next_offset: u64) {
        if self.entries.back().is_some_and(|(i, _, _)| i + 1 != index) {
            self.entries.clear();
        }
        if self.entries.len() == RECENT_ENTRIES_MAX {
            self.entries.pop_front();
        }
        self.entries.push_back((index, term, next_offset));
    }

    /// Forgets entries from `index` on (the log was cut there).
    pub fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(i, _, _)| *i >= index) {
            self.entries.pop_back();
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The term and end offset of entry `index`, if remembered.
    pub fn get(&self, index: u64) -> Option<(u64, u64)> {
        let (first, _, _) = *self.entries.front()?;
        let k = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(k).map(|(_, t, o)| (*t, *o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_contiguous_suffix() {
        let mut r = Recent::default();
        for i in 1..=10 {
            r.push(i, 1 + i / 5, i * 3);
        }
        assert_eq!(r.get(4), Some((1, 12)));
        assert_eq!(r.get(10), Some((3, 30)));
        assert_eq!(r.get(11), None);
        r.truncate_from(8);
        assert_eq!(r.get(8), None);
        r.push(8, 4, 99);
        assert_eq!(r.get(8), Some((4, 99)));
        r.push(20, 4, 100); // a gap: start over
        assert_eq!(r.get(8), None);
        assert_eq!(r.get(20), Some((4, 100)));
    }
}

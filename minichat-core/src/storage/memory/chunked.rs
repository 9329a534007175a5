//! An append-only list that never moves what it holds: fixed-size chunks.
//!
//! This file exists because the memory storage keeps every message in lists indexed by
//! position, under its one lock. A `Vec` grows by copying everything into a block twice as
//! large: at 2^19 and 2^20 messages that copy stopped every operation for up to ~250 and
//! ~650 ms (BENCHMARKS.md, "Run of stop 28"). Here a new chunk is started when the last one is
//! full: a chunk grows as a `Vec` does until it holds [`CHUNK`] entries (so a copy moves at most
//! that many, and a small store stays small), and the list of chunks grows by copying a pointer
//! each.

use std::ops::Index;

/// Entries per chunk: 65,536, a power of two, so a chunk's doubling ends exactly there.
const CHUNK: usize = 1 << 16;

/// A list of `T` addressed by position, grown by [`push`](Chunked::push) only.
#[derive(Debug)]
pub(super) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Appends `value` at position `self.len()`.
    pub(super) fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => self.chunks.push(vec![value]),
        }
        self.len += 1;
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    /// Panics when `i` is out of bounds, as a slice's index does.
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_hold_across_chunks() {
        let mut list = Chunked::default();
        let n = 2 * CHUNK + 5;
        for i in 0..n {
            list.push(i);
        }
        assert_eq!(list.len(), n);
        for i in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, n - 1] {
            assert_eq!(list[i], i);
        }
        assert_eq!(list.chunks.len(), 3);
        // A chunk never grows past CHUNK entries: the full ones hold exactly that.
        assert!(list.chunks[..2].iter().all(|c| c.capacity() == CHUNK));
        assert!(list.chunks[2].capacity() <= CHUNK);
    }

    #[test]
    #[should_panic]
    fn a_position_past_the_end_panics() {
        let mut list = Chunked::default();
        list.push(1u8);
        let _ = list[1];
    }
}

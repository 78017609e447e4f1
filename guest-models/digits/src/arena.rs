//! The bookkeeping of the guest's allocator: a bump arena that rewinds to
//! its start whenever nothing is allocated.
//!
//! The host instantiates a model afresh for every request, so everything a
//! call allocates (the request the canonical ABI copies in, the response it
//! copies out) is dead when the call returns. A bump pointer is then all the
//! allocator a model needs: no free lists, no headers, and no `std` (whose
//! allocator comes with wasi-libc and its WASI imports). Freeing the newest
//! block steps the pointer back, so a `Vec` that grows last grows in place;
//! when the last live block is freed the arena starts over, so an instance
//! that is called again and again (the host's kernel benchmark does that)
//! reuses its memory instead of growing until its cap.
//!
//! This file is plain `core` arithmetic on addresses, so that its tests run
//! natively (`tests/all` includes it); the guest's `lib.rs` puts it over
//! linear memory.

/// A bump arena over the addresses `[start, end)`.
#[derive(Debug)]
pub struct Arena {
    /// Where the arena starts over when nothing is live.
    start: usize,
    /// The first free address.
    next: usize,
    /// One past the last usable address.
    end: usize,
    /// Blocks handed out and not yet freed.
    live: usize,
}

impl Arena {
    /// An arena over `[start, end)`.
    pub const fn new(start: usize, end: usize) -> Self {
        Self {
            start,
            next: start,
            end,
            live: 0,
        }
    }

    /// Hands out `size` bytes aligned to `align` (a power of two), or says
    /// how many more bytes past the end it needs: `Err(short)`. After the
    /// caller [extends](Arena::extend) the arena, the same call succeeds.
    pub fn alloc(&mut self, size: usize, align: usize) -> Result<usize, usize> {
        let at = self
            .next
            .checked_next_multiple_of(align)
            .ok_or(usize::MAX)?;
        let to = at.checked_add(size).ok_or(usize::MAX)?;
        if to > self.end {
            return Err(to - self.end);
        }
        self.next = to;
        self.live += 1;
        Ok(at)
    }

    /// Frees the block of `size` bytes at `at`. Only the newest block's
    /// space is reused at once; the rest waits until nothing is live.
    pub fn free(&mut self, at: usize, size: usize) {
        self.live -= 1;
        if self.live == 0 {
            self.next = self.start;
        } else if at + size == self.next {
            self.next = at;
        }
    }

    /// Resizes the newest block in place, if `at` is the newest block and
    /// the arena has room; otherwise the caller must move it.
    pub fn resize_in_place(&mut self, at: usize, old: usize, new: usize) -> bool {
        if at + old != self.next {
            return false;
        }
        match at.checked_add(new) {
            Some(to) if to <= self.end => {
                self.next = to;
                true
            }
            _ => false,
        }
    }

    /// Adds the memory `[from, to)` that linear memory grew by. Memory grows
    /// at its end, which is this arena's end unless something else grew it;
    /// then the arena moves to the new region and leaves the gap alone.
    pub fn extend(&mut self, from: usize, to: usize) {
        if from != self.end {
            self.next = from;
            if self.live == 0 {
                self.start = from;
            }
        }
        self.end = to;
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn blocks_are_aligned_and_disjoint() {
        let mut arena = Arena::new(1001, 2000);
        let a = arena.alloc(3, 1).unwrap();
        let b = arena.alloc(8, 8).unwrap();
        let c = arena.alloc(1, 4).unwrap();
        assert_eq!(a, 1001);
        assert_eq!(b, 1008);
        assert_eq!(c, 1016);
    }

    #[test]
    fn a_full_arena_says_how_much_it_lacks_and_succeeds_once_extended() {
        let mut arena = Arena::new(0, 100);
        arena.alloc(60, 1).unwrap();
        assert_eq!(arena.alloc(50, 1), Err(10));
        arena.extend(100, 200);
        assert_eq!(arena.alloc(50, 1), Ok(60));
    }

    #[test]
    fn memory_grown_elsewhere_is_skipped() {
        let mut arena = Arena::new(0, 100);
        let kept = arena.alloc(90, 1).unwrap();
        assert_eq!(arena.alloc(20, 1), Err(10));
        // Someone else took [100, 300): the arena continues at 300.
        arena.extend(300, 400);
        assert_eq!(arena.alloc(20, 1), Ok(300));
        arena.free(300, 20);
        arena.free(kept, 90);
        // Everything freed: back to the original start, not the gap.
        assert_eq!(arena.alloc(1, 1), Ok(0));
    }

    #[test]
    fn freeing_the_newest_block_reuses_it() {
        let mut arena = Arena::new(0, 100);
        let a = arena.alloc(10, 1).unwrap();
        let b = arena.alloc(10, 1).unwrap();
        arena.free(b, 10);
        assert_eq!(arena.alloc(10, 1), Ok(b));
        assert_ne!(a, b);
    }

    #[test]
    fn an_older_block_waits_until_nothing_is_live() {
        let mut arena = Arena::new(0, 100);
        let a = arena.alloc(10, 1).unwrap();
        let b = arena.alloc(10, 1).unwrap();
        arena.free(a, 10);
        assert_eq!(arena.alloc(10, 1), Ok(20), "a's space is not reused yet");
        arena.free(20, 10);
        arena.free(b, 10);
        assert_eq!(arena.alloc(10, 1), Ok(0), "all freed: starts over");
    }

    #[test]
    fn only_the_newest_block_grows_in_place() {
        let mut arena = Arena::new(0, 100);
        let a = arena.alloc(10, 1).unwrap();
        let b = arena.alloc(10, 1).unwrap();
        assert!(!arena.resize_in_place(a, 10, 20));
        assert!(arena.resize_in_place(b, 10, 50));
        assert_eq!(arena.alloc(1, 1), Ok(60));
        assert!(!arena.resize_in_place(60, 1, 100), "past the end");
    }

    #[test]
    fn sizes_near_the_address_limit_fail_without_overflow() {
        let mut arena = Arena::new(16, 100);
        assert_eq!(arena.alloc(usize::MAX, 1), Err(usize::MAX));
        assert!(!arena.resize_in_place(16, 0, usize::MAX));
    }
}

//! One memory budget for everything a caller makes the host hold: request
//! bodies while they are read, and the tensors parsed from them.
//!
//! Each request takes a [`Reservation`] and grows it *before* it buffers or
//! allocates: a body chunk is charged before it is kept, a tensor before its
//! vector is allocated. When the budget cannot cover the next step the
//! request is refused (503 with `Retry-After`) and what it held is released,
//! so many slow or large requests together cannot take the process past
//! the budget, whatever the kernel's overcommit would have allowed.
//!
//! The budget is a counter, not an allocator: it bounds what the host
//! *decides* to hold on a caller's behalf, which is where a caller's bytes
//! get multiplied (a 16 MiB body of empty strings is 233 MiB once parsed
//! without it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared byte budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    used: AtomicUsize,
}

/// The budget cannot cover a reservation: the caller should retry later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server is holding as much request data as it may ({capacity} bytes); retry later")]
pub struct Exhausted {
    /// The budget's capacity, in bytes.
    pub capacity: usize,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// The budget's size, in bytes.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes held by live reservations now.
    pub fn in_use(&self) -> usize {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as the request goes.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }

    /// A reservation of `bytes`, or [`Exhausted`].
    pub fn try_reserve(&self, bytes: usize) -> Result<Reservation, Exhausted> {
        let mut reservation = self.reservation();
        reservation.try_grow(bytes)?;
        Ok(reservation)
    }

    fn take(&self, bytes: usize, ceiling: usize) -> Result<(), Exhausted> {
        let inner = &self.inner;
        let ceiling = ceiling.min(inner.capacity);
        inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= ceiling)
            })
            .map(drop)
            .map_err(|_| Exhausted {
                capacity: inner.capacity,
            })
    }

    fn give_back(&self, bytes: usize) {
        self.inner.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes a request holds from a [`MemoryBudget`]; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: MemoryBudget,
    held: usize,
}

impl Reservation {
    /// Takes `bytes` more from the budget, or leaves the reservation as it
    /// was and says the budget is exhausted.
    pub fn try_grow(&mut self, bytes: usize) -> Result<(), Exhausted> {
        self.grow_below(bytes, usize::MAX)
    }

    /// Like [`Reservation::try_grow`], but only while the whole budget
    /// stays within its first three quarters: for bulky steps (a large
    /// body), so that a flood of them leaves the last quarter to small
    /// requests, which then still get through.
    pub fn try_grow_bulky(&mut self, bytes: usize) -> Result<(), Exhausted> {
        let capacity = self.budget.capacity();
        self.grow_below(bytes, capacity - capacity / 4)
    }

    fn grow_below(&mut self, bytes: usize, ceiling: usize) -> Result<(), Exhausted> {
        if bytes == 0 {
            return Ok(());
        }
        self.budget.take(bytes, ceiling)?;
        self.held += bytes;
        Ok(())
    }

    /// Gives `bytes` back early (what a step no longer needs), at most what
    /// is held.
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.held);
        self.budget.give_back(bytes);
        self.held -= bytes;
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The capacity of the budget this reservation draws on.
    pub fn budget_capacity(&self) -> usize {
        self.budget.capacity()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.give_back(self.held);
        }
    }
}

/// The memory this process may use: a Lambda function's configured size
/// (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, MiB), else the smaller of the
/// machine's physical memory and its cgroup's `memory.max`. Budgets that
/// default to a share of it fit the machine they run on.
pub fn machine_memory_bytes() -> usize {
    if let Some(mib) = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return mib.saturating_mul(1 << 20);
    }
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = match (usize::try_from(pages), usize::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => pages.saturating_mul(page),
        // Unknown: assume a small machine rather than a large one.
        _ => 1 << 30,
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    cgroup.map_or(physical, |limit| limit.min(physical))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_budget_and_release_on_drop() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.try_reserve(60).unwrap();
        assert_eq!(budget.in_use(), 60);
        assert!(budget.try_reserve(41).is_err(), "61 + 41 > 100");
        let b = budget.try_reserve(40).unwrap();
        assert_eq!(budget.in_use(), 100);
        assert_eq!(a.try_grow(1), Err(Exhausted { capacity: 100 }));
        assert_eq!(a.held(), 60, "a failed grow keeps what was held");
        drop(b);
        a.try_grow(40).unwrap();
        assert_eq!(a.held(), 100);
        a.shrink(30);
        assert_eq!(budget.in_use(), 70);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn bulky_steps_leave_the_last_quarter_to_small_ones() {
        let budget = MemoryBudget::new(400);
        let mut bulky = budget.reservation();
        bulky.try_grow_bulky(300).unwrap();
        assert!(budget.reservation().try_grow_bulky(1).is_err());
        let mut small = budget.reservation();
        small.try_grow(100).unwrap();
        assert!(small.try_grow(1).is_err(), "the whole budget is in use");
    }

    #[test]
    fn the_machine_has_some_memory() {
        let bytes = machine_memory_bytes();
        assert!(bytes >= 64 << 20, "{bytes}");
    }

    #[test]
    fn an_overflowing_request_is_refused_not_wrapped() {
        let budget = MemoryBudget::new(usize::MAX);
        let _a = budget.try_reserve(usize::MAX - 1).unwrap();
        assert!(budget.try_reserve(2).is_err());
    }
}

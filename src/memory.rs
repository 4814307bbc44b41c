//! Memory budgets for image jobs.
//!
//! A 12-megapixel image costs 40-100 MB while it is decoded and encoded, and a download waiting
//! for a core holds its whole body. Counting jobs alone (cores, jobs in flight) lets a batch of
//! large images add up to several hundred MB; these budgets bound the bytes instead, so peak
//! memory is set by a setting rather than by what the batch happens to contain.
//!
//! Two budgets, never one: a job reserves its download first and its decode buffers second,
//! while holding the first. Were both drawn from one pool, downloads waiting for a core could
//! take all of it and starve every decode, and with it themselves.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounting unit: permits are KiB, so a u32 permit count covers 4 TiB.
const UNIT: u64 = 1024;

/// Makes glibc's malloc give large freed blocks back to the kernel.
///
/// glibc serves blocks above its mmap threshold with their own mappings, returned on free; but
/// the threshold is dynamic: each such block freed raises it to that block's size, up to 32 MB.
/// After the first few images, 1-32 MB bodies and pixel buffers came from the heap arenas of
/// whichever threads touched them and stayed there as fragmented free space: a batch of 12 MP
/// images measured 333 MB peak RSS with the dynamic threshold and 154 MB with it fixed at
/// 1 MiB (`python3 bench/run.py --phases memory`), at no measured cost in throughput.
/// Rust's own large blocks no longer reach glibc (`crate::allocator` maps them itself); this
/// still holds for the C libraries' (libwebp's planes and token buffers).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before the runtime's threads
        // exist. A zero return (refused) leaves glibc's defaults, which are merely bigger.
        unsafe {
            libc::mallopt(
                libc::M_MMAP_THRESHOLD,
                crate::allocator::LARGE as libc::c_int,
            );
        }
    }
}

#[derive(Clone, Debug)]
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes held against a budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

impl Reservation {
    /// Bytes this reservation counts (after clamping to the budget).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives back what this reservation holds beyond `bytes`, for a job past its peak: a
    /// 12 MP WebP encode runs for a second on half of what its decode needed.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(UNIT);
        let held = self.bytes / UNIT;
        let Some(permit) = &mut self._permit else {
            return;
        };
        if keep < held && permit.split((held - keep) as usize).is_some() {
            self.bytes = keep * UNIT;
        }
    }

    /// Adds `more` (a reservation from the same budget) to this one.
    pub fn merge(&mut self, more: Reservation) {
        self.bytes += more.bytes;
        match (&mut self._permit, more._permit) {
            (Some(a), Some(b)) => a.merge(b),
            (slot @ None, b) => *slot = b,
            (Some(_), None) => {}
        }
    }
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_units = (bytes / UNIT).clamp(1, u64::from(u32::MAX >> 3)) as u32;
        Self {
            sem: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    pub fn available_bytes(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }

    fn units(&self, bytes: u64) -> u32 {
        // Clamped: a job larger than the whole budget still runs, alone.
        (bytes.div_ceil(UNIT)).min(u64::from(self.total_units)) as u32
    }

    /// Waits until `bytes` fit. None only if the budget was closed (never, today).
    pub async fn reserve(&self, bytes: u64) -> Option<Reservation> {
        let units = self.units(bytes);
        if units == 0 {
            return Some(Reservation {
                _permit: None,
                bytes: 0,
            });
        }
        let permit = self.sem.clone().acquire_many_owned(units).await.ok()?;
        Some(Reservation {
            _permit: Some(permit),
            bytes: u64::from(units) * UNIT,
        })
    }

    /// Reserves `bytes` if they fit now. For growing a reservation already held: waiting there
    /// could deadlock jobs that each hold part of the budget and wait for more.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        let units = self.units(bytes);
        if units == 0 {
            return Some(Reservation {
                _permit: None,
                bytes: 0,
            });
        }
        let permit = self.sem.clone().try_acquire_many_owned(units).ok()?;
        Some(Reservation {
            _permit: Some(permit),
            bytes: u64::from(units) * UNIT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_oversized_ones_run_alone() {
        let budget = MemoryBudget::new(10 * UNIT);
        let a = budget.reserve(6 * UNIT).await.unwrap();
        assert_eq!(budget.available_bytes(), 4 * UNIT);
        assert!(
            budget.try_reserve(5 * UNIT).is_none(),
            "5 KiB must not fit in 4"
        );
        let b = budget.try_reserve(4 * UNIT).unwrap();
        assert_eq!(budget.available_bytes(), 0);
        drop((a, b));
        // Larger than the budget: clamped to all of it, so it is granted once the budget is free.
        let big = budget.reserve(1_000 * UNIT).await.unwrap();
        assert_eq!(big.bytes(), 10 * UNIT);
        assert!(budget.try_reserve(1).is_none());
        drop(big);
        assert_eq!(budget.available_bytes(), 10 * UNIT);
    }

    #[tokio::test]
    async fn merged_reservations_release_together() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut a = budget.reserve(3 * UNIT).await.unwrap();
        a.merge(budget.try_reserve(2 * UNIT).unwrap());
        assert_eq!(a.bytes(), 5 * UNIT);
        assert_eq!(budget.available_bytes(), 5 * UNIT);
        drop(a);
        assert_eq!(budget.available_bytes(), 10 * UNIT);
    }

    #[tokio::test]
    async fn a_waiting_reservation_is_granted_on_release() {
        let budget = MemoryBudget::new(4 * UNIT);
        let held = budget.reserve(3 * UNIT).await.unwrap();
        let b2 = budget.clone();
        let waiter = tokio::spawn(async move { b2.reserve(2 * UNIT).await.unwrap().bytes() });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "2 KiB cannot fit while 3 of 4 are held"
        );
        drop(held);
        assert_eq!(waiter.await.unwrap(), 2 * UNIT);
    }

    #[tokio::test]
    async fn a_shrunk_reservation_lets_a_waiter_in_and_keeps_the_rest() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut held = budget.reserve(8 * UNIT).await.unwrap();
        let b2 = budget.clone();
        let waiter = tokio::spawn(async move { b2.reserve(5 * UNIT).await.unwrap() });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "5 KiB cannot fit beside 8 of 10");
        held.shrink_to(5 * UNIT - 1);
        held.shrink_to(9 * UNIT); // never grows
        assert_eq!(held.bytes(), 5 * UNIT);
        let other = waiter.await.unwrap();
        assert_eq!(budget.available_bytes(), 0);
        drop((held, other));
        assert_eq!(budget.available_bytes(), 10 * UNIT);
    }
}

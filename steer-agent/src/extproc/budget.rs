//! Request body bytes held by all streams at once, bounded by the config's
//! `max_buffered_body_bytes`: memory grows with the bytes that actually
//! arrive (never with a client's `content-length`), and past the bound a
//! stream gets 503 instead of the process running out of memory.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicUsize,
}

impl BodyBudget {
    /// Takes `bytes` if the total stays within `limit`.
    pub fn try_take(&self, bytes: usize, limit: usize) -> bool {
        let mut current = self.held.load(Ordering::Relaxed);
        loop {
            if current.saturating_add(bytes) > limit {
                return false;
            }
            match self.held.compare_exchange_weak(
                current,
                current + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    pub fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_and_returned() {
        let budget = super::BodyBudget::default();
        assert!(budget.try_take(60, 100));
        assert!(!budget.try_take(41, 100));
        assert!(budget.try_take(40, 100));
        budget.give_back(100);
        assert_eq!(budget.held(), 0);
    }
}

//! Locking for the SDK's shared state.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, taking it over from a holder that panicked: the values the SDK guards
/// change in single steps, so they stay consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

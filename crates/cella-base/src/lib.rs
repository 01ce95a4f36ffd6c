//! Small shared vocabulary for every Cella crate.
//!
//! Domain code never reads the system time directly: it takes a [`Clock`], so tests drive
//! TTLs, leases and timeouts with a [`ManualClock`] deterministically.

mod backoff;
mod busy_poll;
mod clock;
mod coalesce;
mod hash;
mod keys;
mod utc;

pub use backoff::Backoff;
pub use busy_poll::{BusyPoll, GROW_START};
pub use clock::{Clock, ManualClock, SystemClock, UnixClock};
pub use coalesce::CoalescedWrites;
pub use hash::fnv1a64;
pub use keys::prefix_end;
pub use utc::UtcTime;

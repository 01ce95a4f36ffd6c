//! Unique ids on Cella's core (SPEC §4, IDs).
//!
//! - [`layout`]: id layouts as data — binary (snowflake) and decimal (order numbers) — with
//!   encode, decode and validation; built-ins `snowflake64` and `order32`.
//!
//! Everything that decides lives apart from what talks to the core: the layouts and
//! generators are plain values tested with a manual clock.

mod error;
pub mod layout;

pub use error::{IdgenError, IdgenResult};
pub use layout::{Decoded, Id, Layout, LayoutSpec};

//! Built on the public API: groups, streams and the tower layer.

mod group;
mod stream;
#[cfg(feature = "tower")]
pub mod tower;

pub use group::{Group, GroupError};
pub use stream::{MapPooled, MapPooledUnordered, PoolStreamExt};

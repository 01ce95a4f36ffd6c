//! Newtypes for the numbers that cross the API: revisions, lease ids, member ids.

use std::fmt;
use std::str::FromStr;

/// A point in the store's history: the global counter bumped once per write transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub i64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A lease's id. Displayed and parsed as 16 hex digits, as etcdctl prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

impl LeaseId {
    /// The id as sent on the wire, where 0 means "no lease".
    pub(crate) fn from_wire(id: i64) -> Option<LeaseId> {
        (id != 0).then_some(LeaseId(id))
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a string is not a [`LeaseId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease id {input:?} must be a non-zero hexadecimal number of at most 16 digits, like 694d7a1b2c3d4e5f")]
pub struct ParseLeaseIdError {
    input: String,
}

impl FromStr for LeaseId {
    type Err = ParseLeaseIdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let digits = input.strip_prefix("0x").unwrap_or(input);
        match i64::from_str_radix(digits, 16) {
            Ok(id) if id > 0 => Ok(LeaseId(id)),
            _ => Err(ParseLeaseIdError {
                input: input.to_owned(),
            }),
        }
    }
}

/// A cluster member's id. Displayed as hex, as etcdctl prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(pub u64);

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_id_round_trips_through_hex() {
        let id = LeaseId(0x694d_7a1b_2c3d_4e5f);
        assert_eq!(id.to_string(), "694d7a1b2c3d4e5f");
        assert_eq!("694d7a1b2c3d4e5f".parse::<LeaseId>(), Ok(id));
        assert_eq!("0x694d7a1b2c3d4e5f".parse::<LeaseId>(), Ok(id));
        assert_eq!(LeaseId(0x1f).to_string(), "000000000000001f");
    }

    #[test]
    fn lease_id_rejects_zero_negative_and_junk() {
        for input in ["0", "", "-1", "xyz", "ffffffffffffffff", "1_0"] {
            assert!(input.parse::<LeaseId>().is_err(), "{input:?} parsed");
        }
    }
}

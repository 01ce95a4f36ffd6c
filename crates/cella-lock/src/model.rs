//! The lock recipe's decisions, apart from any I/O.
//!
//! A lock, election or semaphore is a queue of keys under one prefix, `<prefix><lease-hex>`,
//! each attached to its owner's lease. The queue is ordered by create revision: the first
//! `permits` keys hold (1 for locks and elections), the rest wait, each for its predecessor.
//! A key's create revision is its fencing token: every later grant has a higher one.
//! The key layout is etcd's (`concurrency.Mutex` / `Election`), so etcd's client recipes and
//! Cella's services share one queue per name.

use bytes::Bytes;
use cella_proto::mvccpb::KeyValue;

use crate::error::{LockError, LockResult};

/// Where semaphores keep their queues, apart from the lock and election names users choose.
pub(crate) const SEMAPHORE_PREFIX: &str = "__cella/semaphores/";
/// Longest lock, election or semaphore name, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 1024;
/// Longest lease TTL the lock API grants, in seconds (a day).
pub(crate) const MAX_TTL_SECONDS: i64 = 86_400;
/// Most permits a semaphore may have.
pub(crate) const MAX_PERMITS: u32 = 1024;

/// One party of a queue: its key, the lease that owns it, and its create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// The ownership key.
    pub key: Bytes,
    /// The owning lease.
    pub lease: i64,
    /// The key's create revision: place in the queue and fencing token.
    pub revision: i64,
}

impl From<&KeyValue> for Party {
    fn from(kv: &KeyValue) -> Self {
        Party {
            key: kv.key.clone(),
            lease: kv.lease,
            revision: kv.create_revision,
        }
    }
}

/// Where one party stands in its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Among the first `permits`: it holds.
    Holds,
    /// Behind others; `predecessor` is the party just ahead of it.
    Waits {
        /// The party just ahead.
        predecessor: Party,
        /// Parties ahead of it.
        ahead: usize,
    },
    /// Its key is not in the queue (its lease ended, or someone deleted it).
    Gone,
}

/// Where the party with key `me` stands in `queue` (ordered by create revision), when the
/// first `permits` parties hold.
pub fn standing(queue: &[Party], me: &[u8], permits: usize) -> Standing {
    let Some(position) = queue.iter().position(|p| p.key.as_ref() == me) else {
        return Standing::Gone;
    };
    if position < permits.max(1) {
        return Standing::Holds;
    }
    Standing::Waits {
        predecessor: queue[position - 1].clone(),
        ahead: position,
    }
}

/// Whether `me` is among the first `permits` keys of `head` (the queue's first keys by create
/// revision, as read in one txn with the caller's join).
pub fn holds_among(head: &[KeyValue], me: &[u8], permits: usize) -> bool {
    head.iter()
        .take(permits.max(1))
        .any(|kv| kv.key.as_ref() == me)
}

/// Splits a queue into its holders (the first `permits`) and its waiters.
pub fn split_holders(mut queue: Vec<Party>, permits: usize) -> (Vec<Party>, Vec<Party>) {
    let waiters = queue.split_off(permits.min(queue.len()));
    (queue, waiters)
}

/// The queue prefix of a lock or election: etcd's recipe uses `<name>/`.
pub fn lock_prefix(name: &str) -> Bytes {
    Bytes::from(format!("{name}/"))
}

/// The queue prefix of a semaphore.
pub fn semaphore_prefix(name: &str) -> Bytes {
    Bytes::from(format!("{SEMAPHORE_PREFIX}{name}/"))
}

/// The key a lease queues under: the prefix and the lease id in lowercase hex.
pub fn queue_key(prefix: &[u8], lease: i64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

/// The end of a prefix range: the prefix with its last byte incremented.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    Bytes::from(cella_base::prefix_end(prefix))
}

/// Checks a lock, election or semaphore name.
pub fn check_name(name: &str) -> LockResult<()> {
    if name.is_empty() {
        return Err(LockError::InvalidField {
            field: "name",
            rule: "must not be empty",
        });
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(LockError::InvalidField {
            field: "name",
            rule: "must be at most 1024 bytes",
        });
    }
    Ok(())
}

/// Checks a caller's lease id.
pub fn check_lease(lease: i64) -> LockResult<()> {
    if lease <= 0 {
        return Err(LockError::InvalidField {
            field: "lease",
            rule: "must name a granted lease (> 0)",
        });
    }
    Ok(())
}

/// Checks the TTL of a lease the server is to grant.
pub fn check_ttl(ttl_seconds: i64) -> LockResult<()> {
    if !(1..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
        return Err(LockError::InvalidField {
            field: "ttl_seconds",
            rule: "must be between 1 and 86400 when `lease` is 0",
        });
    }
    Ok(())
}

/// Checks a semaphore's permit count.
pub fn check_permits(permits: u32) -> LockResult<()> {
    if !(1..=MAX_PERMITS).contains(&permits) {
        return Err(LockError::InvalidField {
            field: "permits",
            rule: "must be between 1 and 1024",
        });
    }
    Ok(())
}

/// The permits a semaphore declares: the value its first party wrote (`None` when the
/// queue is empty or the value is not a count).
pub fn declared_permits(first: Option<&KeyValue>) -> Option<u32> {
    let kv = first?;
    std::str::from_utf8(&kv.value).ok()?.parse().ok()
}

/// A lease id as users write it: hex, as etcd prints lease ids.
pub fn parse_lease_hex(text: &str) -> Option<i64> {
    i64::from_str_radix(text, 16).ok().filter(|l| *l > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(key: &str, revision: i64) -> Party {
        Party {
            key: Bytes::from(key.to_string()),
            lease: revision * 10,
            revision,
        }
    }

    #[test]
    fn the_lowest_revision_holds_and_each_waiter_waits_for_its_predecessor() {
        let queue = vec![party("l/a", 5), party("l/b", 7), party("l/c", 9)];
        assert_eq!(standing(&queue, b"l/a", 1), Standing::Holds);
        assert_eq!(
            standing(&queue, b"l/b", 1),
            Standing::Waits {
                predecessor: party("l/a", 5),
                ahead: 1
            }
        );
        assert_eq!(
            standing(&queue, b"l/c", 1),
            Standing::Waits {
                predecessor: party("l/b", 7),
                ahead: 2
            }
        );
    }

    #[test]
    fn a_missing_key_has_lost_its_place() {
        let queue = vec![party("l/a", 5)];
        assert_eq!(standing(&queue, b"l/z", 1), Standing::Gone);
        assert_eq!(standing(&[], b"l/z", 1), Standing::Gone);
    }

    #[test]
    fn semaphore_holders_are_the_first_n() {
        let queue = vec![party("s/a", 1), party("s/b", 2), party("s/c", 3)];
        assert_eq!(standing(&queue, b"s/b", 2), Standing::Holds);
        assert!(matches!(
            standing(&queue, b"s/c", 2),
            Standing::Waits { ahead: 2, .. }
        ));
        let (holders, waiters) = split_holders(queue.clone(), 2);
        assert_eq!(holders, queue[..2].to_vec());
        assert_eq!(waiters, queue[2..].to_vec());
        let (holders, waiters) = split_holders(queue.clone(), 5);
        assert_eq!(holders.len(), 3);
        assert!(waiters.is_empty());
    }

    #[test]
    fn holding_is_read_from_the_head_of_the_queue() {
        let kv = |key: &str| KeyValue {
            key: Bytes::from(key.to_string()),
            ..Default::default()
        };
        let head = vec![kv("l/a"), kv("l/b")];
        assert!(holds_among(&head, b"l/a", 1));
        assert!(!holds_among(&head, b"l/b", 1));
        assert!(holds_among(&head, b"l/b", 2));
        assert!(!holds_among(&head, b"l/z", 2));
        assert!(!holds_among(&[], b"l/a", 1));
    }

    #[test]
    fn zero_permits_still_lets_one_hold() {
        let queue = vec![party("s/a", 1)];
        assert_eq!(standing(&queue, b"s/a", 0), Standing::Holds);
    }

    #[test]
    fn keys_follow_etcds_recipe() {
        assert_eq!(lock_prefix("orders"), Bytes::from_static(b"orders/"));
        assert_eq!(
            queue_key(b"orders/", 0x694d_7a1b),
            Bytes::from_static(b"orders/694d7a1b")
        );
        assert_eq!(
            semaphore_prefix("pool"),
            Bytes::from_static(b"__cella/semaphores/pool/")
        );
        assert_eq!(prefix_end(b"orders/"), Bytes::from_static(b"orders0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff"), Bytes::from_static(b"\0"));
    }

    #[test]
    fn bad_input_names_the_field_and_rule() {
        assert_eq!(
            check_name(""),
            Err(LockError::InvalidField {
                field: "name",
                rule: "must not be empty"
            })
        );
        assert!(check_name(&"x".repeat(1025)).is_err());
        assert!(check_name("orders").is_ok());
        assert!(check_ttl(0).is_err());
        assert!(check_ttl(86_401).is_err());
        assert!(check_ttl(30).is_ok());
        assert!(check_lease(0).is_err());
        assert!(check_lease(-4).is_err());
        assert!(check_permits(0).is_err());
        assert!(check_permits(1025).is_err());
        assert!(check_permits(3).is_ok());
    }

    #[test]
    fn declared_permits_come_from_the_first_party() {
        let kv = |value: &str| KeyValue {
            value: Bytes::from(value.to_string()),
            ..Default::default()
        };
        assert_eq!(declared_permits(Some(&kv("3"))), Some(3));
        assert_eq!(declared_permits(Some(&kv(""))), None);
        assert_eq!(declared_permits(None), None);
    }

    #[test]
    fn lease_ids_parse_as_hex() {
        assert_eq!(parse_lease_hex("1f"), Some(0x1f));
        assert_eq!(parse_lease_hex("0"), None);
        assert_eq!(parse_lease_hex("zz"), None);
    }
}

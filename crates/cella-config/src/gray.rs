//! Gray selection: which release a client gets. Pure functions of the config's head and
//! the client's identity, so a client's answer is the same on every node and after every
//! reconnect as long as the head is unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{GrayTarget, Head, Release};

/// Who a client is: its stable id and labels.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientIdentity {
    /// Stable instance id.
    pub client_id: String,
    /// Labels such as `zone=eu-1`.
    pub labels: BTreeMap<String, String>,
}

/// The client's bucket, 0–99: FNV-1a of client id, a zero byte, and data id, then mixed
/// (MurmurHash3's finalizer). Without the mix, ids that differ only in their last characters
/// (`pod-1`, `pod-2`, ...) land in correlated buckets and a percentage can miss by points.
pub fn bucket(client_id: &str, data_id: &str) -> u32 {
    let bytes = client_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(data_id.bytes());
    let mut hash = bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash % 100) as u32
}

/// Whether `target` selects `client` for config `data_id`.
pub fn selects(target: &GrayTarget, client: &ClientIdentity, data_id: &str) -> bool {
    if !client.client_id.is_empty() && target.client_ids.contains(&client.client_id) {
        return true;
    }
    if !target.labels.is_empty()
        && target
            .labels
            .iter()
            .all(|(k, v)| client.labels.get(k) == Some(v))
    {
        return true;
    }
    match target.percentage {
        // A client without an id has no stable bucket; it stays on the current release.
        Some(p) if !client.client_id.is_empty() => bucket(&client.client_id, data_id) < p,
        _ => false,
    }
}

/// The release `client` receives from a config whose head is `head`.
pub fn select<'a>(head: &'a Head, client: &ClientIdentity) -> &'a Release {
    match &head.gray {
        Some(gray) if selects(&gray.target, client, &head.current.key.data_id) => &gray.release,
        _ => &head.current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client(id: &str, labels: &[(&str, &str)]) -> ClientIdentity {
        ClientIdentity {
            client_id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn ids_and_labels_select_exactly_the_named_clients() {
        let target = GrayTarget {
            labels: [("zone".to_string(), "eu".to_string())].into(),
            client_ids: vec!["pod-7".into()],
            percentage: None,
        };
        assert!(selects(&target, &client("pod-7", &[]), "d"));
        assert!(selects(
            &target,
            &client("x", &[("zone", "eu"), ("tier", "web")]),
            "d"
        ));
        assert!(!selects(&target, &client("x", &[("zone", "us")]), "d"));
        assert!(!selects(&target, &client("", &[]), "d"));
    }

    #[test]
    fn zero_and_hundred_percent_are_none_and_all() {
        let none = GrayTarget {
            percentage: Some(0),
            ..Default::default()
        };
        let all = GrayTarget {
            percentage: Some(100),
            ..Default::default()
        };
        for i in 0..200 {
            let c = client(&format!("c{i}"), &[]);
            assert!(!selects(&none, &c, "d"));
            assert!(selects(&all, &c, "d"));
        }
    }

    proptest! {
        #[test]
        fn a_clients_choice_is_stable(id in "[a-z0-9-]{1,20}", data in "[a-z.]{1,10}", p in 0u32..=100) {
            let target = GrayTarget { percentage: Some(p), ..Default::default() };
            let c = client(&id, &[]);
            let first = selects(&target, &c, &data);
            prop_assert_eq!(first, selects(&target, &c.clone(), &data));
            // Raising the percentage never drops a selected client.
            let wider = GrayTarget { percentage: Some((p + 10).min(100)), ..Default::default() };
            prop_assert!(!first || selects(&wider, &c, &data));
        }

        #[test]
        fn the_share_is_near_the_percentage(p in 0u32..=100, seed in any::<u64>(), data in "[a-z.]{1,10}") {
            let target = GrayTarget { percentage: Some(p), ..Default::default() };
            let n = 4000;
            let chosen = (0..n)
                .filter(|i| selects(&target, &client(&format!("{seed:x}-{i}"), &[]), &data))
                .count();
            let share = chosen as f64 * 100.0 / n as f64;
            // Binomial sd at n=4000 is at most 0.8 points; 4 points is five of them.
            prop_assert!((share - p as f64).abs() <= 4.0, "share {share} for {p}%");
        }
    }
}

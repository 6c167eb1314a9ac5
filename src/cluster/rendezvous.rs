//! Rendezvous (highest random weight) hashing: every instance that knows the same live
//! members picks the same home for a key, and when a member leaves only its keys move.
//! The hash is fixed here (FNV-1a 64 and a SplitMix64 finish), never the standard
//! library's, so instances of different builds agree.

/// The member with the highest score for `key` (ties by name, so the order members are
/// given in does not matter).
pub fn home<'m, I>(members: I, key: &str) -> Option<&'m str>
where
    I: IntoIterator<Item = &'m str>,
{
    members
        .into_iter()
        .max_by(|a, b| score(a, key).cmp(&score(b, key)).then_with(|| a.cmp(b)))
}

/// The weight of `member` for `key`.
pub fn score(member: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in member.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone mixes the last bytes poorly; SplitMix64's finaliser spreads them.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked out by hand in Python from the definition above (FNV-1a 64 over
    /// `member 0x00 key`, then SplitMix64's finaliser). A change here moves every account
    /// of every running cluster at the upgrade, so it must be deliberate.
    #[test]
    fn scores_are_fixed() {
        assert_eq!(score("a", "k"), 0x6342_4809_5cf1_2a04);
        let key = "xchanger:user:alice";
        assert_eq!(score("node-1", key), 0x7350_117e_6fc9_ff2c);
        assert_eq!(score("node-2", key), 0x4205_41e3_2102_0d1c);
        assert_eq!(score("node-3", key), 0x06d2_abcd_71e8_a46e);
        assert_eq!(home(["node-1", "node-2", "node-3"], key), Some("node-1"));
        assert_eq!(home(["node-2", "node-3"], key), Some("node-2"));
        assert_ne!(
            score("ab", "c"),
            score("a", "bc"),
            "the separator keeps them apart"
        );
    }

    #[test]
    fn the_order_of_members_does_not_matter() {
        let keys = ["xchanger:user:alice", "iauto360:OPEN1", "kx1234"];
        for key in keys {
            assert_eq!(home(["a", "b", "c"], key), home(["c", "a", "b"], key));
        }
        assert_eq!(home(std::iter::empty::<&str>(), "k"), None);
    }

    /// Only the keys of the member that left move; the others stay where they were.
    #[test]
    fn a_member_leaving_moves_only_its_keys() {
        let all = ["i1", "i2", "i3"];
        let keys: Vec<String> = (0..3000).map(|n| format!("vehicle{n}")).collect();
        let mut per_member = std::collections::HashMap::new();
        let mut moved = 0;
        for key in &keys {
            let before = home(all, key).unwrap();
            *per_member.entry(before).or_insert(0) += 1;
            let after = home(["i1", "i3"], key).unwrap();
            if before != "i2" {
                assert_eq!(before, after, "{key} moved though its home stayed");
            } else {
                moved += 1;
                assert_ne!(after, "i2");
            }
        }
        // Spread: each member near a third (1000 ± 15 %).
        for (member, n) in per_member {
            assert!((850..=1150).contains(&n), "{member} got {n} of 3000");
        }
        assert!((850..=1150).contains(&moved), "{moved} moved");
    }
}

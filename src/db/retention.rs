//! Which backups to delete, and how much data a restore would lose. Pure.

use serde::{Deserialize, Serialize};

/// What retention needs to know about one recorded backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    pub id: i64,
    pub created_at_ms: i64,
    /// `Some(true)`: verified good; `Some(false)`: verified bad; `None`: never checked.
    pub verified_ok: Option<bool>,
}

/// The ids of the backups to delete: all but the newest `keep` (at least one is always
/// kept) and the newest backup verified good, so a run of unverified or bad backups
/// never pushes out the last one known to restore. Ids come back sorted, each once.
pub fn retention(backups: &[BackupMeta], keep: usize) -> Vec<i64> {
    let keep = keep.max(1);
    let mut newest_first: Vec<&BackupMeta> = backups.iter().collect();
    // Newest first; equal times by id, higher (later recorded) first.
    newest_first.sort_by_key(|b| std::cmp::Reverse((b.created_at_ms, b.id)));
    let newest_good = newest_first
        .iter()
        .find(|b| b.verified_ok == Some(true))
        .map(|b| b.id);
    let mut kept_ids: Vec<i64> = newest_first.iter().take(keep).map(|b| b.id).collect();
    kept_ids.extend(newest_good);
    let mut delete: Vec<i64> = backups
        .iter()
        .map(|b| b.id)
        .filter(|id| !kept_ids.contains(id))
        .collect();
    delete.sort_unstable();
    delete.dedup();
    delete
}

/// How long before `now_ms` the backup was taken, e.g. `2h 13m`: the writes a restore
/// of it would lose. Two units at most, rounded down.
pub fn loss_window(backup_created_ms: i64, now_ms: i64) -> String {
    let ms = now_ms.saturating_sub(backup_created_ms);
    if ms < 0 {
        return "0s (the backup is newer than now: check the clock)".to_string();
    }
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(id: i64, t: i64, ok: Option<bool>) -> BackupMeta {
        BackupMeta {
            id,
            created_at_ms: t,
            verified_ok: ok,
        }
    }

    #[test]
    fn keeps_the_newest() {
        let bs = [
            b(1, 100, Some(true)),
            b(2, 200, Some(true)),
            b(3, 300, Some(true)),
            b(4, 400, Some(true)),
        ];
        assert_eq!(retention(&bs, 2), vec![1, 2]);
        assert_eq!(retention(&bs, 4), Vec::<i64>::new());
        assert_eq!(retention(&bs, 10), Vec::<i64>::new());
        assert_eq!(retention(&[], 3), Vec::<i64>::new());
    }

    #[test]
    fn keep_zero_means_one() {
        let bs = [b(1, 100, None), b(2, 200, None)];
        assert_eq!(retention(&bs, 0), vec![1]);
    }

    #[test]
    fn keeps_the_newest_good_one_beyond_keep() {
        let bs = [
            b(1, 100, Some(true)),
            b(2, 200, Some(true)),
            b(3, 300, Some(false)),
            b(4, 400, None),
            b(5, 500, Some(false)),
        ];
        assert_eq!(retention(&bs, 2), vec![1, 3]);
        assert_eq!(retention(&bs, 1), vec![1, 3, 4]);
    }

    #[test]
    fn input_order_and_ties_do_not_matter() {
        let bs = [
            b(7, 300, None),
            b(3, 100, Some(true)),
            b(9, 300, None),
            b(5, 200, None),
        ];
        // Newest: 9 (tie at 300 broken by id), then 7.
        assert_eq!(retention(&bs, 1), vec![5, 7]);
        assert_eq!(retention(&bs, 2), vec![5]);
    }

    #[test]
    fn property_never_deletes_every_good_backup() {
        // A small deterministic generator: many shapes, no dependency.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let n = (next() % 12) as usize;
            let bs: Vec<BackupMeta> = (0..n)
                .map(|i| {
                    let ok = match next() % 3 {
                        0 => None,
                        1 => Some(false),
                        _ => Some(true),
                    };
                    b(i as i64 + 1, (next() % 20) as i64, ok)
                })
                .collect();
            let keep = (next() % 5) as usize;
            let del = retention(&bs, keep);
            let left: Vec<&BackupMeta> = bs.iter().filter(|x| !del.contains(&x.id)).collect();
            // Every id deleted exists, once.
            assert!(del.iter().all(|id| bs.iter().any(|x| x.id == *id)));
            assert!(del.windows(2).all(|w| w[0] < w[1]));
            // At least one kept when there was any, and at least min(keep, n) kept.
            assert!(
                left.len() >= keep.max(1).min(n),
                "{bs:?} keep {keep} -> {del:?}"
            );
            // Good backups survive: the newest good one is never deleted.
            if let Some(good) = bs
                .iter()
                .filter(|x| x.verified_ok == Some(true))
                .max_by_key(|x| (x.created_at_ms, x.id))
            {
                assert!(!del.contains(&good.id), "{bs:?} keep {keep} -> {del:?}");
            }
            // At most `keep` plus the newest good one survive.
            let max_left = keep.max(1) + 1;
            assert!(left.len() <= max_left.min(n));
        }
    }

    #[test]
    fn loss_windows() {
        let h = 3_600_000;
        assert_eq!(loss_window(0, 2 * h + 13 * 60_000 + 59_999), "2h 13m");
        assert_eq!(loss_window(1000, 1000), "0s");
        assert_eq!(loss_window(0, 45_500), "45s");
        assert_eq!(loss_window(0, 5 * 60_000), "5m");
        assert_eq!(loss_window(0, 5 * 60_000 + 7_000), "5m 7s");
        assert_eq!(loss_window(0, h), "1h 0m");
        assert_eq!(loss_window(0, 26 * h + 60_000), "1d 2h");
        assert!(loss_window(10_000, 0).starts_with("0s"));
    }
}

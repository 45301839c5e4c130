//! Retention: which of a host's snapshots a rule keeps and which it deletes. Pure functions,
//! no database; the catalog stores the rules ([`crate::db::Catalog::set_retention`]) and the
//! caller deletes what the [`Plan`] says.
//!
//! A [`Rule`] keeps the union of:
//! - `keep_last = N`: the N newest snapshots;
//! - `keep_monthly = N`: the newest snapshot of each of the N most recent calendar months (UTC)
//!   that have snapshots (months without snapshots do not count).
//!
//! Safety rails: a rule that keeps nothing (both 0) is refused, since it would delete a host's
//! last snapshot; and whatever the rule, the newest snapshot is always kept. "Newest" orders by
//! creation time, then by id, so ties are decided the same way every time.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("a rule with keep_last = 0 and keep_monthly = 0 keeps nothing and would delete every snapshot")]
    KeepsNothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Rule {
    pub fn validate(&self) -> Result<(), RetentionError> {
        if self.keep_last == 0 && self.keep_monthly == 0 {
            return Err(RetentionError::KeepsNothing);
        }
        Ok(())
    }
}

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Creation time, unix seconds UTC.
    pub created: i64,
}

/// The outcome of a rule over one host's snapshots; both lists newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Plan {
    pub keep: Vec<String>,
    pub delete: Vec<String>,
}

/// The (year, month) of a unix time, UTC.
pub fn year_month(unix: i64) -> (i64, u32) {
    let (y, m, _) = kura_imaging::time::civil_from_days(kura_imaging::time::split_day(unix).0);
    (y, m)
}

/// Applies `rule` to one host's snapshots (in any order).
pub fn plan(rule: &Rule, snapshots: &[Candidate]) -> Result<Plan, RetentionError> {
    rule.validate()?;
    let mut order: Vec<&Candidate> = snapshots.iter().collect();
    order.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));

    let mut keep = vec![false; order.len()];
    for k in keep.iter_mut().take(rule.keep_last as usize) {
        *k = true;
    }
    let mut months_seen = 0u32;
    let mut last_month = None;
    for (i, s) in order.iter().enumerate() {
        if months_seen >= rule.keep_monthly {
            break;
        }
        let month = year_month(s.created);
        if last_month != Some(month) {
            // Newest first, so the first snapshot seen in a month is that month's newest.
            last_month = Some(month);
            months_seen += 1;
            keep[i] = true;
        }
    }
    if let Some(newest) = keep.first_mut() {
        *newest = true;
    }

    let mut out = Plan::default();
    for (s, k) in order.iter().zip(keep) {
        if k { &mut out.keep } else { &mut out.delete }.push(s.id.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const JAN_2026: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z
    const DAY: i64 = 86_400;

    fn c(id: &str, created: i64) -> Candidate {
        Candidate { id: id.into(), created }
    }

    #[test]
    fn year_month_matches_known_dates() {
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(-1), (1969, 12));
        assert_eq!(year_month(JAN_2026), (2026, 1));
        assert_eq!(year_month(JAN_2026 - 1), (2025, 12));
        assert_eq!(year_month(951_782_400), (2000, 2)); // 2000-02-29
        assert_eq!(year_month(951_868_800), (2000, 3)); // 2000-03-01
    }

    #[test]
    fn a_rule_that_keeps_nothing_is_refused() {
        let e = plan(&Rule { keep_last: 0, keep_monthly: 0 }, &[c("a", 1)]).unwrap_err();
        assert_eq!(e, RetentionError::KeepsNothing);
        assert!(plan(&Rule { keep_last: 0, keep_monthly: 0 }, &[]).is_err());
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let snaps = [c("a", 10), c("c", 30), c("b", 20), c("d", 40)];
        let p = plan(&Rule { keep_last: 2, keep_monthly: 0 }, &snaps).unwrap();
        assert_eq!(p, Plan { keep: vec!["d".into(), "c".into()], delete: vec!["b".into(), "a".into()] });
        let p = plan(&Rule { keep_last: 10, keep_monthly: 0 }, &snaps).unwrap();
        assert_eq!((p.keep.len(), p.delete.len()), (4, 0));
        assert_eq!(plan(&Rule { keep_last: 1, keep_monthly: 0 }, &[]).unwrap(), Plan::default());
    }

    #[test]
    fn keep_monthly_keeps_the_newest_of_each_recent_month_with_snapshots() {
        let snaps = [
            c("nov-1", JAN_2026 - 60 * DAY),
            c("dec-1", JAN_2026 - 20 * DAY),
            c("dec-2", JAN_2026 - 10 * DAY),
            // No snapshot in January: it does not count as a month.
            c("feb-1", JAN_2026 + 32 * DAY),
            c("feb-2", JAN_2026 + 40 * DAY),
            c("feb-3", JAN_2026 + 50 * DAY),
        ];
        let p = plan(&Rule { keep_last: 0, keep_monthly: 2 }, &snaps).unwrap();
        assert_eq!(p.keep, ["feb-3", "dec-2"]);
        assert_eq!(p.delete, ["feb-2", "feb-1", "dec-1", "nov-1"]);
        let p = plan(&Rule { keep_last: 2, keep_monthly: 3 }, &snaps).unwrap();
        assert_eq!(p.keep, ["feb-3", "feb-2", "dec-2", "nov-1"]);
    }

    #[test]
    fn ties_in_time_are_broken_by_id() {
        let snaps = [c("b", 5), c("a", 5), c("c", 5)];
        let p = plan(&Rule { keep_last: 1, keep_monthly: 0 }, &snaps).unwrap();
        assert_eq!(p.keep, ["c"]);
        assert_eq!(p.delete, ["b", "a"]);
    }

    fn arb_snapshots() -> impl Strategy<Value = Vec<Candidate>> {
        // Up to 40 snapshots over about three years, unique ids, some identical times.
        prop::collection::vec(0i64..1100, 0..40).prop_map(|days| {
            days.into_iter()
                .enumerate()
                .map(|(i, d)| c(&format!("{i:016x}"), JAN_2026 + d * DAY - (d % 3) * 3600))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn plans_partition_and_keep_the_newest(
            snaps in arb_snapshots(),
            keep_last in 0u32..8,
            keep_monthly in 0u32..8,
        ) {
            let rule = Rule { keep_last, keep_monthly };
            let Ok(p) = plan(&rule, &snaps) else {
                prop_assert!(keep_last == 0 && keep_monthly == 0);
                return Ok(());
            };
            let all: HashSet<&str> = snaps.iter().map(|s| s.id.as_str()).collect();
            let keep: HashSet<&str> = p.keep.iter().map(String::as_str).collect();
            let delete: HashSet<&str> = p.delete.iter().map(String::as_str).collect();
            prop_assert!(keep.is_disjoint(&delete));
            prop_assert_eq!(keep.union(&delete).copied().collect::<HashSet<_>>(), all);
            prop_assert_eq!(p.keep.len() + p.delete.len(), snaps.len());

            let mut newest_first = snaps.clone();
            newest_first.sort_by(|a, b| (b.created, &b.id).cmp(&(a.created, &a.id)));
            if let Some(newest) = newest_first.first() {
                prop_assert!(keep.contains(newest.id.as_str()));
            }
            // keep_last N keeps at least the min(N, len) newest.
            for s in newest_first.iter().take(keep_last as usize) {
                prop_assert!(keep.contains(s.id.as_str()));
            }
            // Nothing else is kept beyond the rule's allowance.
            prop_assert!(p.keep.len() <= (keep_last + keep_monthly).max(1) as usize);
            // Every kept snapshot is among the N newest or the newest of its month.
            for (i, s) in newest_first.iter().enumerate() {
                if keep.contains(s.id.as_str()) && i >= keep_last as usize {
                    let month = year_month(s.created);
                    let first_of_month = newest_first.iter().position(|t| year_month(t.created) == month);
                    prop_assert_eq!(first_of_month, Some(i));
                }
            }
        }

        #[test]
        fn keep_monthly_alone_keeps_one_per_recent_month(snaps in arb_snapshots(), n in 1u32..8) {
            let p = plan(&Rule { keep_last: 0, keep_monthly: n }, &snaps).unwrap();
            let months: HashSet<(i64, u32)> = snaps.iter().map(|s| year_month(s.created)).collect();
            prop_assert_eq!(p.keep.len(), months.len().min(n as usize));
        }
    }
}

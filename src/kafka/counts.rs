//! What a central instance did, in total and per partition: the run summary, `--report`
//! and `/metrics` read these. Kept apart from the consumer so the bookkeeping is tested
//! without a broker.

use crate::model::Ts;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Sites named per partition; the readings of any further site are counted under
/// [`OTHER_SITES`] (a forged key per record must not grow the report or `/metrics`).
pub const MAX_SITES: usize = 1_000;
/// Where readings of sites beyond [`MAX_SITES`] are counted.
pub const OTHER_SITES: &str = "(other sites)";
/// Takeovers kept per partition, newest last.
pub const TAKEOVERS_KEPT: usize = 8;

/// What consuming did, for the summary at shutdown, the report and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CentralCounts {
    /// Records judged live.
    pub records: u64,
    /// Readings in the records judged live (what the edges' `forwarded.readings` count).
    pub readings: u64,
    /// Records replayed muted to warm detectors up after an assignment.
    pub warmup_records: u64,
    /// Readings in those.
    pub warmup_readings: u64,
    /// Times a silent site's pipeline was moved on by the event-time front.
    pub heartbeats: u64,
    /// Lines of records that were not readings (counted, skipped).
    pub bad_lines: u64,
    /// Partitions assigned over the run.
    pub assigned: u64,
    /// Partitions revoked over the run (a rebalance, or the instance leaving).
    pub revoked: u64,
    /// Offset commits that failed (sent again; at worst the next owner replays).
    pub commit_errors: u64,
    /// Skipped offsets read again (a broker served a later batch first).
    pub gaps_reread: u64,
    /// Partitions read again because the broker served nothing below their end for a
    /// while (`central::STALL_AFTER`).
    pub stalls_reread: u64,
    /// Gaps in offsets taken as real after reading them again did not fill them.
    pub gaps: u64,
    /// Partitions taken over with no warm-up (neither the commit metadata nor the
    /// broker's time index said where it starts): detectors start cold there.
    pub cold_starts: u64,
    /// Per partition ever held.
    pub partitions: BTreeMap<i32, PartitionCounts>,
}

/// One partition, over every time this instance held it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionCounts {
    /// Held now.
    pub held: bool,
    /// Records judged live.
    pub records: u64,
    /// Readings in them.
    pub readings: u64,
    /// Records replayed muted to warm up.
    pub warmup_records: u64,
    /// Readings in them.
    pub warmup_readings: u64,
    /// Times assigned.
    pub assigned: u64,
    /// Times revoked.
    pub revoked: u64,
    /// Records between this instance's position and the partition's end at the last
    /// look (held partitions only; none before the broker has said where the end is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Readings judged live per site (the record key).
    pub sites: BTreeMap<String, u64>,
    /// The latest assignments, newest last.
    pub takeovers: VecDeque<Takeover>,
}

/// One assignment of a partition to this instance, and how long it took to matter.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    /// When it was assigned (wall clock).
    #[serde(with = "crate::time::serde_ts")]
    pub at: Ts,
    /// The first offset judged live (the committed one; 0 for a partition never
    /// committed).
    pub live_from: i64,
    /// Went live with no warm-up (counted in `cold_starts` too).
    pub cold: bool,
    /// Records replayed muted before going live.
    pub warmup_records: u64,
    /// Milliseconds from the assignment to the first record handed over (warm-up
    /// included): "at work".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_work_ms: Option<u64>,
    /// Milliseconds from the assignment to the first record judged live: what an
    /// operator waits for after a failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_ms: Option<u64>,
}

/// What a record meant to the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// Nothing new.
    None,
    /// The first record since the assignment (at work).
    AtWork,
    /// The first record judged live since the assignment.
    Live,
    /// Both at once (no warm-up to replay).
    AtWorkLive,
}

impl CentralCounts {
    /// A partition assigned at `at` (wall clock), live from `live_from`.
    pub fn assign(&mut self, p: i32, at: Ts, live_from: i64, cold: bool) {
        self.assigned += 1;
        self.cold_starts += u64::from(cold);
        let c = self.partitions.entry(p).or_default();
        c.held = true;
        c.assigned += 1;
        c.lag = None;
        if c.takeovers.len() == TAKEOVERS_KEPT {
            c.takeovers.pop_front();
        }
        c.takeovers.push_back(Takeover {
            at,
            live_from,
            cold,
            warmup_records: 0,
            at_work_ms: None,
            live_ms: None,
        });
    }

    /// A partition revoked (or given up as the instance leaves).
    pub fn revoke(&mut self, p: i32) {
        self.revoked += 1;
        let c = self.partitions.entry(p).or_default();
        c.held = false;
        c.revoked += 1;
        c.lag = None;
    }

    /// A record of partition `p` from `site` with `readings` readings, judged live or
    /// replayed muted, `since` the partition's assignment.
    pub fn record(
        &mut self,
        p: i32,
        site: &str,
        readings: u64,
        live: bool,
        since: Duration,
    ) -> Milestone {
        let c = self.partitions.entry(p).or_default();
        if live {
            self.records += 1;
            self.readings += readings;
            c.records += 1;
            c.readings += readings;
            let key = if c.sites.contains_key(site) || c.sites.len() < MAX_SITES {
                site
            } else {
                OTHER_SITES
            };
            match c.sites.get_mut(key) {
                Some(n) => *n += readings,
                None => {
                    c.sites.insert(key.to_owned(), readings);
                }
            }
        } else {
            self.warmup_records += 1;
            self.warmup_readings += readings;
            c.warmup_records += 1;
            c.warmup_readings += readings;
        }
        let Some(t) = c.takeovers.back_mut() else {
            return Milestone::None;
        };
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        let at_work = t.at_work_ms.is_none();
        if at_work {
            t.at_work_ms = Some(ms);
        }
        if !live {
            t.warmup_records += 1;
            return if at_work {
                Milestone::AtWork
            } else {
                Milestone::None
            };
        }
        match (at_work, t.live_ms.is_none()) {
            (_, false) => Milestone::None,
            (true, true) => {
                t.live_ms = Some(ms);
                Milestone::AtWorkLive
            }
            (false, true) => {
                t.live_ms = Some(ms);
                Milestone::Live
            }
        }
    }

    /// How far a held partition is behind its end.
    pub fn lag(&mut self, p: i32, lag: i64) {
        if let Some(c) = self.partitions.get_mut(&p).filter(|c| c.held) {
            c.lag = Some(lag.max(0));
        }
    }

    /// Partitions held now.
    pub fn held(&self) -> usize {
        self.partitions.values().filter(|c| c.held).count()
    }

    /// Records behind the ends of the held partitions, summed (those with a known lag).
    pub fn total_lag(&self) -> i64 {
        self.partitions.values().filter_map(|c| c.lag).sum()
    }

    /// Distinct sites judged live.
    pub fn sites(&self) -> usize {
        let mut all: Vec<&str> = self
            .partitions
            .values()
            .flat_map(|c| c.sites.keys().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_takeover_is_timed_to_work_and_to_live() {
        let mut c = CentralCounts::default();
        c.assign(3, 1_000, 500, false);
        assert_eq!(c.record(3, "ams1", 10, false, S), Milestone::AtWork);
        assert_eq!(c.record(3, "ams1", 10, false, 2 * S), Milestone::None);
        assert_eq!(c.record(3, "ams1", 12, true, 5 * S), Milestone::Live);
        assert_eq!(c.record(3, "ams1", 12, true, 6 * S), Milestone::None);
        let t = &c.partitions[&3].takeovers[0];
        assert_eq!(
            (t.at_work_ms, t.live_ms, t.warmup_records),
            (Some(1_000), Some(5_000), 2)
        );
        assert_eq!((c.records, c.readings), (2, 24));
        assert_eq!((c.warmup_records, c.warmup_readings), (2, 20));
        assert_eq!(c.partitions[&3].sites["ams1"], 24);

        // Taken away and given back: a new takeover, timed afresh; the totals go on.
        c.revoke(3);
        assert!(!c.partitions[&3].held);
        c.assign(3, 9_000, 900, false);
        assert_eq!(c.record(3, "ams1", 1, true, S), Milestone::AtWorkLive);
        let p = &c.partitions[&3];
        assert_eq!((p.assigned, p.revoked, p.takeovers.len()), (2, 1, 2));
        assert_eq!(p.takeovers[1].live_ms, Some(1_000));
        assert_eq!(p.readings, 25);
    }

    #[test]
    fn lag_is_kept_only_for_held_partitions() {
        let mut c = CentralCounts::default();
        c.assign(0, 0, 0, false);
        c.assign(1, 0, 0, true);
        assert_eq!(c.cold_starts, 1);
        c.lag(0, 40);
        c.lag(1, -3);
        c.lag(7, 99);
        assert_eq!((c.held(), c.total_lag()), (2, 40));
        c.revoke(0);
        c.lag(0, 5);
        assert_eq!((c.held(), c.total_lag()), (1, 0));
        assert!(!c.partitions.contains_key(&7));
    }

    #[test]
    fn forged_site_keys_are_bounded() {
        let mut c = CentralCounts::default();
        c.assign(0, 0, 0, false);
        for i in 0..MAX_SITES + 50 {
            c.record(0, &format!("site-{i}"), 1, true, S);
        }
        c.record(0, "site-0", 1, true, S);
        let sites = &c.partitions[&0].sites;
        assert_eq!(sites.len(), MAX_SITES + 1);
        assert_eq!(sites[OTHER_SITES], 50);
        assert_eq!(sites["site-0"], 2);
        assert_eq!(c.readings, (MAX_SITES + 51) as u64);
    }

    #[test]
    fn only_the_latest_takeovers_are_kept() {
        let mut c = CentralCounts::default();
        for i in 0..20 {
            c.assign(0, i, i, false);
            c.revoke(0);
        }
        let t = &c.partitions[&0].takeovers;
        assert_eq!(t.len(), TAKEOVERS_KEPT);
        assert_eq!(t.back().map(|t| t.at), Some(19));
        assert_eq!((c.assigned, c.revoked), (20, 20));
    }
}

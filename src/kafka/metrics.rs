//! A central instance's counts on `/metrics`: per partition (records and readings judged
//! live and replayed, lag, ownership, assignments, revocations, the last takeover's time
//! to live) and per site (readings judged live).

use super::counts::CentralCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Partition {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    partition: String,
    /// `live` or `warmup`.
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Site {
    partition: String,
    site: String,
}

/// The families, registered once; [`KafkaMetrics::update`] brings them to the counts.
#[derive(Clone)]
pub struct KafkaMetrics {
    records: Family<Phase, Counter>,
    readings: Family<Site, Counter>,
    held: Family<Partition, Gauge>,
    lag: Family<Partition, Gauge>,
    assigned: Family<Partition, Counter>,
    revoked: Family<Partition, Counter>,
    to_live: Family<Partition, Gauge<f64, AtomicU64>>,
    to_work: Family<Partition, Gauge<f64, AtomicU64>>,
    bad_lines: Counter,
    gaps: Counter,
    cold_starts: Counter,
    commit_errors: Counter,
}

impl KafkaMetrics {
    /// Registers the families under `kafka_…`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            records: Family::default(),
            readings: Family::default(),
            held: Family::default(),
            lag: Family::default(),
            assigned: Family::default(),
            revoked: Family::default(),
            to_live: Family::default(),
            to_work: Family::default(),
            bad_lines: Counter::default(),
            gaps: Counter::default(),
            cold_starts: Counter::default(),
            commit_errors: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("kafka");
        r.register(
            "records",
            "Telemetry records read, judged live or replayed muted to warm up, by partition",
            m.records.clone(),
        );
        r.register(
            "readings",
            "Readings judged live, by partition and site (the record key)",
            m.readings.clone(),
        );
        r.register(
            "partition_held",
            "Whether this instance owns the partition now (1) or not (0)",
            m.held.clone(),
        );
        r.register(
            "lag_records",
            "Records between this instance's position and the partition's end",
            m.lag.clone(),
        );
        r.register(
            "assignments",
            "Times the partition was assigned to this instance",
            m.assigned.clone(),
        );
        r.register(
            "revocations",
            "Times the partition was taken from this instance (rebalance or leaving)",
            m.revoked.clone(),
        );
        r.register(
            "takeover_live_seconds",
            "The last assignment of the partition: seconds until its first record was judged live",
            m.to_live.clone(),
        );
        r.register(
            "takeover_at_work_seconds",
            "The last assignment of the partition: seconds until its first record was read (warm-up included)",
            m.to_work.clone(),
        );
        r.register(
            "bad_lines",
            "Telemetry lines that were not readings (counted, skipped)",
            m.bad_lines.clone(),
        );
        r.register(
            "offset_gaps",
            "Gaps in offsets taken as real (retention, compaction)",
            m.gaps.clone(),
        );
        r.register(
            "cold_starts",
            "Partitions taken over with no warm-up: detectors started cold",
            m.cold_starts.clone(),
        );
        r.register(
            "commit_errors",
            "Offset commits that failed (sent again)",
            m.commit_errors.clone(),
        );
        m
    }

    /// Brings every family to `c` (the counts only grow, so counters move by the
    /// difference).
    pub fn update(&self, c: &CentralCounts) {
        fn to(counter: &Counter, now: u64) {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        to(&self.bad_lines, c.bad_lines);
        to(&self.gaps, c.gaps);
        to(&self.cold_starts, c.cold_starts);
        to(&self.commit_errors, c.commit_errors);
        for (p, pc) in &c.partitions {
            let partition = p.to_string();
            let label = Partition {
                partition: partition.clone(),
            };
            for (phase, n) in [("live", pc.records), ("warmup", pc.warmup_records)] {
                let l = Phase {
                    partition: partition.clone(),
                    phase: phase.into(),
                };
                to(&self.records.get_or_create(&l), n);
            }
            for (site, n) in &pc.sites {
                let l = Site {
                    partition: partition.clone(),
                    site: site.clone(),
                };
                to(&self.readings.get_or_create(&l), *n);
            }
            self.held.get_or_create(&label).set(i64::from(pc.held));
            if pc.held {
                self.lag.get_or_create(&label).set(pc.lag.unwrap_or(0));
            } else {
                self.lag.remove(&label);
            }
            to(&self.assigned.get_or_create(&label), pc.assigned);
            to(&self.revoked.get_or_create(&label), pc.revoked);
            if let Some(t) = pc.takeovers.back() {
                if let Some(ms) = t.live_ms {
                    self.to_live.get_or_create(&label).set(ms as f64 / 1e3);
                }
                if let Some(ms) = t.at_work_ms {
                    self.to_work.get_or_create(&label).set(ms as f64 / 1e3);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_counts_read_back_from_the_exposition() {
        let mut registry = Registry::with_prefix("wattchdog");
        let m = KafkaMetrics::register(&mut registry);
        let mut c = CentralCounts::default();
        c.assign(2, 0, 10, false);
        c.record(2, "ams1", 5, false, Duration::from_millis(300));
        c.record(2, "ams1", 7, true, Duration::from_millis(1_500));
        c.lag(2, 42);
        m.update(&c);
        c.record(2, "ams1", 7, true, Duration::from_secs(2));
        m.update(&c);
        m.update(&c);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"wattchdog_kafka_records_total{partition="2",phase="live"} 2"#,
            r#"wattchdog_kafka_records_total{partition="2",phase="warmup"} 1"#,
            r#"wattchdog_kafka_readings_total{partition="2",site="ams1"} 14"#,
            r#"wattchdog_kafka_partition_held{partition="2"} 1"#,
            r#"wattchdog_kafka_lag_records{partition="2"} 42"#,
            r#"wattchdog_kafka_takeover_live_seconds{partition="2"} 1.5"#,
            r#"wattchdog_kafka_takeover_at_work_seconds{partition="2"} 0.3"#,
            r#"wattchdog_kafka_assignments_total{partition="2"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        c.revoke(2);
        m.update(&c);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"wattchdog_kafka_partition_held{partition="2"} 0"#));
        assert!(!text.contains("wattchdog_kafka_lag_records{"), "{text}");
    }
}

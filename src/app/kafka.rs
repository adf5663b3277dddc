//! `wattchdog kafka init|status`: the topics many sites share, and the consumer group's
//! standing, from the `[kafka]` table of a config.

use crate::app::cli::{KafkaArgs, KafkaCommand};
use crate::app::Summary;
use crate::config::Config;
use serde::Serialize;
use std::fmt;

/// What `kafka init` or `kafka status` found.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum KafkaSummary {
    /// The topics created or checked.
    #[cfg(feature = "kafka")]
    Init {
        /// Each topic.
        topics: Vec<crate::kafka::admin::TopicState>,
    },
    /// The group's standing.
    #[cfg(feature = "kafka")]
    Status(crate::kafka::admin::Status),
    /// Never built: a build without Kafka refuses the command.
    #[cfg(not(feature = "kafka"))]
    Unavailable,
}

/// `wattchdog kafka …`.
pub fn run(a: KafkaArgs) -> anyhow::Result<(KafkaSummary, bool)> {
    let (config, json) = match &a.command {
        KafkaCommand::Init(i) => (&i.config, i.json),
        KafkaCommand::Status(s) => (&s.config, s.json),
    };
    let cfg = Config::load(config)?;
    imp::run(&a.command, &cfg).map(|s| (s, json))
}

#[cfg(feature = "kafka")]
mod imp {
    use super::KafkaSummary;
    use crate::app::cli::KafkaCommand;
    use crate::config::Config;
    use crate::kafka::admin::{self, Plan};
    use anyhow::Context;

    pub fn run(c: &KafkaCommand, cfg: &Config) -> anyhow::Result<KafkaSummary> {
        match c {
            KafkaCommand::Init(i) => {
                let duration = |s: &str, what: &str| {
                    crate::time::parse_duration(s)
                        .map_err(anyhow::Error::msg)
                        .and_then(|ms| {
                            anyhow::ensure!(ms > 0, "must be positive");
                            Ok(ms)
                        })
                        .with_context(|| what.to_owned())
                };
                let plan = Plan {
                    partitions: i.partitions,
                    replication: i.replication,
                    retention: duration(&i.retention, "--retention")?,
                    alerts_retention: duration(&i.alerts_retention, "--alerts-retention")?,
                };
                let rt = crate::app::runtime()?;
                let topics = rt.block_on(admin::init(&cfg.kafka, &plan))?;
                Ok(KafkaSummary::Init { topics })
            }
            KafkaCommand::Status(_) => Ok(KafkaSummary::Status(admin::status(&cfg.kafka)?)),
        }
    }
}

#[cfg(not(feature = "kafka"))]
mod imp {
    use super::KafkaSummary;
    use crate::app::cli::KafkaCommand;
    use crate::config::Config;

    pub fn run(_: &KafkaCommand, _: &Config) -> anyhow::Result<KafkaSummary> {
        anyhow::bail!(
            "wattchdog kafka needs a build with Kafka support (cargo build --release --features kafka)"
        )
    }
}

impl fmt::Display for KafkaSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "kafka")]
            KafkaSummary::Init { topics } => {
                for t in topics {
                    writeln!(
                        f,
                        "{} topic {}: {}, {} partitions{}",
                        t.role,
                        t.name,
                        t.action,
                        t.partitions,
                        t.problem
                            .as_deref()
                            .map(|p| format!(" — {p}"))
                            .unwrap_or_default()
                    )?;
                }
                Ok(())
            }
            #[cfg(feature = "kafka")]
            KafkaSummary::Status(s) => {
                let state = if s.state.is_empty() {
                    "not described by the coordinator"
                } else {
                    &s.state
                };
                writeln!(
                    f,
                    "topic {}, group {}: {state}, {} members",
                    s.topic,
                    s.group,
                    s.members.len()
                )?;
                for m in &s.members {
                    let who = if m.client == "@" { &m.id } else { &m.client };
                    match &m.partitions {
                        Some(p) => writeln!(f, "  member {who} owns partitions {p:?}")?,
                        None => writeln!(
                            f,
                            "  member {who} (the coordinator does not say what it owns)"
                        )?,
                    }
                }
                writeln!(
                    f,
                    "{:>9} {:>12} {:>12} {:>10}  {:<24}  owner",
                    "partition", "end", "committed", "lag", "committed event time"
                )?;
                for p in &s.partitions {
                    writeln!(
                        f,
                        "{:>9} {:>12} {:>12} {:>10}  {:<24}  {}",
                        p.partition,
                        p.end,
                        p.committed.map_or("-".into(), |c| c.to_string()),
                        p.lag,
                        p.committed_event_time.as_deref().unwrap_or("-"),
                        p.owner.as_deref().unwrap_or("-")
                    )?;
                }
                let lag: i64 = s.partitions.iter().map(|p| p.lag).sum();
                writeln!(f, "total lag: {lag} records")
            }
            #[cfg(not(feature = "kafka"))]
            KafkaSummary::Unavailable => f.write_str(""),
        }
    }
}

impl Summary for KafkaSummary {
    /// 1 when a topic exists with fewer partitions than asked for.
    fn exit_code(&self) -> u8 {
        match self {
            #[cfg(feature = "kafka")]
            KafkaSummary::Init { topics } => u8::from(topics.iter().any(|t| t.problem.is_some())),
            _ => 0,
        }
    }
}

//! `wattchdog kafka init` and `kafka status`: the topics created or checked with the
//! admin API, and where the consumer group stands (owners, committed offsets, lag).

use super::assignment;
use super::config::KafkaConfig;
use super::logs::Quiet;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use thiserror::Error;

/// How long one request to the brokers may take.
const WAIT: Duration = Duration::from_secs(10);

/// Why the brokers could not be asked.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The client, or a request.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The brokers refused to create a topic.
    #[error("cannot create topic {0}: {1}")]
    Create(String, RDKafkaErrorCode),
    /// The topic is not there.
    #[error("topic {0} does not exist (create it: wattchdog kafka init)")]
    NoTopic(String),
}

/// What `init` creates.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Partitions of each topic.
    pub partitions: i32,
    /// Replicas of each partition; `None`: as many as there are brokers, at most 3.
    pub replication: Option<i32>,
    /// How long the telemetry topic keeps records, in ms.
    pub retention: i64,
    /// How long the alerts topic keeps records, in ms.
    pub alerts_retention: i64,
}

/// One topic after `init`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicState {
    /// Its name.
    pub name: String,
    /// `telemetry` or `alerts`.
    pub role: &'static str,
    /// `created`, or `exists` (left as it is).
    pub action: &'static str,
    /// Partitions it has.
    pub partitions: usize,
    /// What is wrong with it, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Creates the telemetry topic (and the alerts topic, if the config names one), or
/// checks the ones that exist.
pub async fn init(k: &KafkaConfig, plan: &Plan) -> Result<Vec<TopicState>, AdminError> {
    let admin: AdminClient<Quiet> = k.client_config(&[]).create_with_context(Quiet::default())?;
    let metadata = admin.inner().fetch_metadata(None, WAIT)?;
    let replication = plan
        .replication
        .unwrap_or_else(|| (metadata.brokers().len() as i32).clamp(1, 3));
    let telemetry_retention = plan.retention.to_string();
    let alerts_retention = plan.alerts_retention.to_string();
    let mut roles = vec!["telemetry"];
    let mut topics = vec![NewTopic::new(
        &k.telemetry_topic,
        plan.partitions,
        TopicReplication::Fixed(replication),
    )
    .set("retention.ms", &telemetry_retention)
    .set("cleanup.policy", "delete")];
    if !k.alerts_topic.is_empty() {
        // Keyed by alert id, a snapshot per change: compaction keeps each alert's last.
        roles.push("alerts");
        topics.push(
            NewTopic::new(
                &k.alerts_topic,
                plan.partitions,
                TopicReplication::Fixed(replication),
            )
            .set("retention.ms", &alerts_retention)
            .set("cleanup.policy", "compact,delete"),
        );
    }
    let results = admin
        .create_topics(&topics, &AdminOptions::new().operation_timeout(Some(WAIT)))
        .await?;
    let mut out = Vec::new();
    for (role, result) in roles.into_iter().zip(results) {
        let (name, action) = match result {
            Ok(name) => (name, "created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => (name, "exists"),
            Err((name, e)) => return Err(AdminError::Create(name, e)),
        };
        let partitions = partitions_of(&admin, &name)?;
        let problem =  (role == "telemetry" && action == "exists" && (partitions as i32) < plan.partitions).then(|| {
            format!(
                "{partitions} partitions, fewer than the {} asked for: at most {partitions} central instances share the sites (adding partitions moves sites between them, and the new owners start cold)",
                plan.partitions
            )
        });
        out.push(TopicState {
            name,
            role,
            action,
            partitions,
            problem,
        });
    }
    Ok(out)
}

/// A topic's partition count, by the brokers' metadata (created topics may take a
/// moment to appear).
fn partitions_of(admin: &AdminClient<Quiet>, topic: &str) -> Result<usize, AdminError> {
    for _ in 0..50 {
        let m = admin.inner().fetch_metadata(Some(topic), WAIT)?;
        if let Some(t) = m.topics().iter().find(|t| t.name() == topic) {
            if t.error().is_none() && !t.partitions().is_empty() {
                return Ok(t.partitions().len());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(AdminError::NoTopic(topic.to_owned()))
}

/// Where the group stands on the telemetry topic.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The telemetry topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// The group's state, as the coordinator says (`Stable`, `PreparingRebalance`,
    /// `Empty`, …; empty when it did not answer).
    pub state: String,
    /// The group's members and what each owns.
    pub members: Vec<Member>,
    /// Per partition.
    pub partitions: Vec<PartitionStatus>,
}

/// A member of the group.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Member id.
    pub id: String,
    /// Client id and host, as the coordinator saw them.
    pub client: String,
    /// Partitions of the telemetry topic it owns (none: the coordinator did not say,
    /// as tansu 0.6 does not).
    pub partitions: Option<Vec<i32>>,
}

/// A partition of the telemetry topic.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    /// Its number.
    pub partition: i32,
    /// The offset of its next record (its end).
    pub end: i64,
    /// The group's committed offset (none: never committed).
    pub committed: Option<i64>,
    /// Records past the committed offset (the end when never committed).
    pub lag: i64,
    /// The event time of the record committed last, as the owner wrote it.
    pub committed_event_time: Option<String>,
    /// The member that owns it now.
    pub owner: Option<String>,
}

/// Asks the brokers where the group stands.
pub fn status(k: &KafkaConfig) -> Result<Status, AdminError> {
    let consumer: BaseConsumer<Quiet> = k
        .client_config(&[("group.id", &k.group), ("enable.auto.commit", "false")])
        .create_with_context(Quiet::default())?;
    let topic = &k.telemetry_topic;
    let metadata = consumer.fetch_metadata(Some(topic), WAIT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(AdminError::NoTopic(topic.clone()));
    }
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, WAIT)?;
    let (state, members) = match consumer.fetch_group_list(Some(&k.group), WAIT) {
        Ok(list) => list
            .groups()
            .iter()
            .find(|g| g.name() == k.group)
            .map(|g| {
                let members = g
                    .members()
                    .iter()
                    .map(|m| Member {
                        id: m.id().to_owned(),
                        client: format!("{}@{}", m.client_id(), m.client_host()),
                        partitions: m
                            .assignment()
                            .filter(|a| !a.is_empty())
                            .and_then(|a| match assignment::decode(a) {
                                Ok(mut a) => Some(a.remove(topic).unwrap_or_default()),
                                Err(e) => {
                                    tracing::warn!(member = m.id(), error = %e, "unreadable assignment");
                                    None
                                }
                            }),
                    })
                    .collect();
                (g.state().to_owned(), members)
            })
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, group = %k.group, "the coordinator did not describe the group");
            (String::new(), Vec::new())
        }
    };
    let owners: BTreeMap<i32, String> = members
        .iter()
        .flat_map(|m| {
            m.partitions
                .iter()
                .flatten()
                .map(move |&p| (p, m.client.clone()))
        })
        .collect();
    let mut out = Vec::new();
    for &p in &partitions {
        let (_, end) = consumer.fetch_watermarks(topic, p, WAIT)?;
        let c = committed.find_partition(topic, p);
        let offset = c.as_ref().and_then(|c| match c.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        // "<event time> <warm-up start>", as the owner commits it.
        let event_time = c
            .as_ref()
            .and_then(|c| c.metadata().split(' ').next()?.parse::<i64>().ok())
            .map(crate::time::format_ts);
        out.push(PartitionStatus {
            partition: p,
            end,
            committed: offset,
            lag: (end - offset.unwrap_or(0)).max(0),
            committed_event_time: event_time,
            owner: owners.get(&p).cloned(),
        });
    }
    Ok(Status {
        topic: topic.clone(),
        group: k.group.clone(),
        state,
        members,
        partitions: out,
    })
}

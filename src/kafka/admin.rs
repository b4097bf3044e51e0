//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions (run on the catalog core and
//! broadcast) and DescribeConfigs (topic and broker resources, with sources and documentation).

use std::rc::Rc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::config::{TopicSettings, TOPIC_CONFIGS};
use crate::core::Shard;
use crate::metadata::admin::{self, NewTopic, TopicConfigChange};

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config sources.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// Config types (v3+).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;
const TYPE_BOOLEAN: i8 = 1;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub async fn create_topics(shard: &Rc<Shard>, req: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let topics: Vec<NewTopic> = req
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.0.to_string(),
            partitions: if t.assignments.is_empty() { t.num_partitions } else { t.assignments.len() as i32 },
            replication_factor: if t.assignments.is_empty() { t.replication_factor } else { 1 },
            configs: t
                .configs
                .iter()
                .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                .collect(),
        })
        .collect();
    let outcomes = admin::create_topics(shard, topics.clone(), req.validate_only).await;
    let results = outcomes
        .into_iter()
        .zip(topics)
        .map(|(o, t)| {
            let r = CreatableTopicResult::default()
                .with_name(TopicName(s(o.name.clone())))
                .with_topic_id(uuid::Uuid::from_bytes(o.id));
            match o.error {
                Some((code, msg)) => r
                    .with_error_code(code.code())
                    .with_error_message(Some(s(msg)))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1),
                None => {
                    // Configs are part of the response from v5.
                    let settings = TopicSettings::resolve(&shard.config, &t.configs).ok().filter(|_| version >= 5);
                    let configs = settings.map(|st| {
                        TOPIC_CONFIGS
                            .iter()
                            .map(|(name, _)| {
                                let overridden = t.configs.iter().any(|(k, _)| k == name);
                                CreatableTopicConfigs::default()
                                    .with_name(s(*name))
                                    .with_value(st.value_of(name).map(s))
                                    .with_config_source(if overridden { SOURCE_TOPIC } else { SOURCE_DEFAULT })
                            })
                            .collect()
                    });
                    r.with_num_partitions(o.partitions).with_replication_factor(1).with_configs(configs)
                }
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(shard: &Rc<Shard>, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let cat = shard.catalog();
    // v6+: topics by name or id; before: topic_names.
    let mut names = Vec::new();
    let mut unknown_ids = Vec::new();
    if version >= 6 {
        for t in &req.topics {
            match (&t.name, cat.by_id(t.topic_id.as_bytes())) {
                (Some(n), _) => names.push(n.0.to_string()),
                (None, Some(m)) => names.push(m.name.clone()),
                (None, None) => unknown_ids.push(t.topic_id),
            }
        }
    } else {
        names.extend(req.topic_names.iter().map(|n| n.0.to_string()));
    }
    let outcomes = admin::delete_topics(shard, names).await;
    let mut responses: Vec<DeletableTopicResult> = outcomes
        .into_iter()
        .map(|o| {
            let r = DeletableTopicResult::default()
                .with_name(Some(TopicName(s(o.name))))
                .with_topic_id(uuid::Uuid::from_bytes(o.id));
            match o.error {
                Some((code, msg)) => r.with_error_code(code.code()).with_error_message(Some(s(msg))),
                None => r,
            }
        })
        .collect();
    responses.extend(unknown_ids.into_iter().map(|id| {
        DeletableTopicResult::default()
            .with_topic_id(id)
            .with_error_code(ResponseError::UnknownTopicId.code())
            .with_error_message(Some(s("This server does not host this topic ID.")))
    }));
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(shard: &Rc<Shard>, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let wanted = req.topics.iter().map(|t| (t.name.0.to_string(), t.count)).collect();
    let outcomes = admin::create_partitions(shard, wanted, req.validate_only).await;
    let results = outcomes
        .into_iter()
        .map(|o| {
            let r = CreatePartitionsTopicResult::default().with_name(TopicName(s(o.name)));
            match o.error {
                Some((code, msg)) => r.with_error_code(code.code()).with_error_message(Some(s(msg))),
                None => r,
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

fn config_type(name: &str) -> i8 {
    match name {
        "retention.ms"
        | "retention.bytes"
        | "segment.ms"
        | "flush.messages"
        | "flush.ms"
        | "log.retention.ms"
        | "log.segment.bytes"
        | "delete.retention.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms" => TYPE_LONG,
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        "cleanup.policy" => TYPE_LIST,
        "segment.bytes"
        | "max.message.bytes"
        | "min.insync.replicas"
        | "num.partitions"
        | "message.max.bytes"
        | "socket.request.max.bytes" => TYPE_INT,
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        _ => TYPE_STRING,
    }
}

pub fn describe_configs(shard: &Rc<Shard>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let cat = shard.catalog();
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let r = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let keys: Option<Vec<String>> = res.configuration_keys.map(|k| k.iter().map(|x| x.to_string()).collect());
            let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|x| x == name));
            let entry = |name: &str, value: String, source: i8, doc: &str| {
                DescribeConfigsResourceResult::default()
                    .with_name(s(name))
                    .with_value(Some(s(value)))
                    .with_config_source(source)
                    .with_config_type(config_type(name))
                    .with_documentation(req.include_documentation.then(|| s(doc)))
            };
            match res.resource_type {
                RESOURCE_TOPIC => {
                    let Some(meta) = cat.topics.get(res.resource_name.as_str()) else {
                        return r
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_error_message(Some(s(format!("Topic {} does not exist", res.resource_name))));
                    };
                    let settings = TopicSettings::resolve(&shard.config, &meta.configs)
                        .or_else(|_| TopicSettings::resolve(&shard.config, &[]))
                        .expect("broker defaults are valid");
                    let configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|(name, _)| wanted(name))
                        .map(|(name, doc)| {
                            let source =
                                if meta.configs.iter().any(|(k, _)| k == name) { SOURCE_TOPIC } else { SOURCE_DEFAULT };
                            entry(name, settings.value_of(name).unwrap_or_default(), source, doc)
                        })
                        .collect();
                    r.with_configs(configs)
                }
                RESOURCE_BROKER => {
                    let name_ok =
                        res.resource_name.is_empty() || res.resource_name.as_str() == shard.config.node_id.to_string();
                    if !name_ok {
                        return r
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(s(format!("Unexpected broker id {}", res.resource_name))));
                    }
                    let c = &shard.config;
                    let broker: [(&str, String, &str); 6] = [
                        ("num.partitions", c.default_partitions.to_string(), "Partitions of auto-created topics."),
                        (
                            "auto.create.topics.enable",
                            c.auto_create_topics.to_string(),
                            "Create topics on Metadata requests.",
                        ),
                        ("message.max.bytes", c.max_message_bytes.to_string(), "Largest record batch accepted."),
                        ("socket.request.max.bytes", c.max_request_size_bytes.to_string(), "Largest request accepted."),
                        ("log.segment.bytes", c.log.segment_bytes.to_string(), "Default segment.bytes."),
                        ("log.retention.ms", c.log.retention_ms.to_string(), "Default retention.ms."),
                    ];
                    let configs = broker
                        .into_iter()
                        .filter(|(n, _, _)| wanted(n))
                        .map(|(n, v, d)| entry(n, v, SOURCE_STATIC_BROKER, d))
                        .collect();
                    r.with_configs(configs)
                }
                other => r
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(s(format!("resource type {other} is not supported")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// One resource's requested change, already split into our terms.
enum AlterTarget {
    Topic(TopicConfigChange),
    Refused(ResponseError, String),
}

fn alter_target(resource_type: i8, name: &str, replace: bool, ops: Vec<(String, i8, Option<String>)>) -> AlterTarget {
    if resource_type == RESOURCE_BROKER {
        return AlterTarget::Refused(
            ResponseError::InvalidRequest,
            "broker configs are read from the config file at start; they cannot be changed at runtime".into(),
        );
    }
    if resource_type != RESOURCE_TOPIC {
        return AlterTarget::Refused(
            ResponseError::InvalidRequest,
            format!("resource type {resource_type} is not supported"),
        );
    }
    let mut change = TopicConfigChange { topic: name.to_string(), replace, set: Vec::new(), delete: Vec::new() };
    for (key, op, value) in ops {
        match (op, value) {
            (0, Some(v)) => change.set.push((key, v)),
            (0, None) | (1, _) => change.delete.push(key),
            (2 | 3, _) => {
                return AlterTarget::Refused(
                    ResponseError::InvalidConfig,
                    format!(
                        "{key}: APPEND and SUBTRACT apply to list configs; none of this broker's topic configs is one"
                    ),
                )
            }
            (other, _) => {
                return AlterTarget::Refused(ResponseError::InvalidRequest, format!("unknown config operation {other}"))
            }
        }
    }
    AlterTarget::Topic(change)
}

/// Per resource: (type, name, error).
type AlterResult = (i8, StrBytes, Option<(ResponseError, String)>);

async fn alter(shard: &Rc<Shard>, targets: Vec<(i8, StrBytes, AlterTarget)>, validate_only: bool) -> Vec<AlterResult> {
    let changes: Vec<TopicConfigChange> = targets
        .iter()
        .filter_map(|(_, _, t)| if let AlterTarget::Topic(c) = t { Some(c.clone()) } else { None })
        .collect();
    let mut outcomes =
        if changes.is_empty() { Vec::new() } else { admin::alter_topic_configs(shard, changes, validate_only).await }
            .into_iter();
    targets
        .into_iter()
        .map(|(rtype, name, t)| {
            let error = match t {
                AlterTarget::Refused(code, msg) => Some((code, msg)),
                AlterTarget::Topic(_) => match outcomes.next() {
                    Some(o) => o.error,
                    None => Some((ResponseError::UnknownServerError, "catalog core did not answer".into())),
                },
            };
            (rtype, name, error)
        })
        .collect()
}

pub async fn alter_configs(shard: &Rc<Shard>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let targets = req
        .resources
        .into_iter()
        .map(|r| {
            let ops =
                r.configs.iter().map(|c| (c.name.to_string(), 0i8, c.value.as_ref().map(|v| v.to_string()))).collect();
            let t = alter_target(r.resource_type, r.resource_name.as_str(), true, ops);
            (r.resource_type, r.resource_name, t)
        })
        .collect();
    let responses = alter(shard, targets, req.validate_only)
        .await
        .into_iter()
        .map(|(rtype, name, error)| {
            let r = AlterConfigsResourceResponse::default().with_resource_type(rtype).with_resource_name(name);
            match error {
                Some((code, msg)) => r.with_error_code(code.code()).with_error_message(Some(s(msg))),
                None => r,
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let targets = req
        .resources
        .into_iter()
        .map(|r| {
            let ops = r
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.config_operation, c.value.as_ref().map(|v| v.to_string())))
                .collect();
            let t = alter_target(r.resource_type, r.resource_name.as_str(), false, ops);
            (r.resource_type, r.resource_name, t)
        })
        .collect();
    let responses = alter(shard, targets, req.validate_only)
        .await
        .into_iter()
        .map(|(rtype, name, error)| {
            let r = IncrementalResponse::default().with_resource_type(rtype).with_resource_name(name);
            match error {
                Some((code, msg)) => r.with_error_code(code.code()).with_error_message(Some(s(msg))),
                None => r,
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

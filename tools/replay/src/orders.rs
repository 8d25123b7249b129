//! `replay orders`: the orders waiting for a person's approval, and the decisions on them.
//! An order waits while its latest `OrderStateChange` on the status topic is
//! `AWAITING_APPROVAL` or `ESCALATED`; a decision is an `OrderApproval` on the approvals topic,
//! keyed by the order, which the order orchestrator reads (docs/orchestration.md). Decisions
//! are audited.

use std::collections::BTreeMap;
use std::io::Write;

use backbone_calendar::{format_rfc3339_ms, now_micros};
use backbone_core::table::{Align, Table};
use backbone_schemas::types::{
    ApprovalDecision, Contract, EventMetadata, OrderApproval, OrderStateChange, OrderWorkflowState,
    TraceContext,
};
use backbone_schemas::WireCodec;
use clap::{Args, Subcommand};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use serde_json::json;

use crate::audit::{AuditLog, AuditRecord};
use crate::error::ReplayError;
use crate::scan::Scanner;
use crate::Context;

mod http;

/// The audited actions.
pub mod action {
    /// `replay orders approve`.
    pub const APPROVE: &str = "order-approve";
    /// `replay orders reject`.
    pub const REJECT: &str = "order-reject";
}

const EXAMPLES: &str = "\
Examples:
  # What waits for a decision, oldest first
  replay orders pending

  # Approve revision 2 of order ord-7 of tenant acme
  replay orders approve --order acme:ord-7 --revision 2 --by j.doe

  # Reject it: the sales platform is told it was rejected, with the reason
  replay orders reject --order acme:ord-7 --revision 2 --by j.doe --reason 'discount above policy'

An order waits when the order orchestrator's approval rules pick it (processor.approval); after
processor.approval.timeout it is escalated, after twice that rejected. A decision names the
revision it is about: one on a revision no longer waiting changes nothing, and is refused here.";

/// `replay orders ...`.
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// The orders waiting for approval.
    #[command(after_help = EXAMPLES)]
    Pending(PendingArgs),
    /// Approve an order revision waiting for approval: its workflow runs.
    #[command(after_help = EXAMPLES)]
    Approve(DecisionArgs),
    /// Reject an order revision waiting for approval: nothing is done for it, and the sales
    /// platform is told it was rejected (--reason is required).
    #[command(after_help = EXAMPLES)]
    Reject(DecisionArgs),
    /// Serve the same over HTTP, for the approvers' tools (docs/orchestration.md, "Approvals").
    #[command(after_help = http::EXAMPLES)]
    Serve(http::ServeArgs),
}

/// The topics every `replay orders` command reads or writes.
#[derive(Debug, Clone, Args)]
pub struct OrderTopics {
    /// The order orchestrator's status topic (its `processor.status_topic`).
    #[arg(long, value_name = "TOPIC", default_value = "sales.order-status")]
    pub status_topic: String,
    /// The topic it reads decisions from (its `processor.approvals_topic`).
    #[arg(long, value_name = "TOPIC", default_value = "sales.order-approvals")]
    pub approvals_topic: String,
}

/// `replay orders pending`.
#[derive(Debug, Args)]
pub struct PendingArgs {
    /// Only this tenant's orders.
    #[arg(long)]
    pub tenant: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The topics.
    #[command(flatten)]
    pub topics: OrderTopics,
}

/// `replay orders approve` and `reject`.
#[derive(Debug, Args)]
pub struct DecisionArgs {
    /// The order, as `<tenant>:<order id>`.
    #[arg(long, value_name = "TENANT:ORDER")]
    pub order: String,
    /// The revision decided on (`replay orders pending` shows it).
    #[arg(long)]
    pub revision: i32,
    /// Who decides: kept on the decision and in the audit.
    #[arg(long, env = "USER")]
    pub by: String,
    /// Why; required to reject.
    #[arg(long)]
    pub reason: Option<String>,
    /// JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// The topics.
    #[command(flatten)]
    pub topics: OrderTopics,
}

/// An order revision waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// The tenant.
    pub tenant: String,
    /// The order.
    pub order_id: String,
    /// The revision waiting.
    pub revision: i32,
    /// `AWAITING_APPROVAL` or `ESCALATED`.
    pub state: String,
    /// When it began to wait, RFC 3339.
    pub since: String,
    /// What the customer owes, and in what currency.
    pub total: String,
    /// Why it waits (the rule it met), or why it was escalated.
    pub reason: String,
}

/// Runs one `replay orders` command.
pub async fn command(
    ctx: &Context,
    command: OrdersCommand,
    out: &mut dyn Write,
) -> Result<(), ReplayError> {
    match command {
        OrdersCommand::Pending(args) => {
            let waiting = pending(ctx, &args.topics.status_topic, args.tenant.as_deref()).await?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&waiting).unwrap_or_default()
                )?;
            } else {
                print_table(&waiting, out)?;
            }
        }
        OrdersCommand::Approve(args) => {
            decide_command(ctx, &args, ApprovalDecision::Approve, out).await?
        }
        OrdersCommand::Reject(args) => {
            decide_command(ctx, &args, ApprovalDecision::Reject, out).await?
        }
        OrdersCommand::Serve(args) => http::serve(ctx, args, out).await?,
    }
    Ok(())
}

/// The orders waiting for approval on `status_topic`, oldest first.
pub async fn pending(
    ctx: &Context,
    status_topic: &str,
    tenant: Option<&str>,
) -> Result<Vec<Waiting>, ReplayError> {
    let offsets = match ctx.describe(status_topic, "order status").await {
        Ok(offsets) => offsets,
        Err(ReplayError::UnknownTopic { .. }) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let codec = WireCodec::new(ctx.registry.clone());
    // Per order: its latest change, and since when it waits (an escalation keeps the time).
    let mut latest: BTreeMap<(String, String), (OrderStateChange, i64)> = BTreeMap::new();
    for record in Scanner::start(ctx, status_topic, offsets.spans(None))
        .collect()
        .await?
    {
        let Some(value) = record.value.as_deref() else {
            continue;
        };
        let change: OrderStateChange = codec
            .decode_as(value, OrderStateChange::schema())
            .await
            .map_err(|e| ReplayError::Corrupt {
                what: format!(
                    "order status at {}[{}]@{}",
                    status_topic, record.partition, record.offset
                ),
                message: e.to_string(),
            })?;
        let key = (change.metadata.tenant_id.clone(), change.order_id.clone());
        let since = match (change.state, latest.get(&key)) {
            (OrderWorkflowState::Escalated, Some((_, since))) => *since,
            _ => change.metadata.occurred_at,
        };
        latest.insert(key, (change, since));
    }
    let mut waiting: Vec<(i64, Waiting)> = latest
        .into_values()
        .filter(|(change, _)| {
            matches!(
                change.state,
                OrderWorkflowState::AwaitingApproval | OrderWorkflowState::Escalated
            ) && tenant.is_none_or(|t| t == change.metadata.tenant_id)
        })
        .map(|(change, since)| {
            let waiting = Waiting {
                tenant: change.metadata.tenant_id.clone(),
                order_id: change.order_id.clone(),
                revision: change.revision,
                state: symbol(change.state),
                since: format_rfc3339_ms(since / 1000),
                total: format!("{} {}", change.total_amount, change.currency),
                reason: change.reason.unwrap_or_default(),
            };
            (since, waiting)
        })
        .collect();
    waiting.sort_by_key(|(since, _)| *since);
    Ok(waiting.into_iter().map(|(_, w)| w).collect())
}

fn symbol<T: Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A person's decision on one order revision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The tenant.
    pub tenant: String,
    /// The order.
    pub order_id: String,
    /// The revision decided on.
    pub revision: i32,
    /// Approve or reject.
    pub decision: ApprovalDecision,
    /// Who decides.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
}

/// A decision published, as the CLI and the HTTP API answer it.
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    /// `<tenant>:<order id>`.
    pub order: String,
    /// The revision decided on.
    pub revision: i32,
    /// `approve` or `reject`.
    pub decision: String,
    /// Who decided.
    pub by: String,
    /// What the customer owes, and in what currency.
    pub total: String,
    /// When the revision began to wait, RFC 3339.
    pub waiting_since: String,
}

/// `replay orders approve | reject`: the flags checked, the decision published and told.
async fn decide_command(
    ctx: &Context,
    args: &DecisionArgs,
    decision: ApprovalDecision,
    out: &mut dyn Write,
) -> Result<(), ReplayError> {
    let (tenant, order_id) = args
        .order
        .split_once(':')
        .filter(|(t, o)| !t.is_empty() && !o.is_empty())
        .ok_or_else(|| ReplayError::invalid("--order", &args.order, "<tenant>:<order id>"))?;
    if decision == ApprovalDecision::Reject && args.reason.as_deref().is_none_or(str::is_empty) {
        return Err(ReplayError::invalid(
            "--reason",
            "",
            "why the order is rejected: the sales platform and the audit show it",
        ));
    }
    let decision = Decision {
        tenant: tenant.to_owned(),
        order_id: order_id.to_owned(),
        revision: args.revision,
        decision,
        by: args.by.clone(),
        reason: args.reason.clone(),
    };
    let decided = decide(ctx, &ctx.producer()?, &args.topics, &decision).await?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&decided).unwrap_or_default()
        )?;
    } else {
        writeln!(
            out,
            "{}d order `{}` revision {} ({}, waiting since {})",
            decided.decision, decided.order, decided.revision, decided.total, decided.waiting_since
        )?;
    }
    Ok(())
}

/// Publishes `decision` through `producer` once its revision is seen waiting; audited.
pub async fn decide(
    ctx: &Context,
    producer: &FutureProducer,
    topics: &OrderTopics,
    decision: &Decision,
) -> Result<Decided, ReplayError> {
    let Decision {
        tenant,
        order_id,
        revision,
        ..
    } = decision;
    let key = format!("{tenant}:{order_id}");
    let waiting = pending(ctx, &topics.status_topic, Some(tenant)).await?;
    let Some(found) = waiting
        .iter()
        .find(|w| &w.order_id == order_id && w.revision == *revision)
    else {
        return Err(ReplayError::NotWaiting {
            order: key,
            revision: *revision,
            waiting: waiting
                .iter()
                .find(|w| &w.order_id == order_id)
                .map(|w| w.revision),
        });
    };
    let name = symbol(decision.decision).to_lowercase();
    let now = now_micros();
    let approval = OrderApproval {
        metadata: EventMetadata {
            tenant_id: tenant.clone(),
            event_id: format!("{order_id}:{revision}:{name}"),
            source: "replay".to_owned(),
            r#type: "backbone.sales.order.approval".to_owned(),
            occurred_at: now,
            produced_at: now,
            trace: TraceContext {
                traceparent: format!(
                    "00-{:016x}{:016x}-{:016x}-01",
                    fastrand::u64(..),
                    fastrand::u64(..),
                    fastrand::u64(1..)
                ),
                tracestate: None,
            },
            schema_version: None,
        },
        order_id: order_id.clone(),
        revision: *revision,
        decision: decision.decision,
        decided_by: decision.by.clone(),
        reason: decision.reason.clone(),
    };
    let topic = &topics.approvals_topic;
    let codec = WireCodec::new(ctx.registry.clone());
    let value = codec
        .encode_contract(&format!("{topic}-value"), &approval)
        .await
        .map_err(|e| ReplayError::Other {
            what: format!("encoding the decision for `{topic}`"),
            message: e.to_string(),
        })?;
    let action = match decision.decision {
        ApprovalDecision::Approve => action::APPROVE,
        _ => action::REJECT,
    };
    let audit = AuditLog::open(ctx).await?;
    let id = format!(
        "o-{}-{:04x}",
        format_rfc3339_ms(now / 1000),
        fastrand::u16(..)
    );
    let target = json!({
        "topic": topic, "tenant": tenant, "order_id": order_id, "revision": revision,
        "reason": decision.reason,
    });
    let record = |event: &str| AuditRecord::new(&id, action, event, &decision.by, target.clone());
    audit.write(&record(crate::audit::event::STARTED)).await?;
    let sent = FutureRecord::<[u8], [u8]>::to(topic)
        .key(key.as_bytes())
        .payload(&value);
    if let Err((err, _)) = producer.send(sent, ctx.timeout).await {
        let mut failed = record(crate::audit::event::FAILED);
        failed.message = Some(err.to_string());
        audit.write(&failed).await?;
        return Err(ReplayError::kafka(format!("writing to `{topic}`"), err));
    }
    audit.write(&record(crate::audit::event::COMPLETED)).await?;
    Ok(Decided {
        order: key,
        revision: *revision,
        decision: name,
        by: decision.by.clone(),
        total: found.total.clone(),
        waiting_since: found.since.clone(),
    })
}

/// The waiting orders as a table.
pub fn print_table(waiting: &[Waiting], out: &mut dyn Write) -> std::io::Result<()> {
    if waiting.is_empty() {
        return writeln!(out, "no order waits for approval");
    }
    let table = Table::new(
        [
            "TENANT",
            "ORDER",
            "REVISION",
            "STATE",
            "WAITING SINCE",
            "TOTAL",
            "REASON",
        ],
        [
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Left,
        ],
    )
    .with_rows(waiting.iter().map(|w| {
        [
            w.tenant.clone(),
            w.order_id.clone(),
            w.revision.to_string(),
            w.state.clone(),
            w.since.clone(),
            w.total.clone(),
            w.reason.clone(),
        ]
    }));
    write!(out, "{}", table.render())
}

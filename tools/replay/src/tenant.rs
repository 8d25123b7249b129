//! `replay tenant`: pause one tenant at one or more stages, resume it, list the pauses in
//! force. Each change is a record on the control topic (`backbone_core::tenant`): a pause is a
//! [`TenantPause`] under `<tenant>:<stage>`, a resume that key's tombstone. Both are audited.

use std::collections::BTreeMap;
use std::io::Write;

use backbone_calendar::format_rfc3339_ms;
use backbone_core::table::{Align, Table};
use backbone_core::tenant::{check_name, control_key, TenantPause};
use rdkafka::producer::FutureRecord;
use serde_json::json;

use crate::audit::{AuditLog, AuditRecord};
use crate::error::ReplayError;
use crate::scan::Scanner;
use crate::Context;

/// The audited actions.
pub mod action {
    /// `replay tenant pause`.
    pub const PAUSE: &str = "tenant-pause";
    /// `replay tenant resume`.
    pub const RESUME: &str = "tenant-resume";
}

/// A change asked for: `tenant` at each of `stages`.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The control topic.
    pub topic: &'a str,
    /// The tenant.
    pub tenant: &'a str,
    /// Consumer groups of the stages.
    pub stages: &'a [String],
    /// Who, for the audit.
    pub operator: &'a str,
}

impl Change<'_> {
    fn check(&self) -> Result<(), ReplayError> {
        const EXPECTED: &str = "a name, without `:` or control characters";
        check_name("tenant", self.tenant)
            .map_err(|_| ReplayError::invalid("--tenant", self.tenant, EXPECTED))?;
        for stage in self.stages {
            check_name("stage", stage)
                .map_err(|_| ReplayError::invalid("--stage", stage, EXPECTED))?;
        }
        Ok(())
    }
}

/// Pauses the tenant at every stage of `change` for `reason`; returns the pauses written.
pub async fn pause(
    ctx: &Context,
    change: &Change<'_>,
    reason: &str,
) -> Result<Vec<TenantPause>, ReplayError> {
    change.check()?;
    let now = backbone_calendar::now_ms();
    let pauses: Vec<TenantPause> = change
        .stages
        .iter()
        .map(|stage| TenantPause {
            tenant: change.tenant.to_owned(),
            stage: stage.clone(),
            reason: reason.to_owned(),
            paused_at_ms: now,
        })
        .collect();
    let values = pauses
        .iter()
        .map(|p| serde_json::to_vec(p).map(Some))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ReplayError::Other {
            what: "encoding a pause".into(),
            message: e.to_string(),
        })?;
    write(ctx, change, action::PAUSE, values).await?;
    Ok(pauses)
}

/// Resumes the tenant at every stage of `change`: its held records go on in order.
pub async fn resume(ctx: &Context, change: &Change<'_>) -> Result<(), ReplayError> {
    change.check()?;
    write(ctx, change, action::RESUME, vec![None; change.stages.len()]).await
}

/// Writes one control record per stage (a value or a tombstone), audited before and after.
async fn write(
    ctx: &Context,
    change: &Change<'_>,
    action: &str,
    values: Vec<Option<Vec<u8>>>,
) -> Result<(), ReplayError> {
    ctx.ensure_topic(change.topic, true).await?;
    let audit = AuditLog::open(ctx).await?;
    let id = format!(
        "t-{}-{:04x}",
        format_rfc3339_ms(backbone_calendar::now_ms()),
        fastrand::u16(..)
    );
    let target = json!({ "topic": change.topic, "tenant": change.tenant, "stages": change.stages });
    let record =
        |event: &str| AuditRecord::new(&id, action, event, change.operator, target.clone());
    audit.write(&record(crate::audit::event::STARTED)).await?;
    let producer = ctx.producer()?;
    for (stage, value) in change.stages.iter().zip(values) {
        let key = control_key(change.tenant, stage);
        let mut sent = FutureRecord::<[u8], [u8]>::to(change.topic).key(key.as_bytes());
        if let Some(value) = value.as_deref() {
            sent = sent.payload(value);
        }
        if let Err((err, _)) = producer.send(sent, ctx.timeout).await {
            let mut failed = record(crate::audit::event::FAILED);
            failed.message = Some(err.to_string());
            audit.write(&failed).await?;
            return Err(ReplayError::kafka(
                format!("writing to `{}`", change.topic),
                err,
            ));
        }
    }
    audit.write(&record(crate::audit::event::COMPLETED)).await
}

/// The pauses in force on `topic`, by tenant and stage.
pub async fn list(ctx: &Context, topic: &str) -> Result<Vec<TenantPause>, ReplayError> {
    let offsets = match ctx.describe(topic, "tenant controls").await {
        Ok(offsets) => offsets,
        Err(ReplayError::UnknownTopic { .. }) => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut latest: BTreeMap<Vec<u8>, Option<TenantPause>> = BTreeMap::new();
    for record in Scanner::start(ctx, topic, offsets.spans(None))
        .collect()
        .await?
    {
        let Some(key) = record.key.clone() else {
            continue;
        };
        let pause = match record.value.as_deref() {
            None => None,
            Some(value) => {
                Some(
                    serde_json::from_slice(value).map_err(|e| ReplayError::Corrupt {
                        what: format!("control record at offset {} of `{topic}`", record.offset),
                        message: e.to_string(),
                    })?,
                )
            }
        };
        latest.insert(key, pause);
    }
    Ok(latest.into_values().flatten().collect())
}

/// The pauses as a table.
pub fn print_table(pauses: &[TenantPause], out: &mut dyn Write) -> std::io::Result<()> {
    if pauses.is_empty() {
        return writeln!(out, "no tenant is paused");
    }
    let table = Table::new(["TENANT", "STAGE", "PAUSED AT", "REASON"], [Align::Left; 4]).with_rows(
        pauses.iter().map(|pause| {
            [
                pause.tenant.clone(),
                pause.stage.clone(),
                format_rfc3339_ms(pause.paused_at_ms),
                pause.reason.clone(),
            ]
        }),
    );
    write!(out, "{}", table.render())
}

//! `order-orchestrator`: runs each confirmed or cancelled sales order through its workflow
//! (`src/workflow.rs`), one step at a time, with the workflow's state in partition state.
//!
//! The orchestrator calls no system itself. It commands each step as an `OrderStep` on
//! `sales.order-steps`, under an idempotency key of the order, its revision and the step; the
//! `order-step-sink` carries it out (retries, backoff, `Retry-After`, a ledger of what was
//! done) and publishes its `DeliveryResult` to `sales.order-step-results`, keyed by the order,
//! which the orchestrator reads beside `sales.orders`: so its `process` stays deterministic
//! and its state, outputs and offsets follow the runtime's delivery guarantee. Every state
//! change goes to `sales.order-status`, a parked order to `sales.order-exceptions` with its
//! reason, and a subscription change to `master.subscriptions`, where usage rating reads it.
//! docs/orchestration.md has the state machine.

mod approval;
#[cfg(test)]
mod fixtures;
mod metrics;
mod records;
mod store;
mod workflow;

pub use approval::ApprovalSettings;
pub use metrics::{names, OrderMetrics};

use std::sync::Arc;
use std::time::Duration;

use backbone_calendar::now_ms;
use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{
    InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State, StateSpec, Wake,
};
use backbone_schemas::types::{
    ApprovalDecision, Contract, DeliveryOutcome, DeliveryResult, OrderApproval, OrderStateChange,
    OrderStep, OrderWorkflowState, SalesOrder, Subscription,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use serde::Deserialize;

use crate::records::{order_key, parse_delivery_key};
use crate::store::{store_order, stored_order, Due, ORDERS, PENDING, WORKFLOWS};
use crate::workflow::{arrival, Arrival, Effect, Phase, Timeouts, Workflow};

/// The `source` of every record the orchestrator writes.
pub(crate) const SOURCE: &str = "order-orchestrator";

/// The `[processor]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorSettings {
    /// Sales orders, keyed `<tenant>:<order_id>`.
    pub orders_topic: String,
    /// The step sink's results, keyed `<tenant>:<order_id>`, co-partitioned with the orders.
    pub results_topic: String,
    /// Approvers' decisions, keyed `<tenant>:<order_id>`, co-partitioned with the orders.
    pub approvals_topic: String,
    /// Where step commands go.
    pub steps_topic: String,
    /// Where every workflow state change goes.
    pub status_topic: String,
    /// Where parked orders go, with their reason, for a person.
    pub exceptions_topic: String,
    /// Where an order's subscription goes once billing holds it.
    pub subscriptions_topic: String,
    /// How long a step may go without a result before the workflow gives up on it.
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// How often each partition's running steps and waiting approvals are checked against
    /// their timeouts.
    #[serde(with = "humantime_serde")]
    pub timeout_check_interval: Duration,
    /// Which orders wait for a person's approval, and for how long.
    pub approval: ApprovalSettings,
}

impl Default for OrchestratorSettings {
    fn default() -> Self {
        Self {
            orders_topic: "sales.orders".to_owned(),
            results_topic: "sales.order-step-results".to_owned(),
            approvals_topic: "sales.order-approvals".to_owned(),
            steps_topic: "sales.order-steps".to_owned(),
            status_topic: "sales.order-status".to_owned(),
            exceptions_topic: "sales.order-exceptions".to_owned(),
            subscriptions_topic: "master.subscriptions".to_owned(),
            step_timeout: Duration::from_secs(300),
            timeout_check_interval: Duration::from_secs(1),
            approval: ApprovalSettings::default(),
        }
    }
}

impl Validate for OrchestratorSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let topics = [
            ("orders_topic", &self.orders_topic),
            ("results_topic", &self.results_topic),
            ("approvals_topic", &self.approvals_topic),
            ("steps_topic", &self.steps_topic),
            ("status_topic", &self.status_topic),
            ("exceptions_topic", &self.exceptions_topic),
            ("subscriptions_topic", &self.subscriptions_topic),
        ];
        for (at, (key, topic)) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
            if let Some((other, _)) = topics[..at].iter().find(|(_, t)| t == topic) {
                return Err(invalid(
                    key,
                    &format!("must differ from processor.{other} (both are `{topic}`)"),
                ));
            }
        }
        for (key, value) in [
            ("step_timeout", self.step_timeout),
            ("timeout_check_interval", self.timeout_check_interval),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero"));
            }
        }
        self.approval.validate()
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: format!("processor.{key}"),
        message: message.to_owned(),
    }
}

/// The processor.
#[derive(Debug, Clone)]
pub struct OrderOrchestrator {
    settings: OrchestratorSettings,
    outputs: Arc<OutputContracts>,
    metrics: Option<Arc<OrderMetrics>>,
}

impl OrderOrchestrator {
    /// An orchestrator decoding and encoding through `codec`.
    pub fn new(settings: OrchestratorSettings, codec: WireCodec) -> Self {
        let outputs = Arc::new(OutputContracts::new(
            codec,
            vec![
                (settings.steps_topic.clone(), OrderStep::FULL_NAME),
                (settings.status_topic.clone(), OrderStateChange::FULL_NAME),
                (
                    settings.exceptions_topic.clone(),
                    OrderStateChange::FULL_NAME,
                ),
                (
                    settings.subscriptions_topic.clone(),
                    Subscription::FULL_NAME,
                ),
            ],
        ));
        Self {
            settings,
            outputs,
            metrics: None,
        }
    }

    fn timeouts(&self) -> Timeouts {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
        Timeouts {
            step_ms: ms(self.settings.step_timeout),
            approval_ms: ms(self.settings.approval.timeout),
        }
    }
}

impl App for OrderOrchestrator {
    const NAME: &'static str = "order-orchestrator";
    const ABOUT: &'static str =
        "Runs confirmed and cancelled sales orders through their quote-to-cash workflow, one step at a time";
    type Settings = OrchestratorSettings;

    fn build(settings: OrchestratorSettings, registry: &RegistryAccess) -> Self {
        Self::new(settings, WireCodec::new(registry.clone()))
    }

    fn register_metrics(
        &mut self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        self.metrics = Some(Arc::new(OrderMetrics::new(registry, Self::NAME)?));
        Ok(())
    }
}

impl Processor for OrderOrchestrator {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![
            self.settings.orders_topic.clone(),
            self.settings.results_topic.clone(),
            self.settings.approvals_topic.clone(),
        ]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![
            self.settings.steps_topic.clone(),
            self.settings.status_topic.clone(),
            self.settings.exceptions_topic.clone(),
            self.settings.subscriptions_topic.clone(),
        ]
    }

    fn state(&self) -> StateSpec {
        StateSpec::stateless()
            .store(WORKFLOWS)
            .store(ORDERS)
            .store(PENDING)
            .store(store::DUE)
    }

    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        Some(self.outputs.clone())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        // The record's time, not the clock's: a redelivered input reproduces its outputs.
        let now_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        if record.topic == self.settings.results_topic {
            self.step_result(record, state, now_ms)
        } else if record.topic == self.settings.approvals_topic {
            self.decision(record, state, now_ms)
        } else {
            self.order(record, state, now_ms)
        }
    }

    fn wake_interval(&self) -> Option<Duration> {
        Some(self.settings.timeout_check_interval)
    }

    /// Gives up on the steps running past the step timeout and on the decisions waiting past
    /// the approval timeout, by the wall clock: what never comes has no record to time it out.
    fn wake(
        &mut self,
        wake: &Wake,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let now_ms = now_ms();
        let due = Due::read(state)?;
        if let Some(metrics) = &self.metrics {
            let waiting = due.approvals_waiting();
            metrics.set_partition(
                wake.partition,
                metrics::PartitionCounts {
                    running: due.len() - waiting.len(),
                    awaiting_approval: waiting.len(),
                    oldest_approval_ms: waiting.into_iter().min(),
                },
                self.settings.timeout_check_interval * 3,
            );
        }
        let timeouts = self.timeouts();
        let mut outputs = Vec::new();
        for key in due.passed(now_ms) {
            let (Some(mut workflow), Some(order)) = (
                state.get_json::<Workflow>(WORKFLOWS, key.as_bytes())?,
                stored_order(state, ORDERS, &key)?,
            ) else {
                continue;
            };
            if let Some(metrics) = &self.metrics {
                match workflow.running() {
                    Some(step) => metrics.step_result(step.name(), "timed_out", None),
                    None => metrics.approval("timed_out"),
                }
            }
            let was = workflow.phase.clone();
            let effects = workflow.time_out(now_ms, timeouts);
            tracing::warn!(order = %key, "an order waited past its timeout for a step's result or a decision");
            outputs.extend(self.apply(state, &key, &order, &was, workflow, effects, now_ms)?);
        }
        Ok(outputs)
    }
}

impl OrderOrchestrator {
    /// A sales order event: starts its workflow, keeps it until the running step is done, or
    /// changes nothing (a repeat, an older revision, a status the workflow does not act on).
    fn order(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let order: SalesOrder = self.decode(record)?;
        let key = order_key(&order);
        check_key(record, &key)?;
        if order.revision < 1 {
            return Err(ProcessError::permanent(
                "invalid_revision",
                format!("order `{key}`: revision {} is below 1", order.revision),
            ));
        }
        let workflow: Option<Workflow> = state.get_json(WORKFLOWS, key.as_bytes())?;
        let pending = stored_order(state, PENDING, &key)?;
        match (
            arrival(workflow.as_ref(), pending.as_ref(), &order),
            workflow,
        ) {
            (Arrival::Start, workflow) => {
                self.start(state, &key, &order, workflow.as_ref(), now_ms)
            }
            (Arrival::Wait, Some(mut workflow)) => {
                workflow.pending = Some(order.revision);
                state.put_json(WORKFLOWS, key.as_bytes(), &workflow)?;
                store_order(state, PENDING, &key, &order)?;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    fn start(
        &self,
        state: &mut State<'_>,
        key: &str,
        order: &SalesOrder,
        before: Option<&Workflow>,
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let approval = self.settings.approval.needed_for(order);
        let Some((workflow, effects)) = Workflow::start(order, before, approval, now_ms) else {
            return Ok(Vec::new());
        };
        store_order(state, ORDERS, key, order)?;
        let was = workflow.phase.clone();
        self.apply(state, key, order, &was, workflow, effects, now_ms)
    }

    /// An approver's decision on the revision waiting for one.
    fn decision(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let approval: OrderApproval = self.decode(record)?;
        let key = format!("{}:{}", approval.metadata.tenant_id, approval.order_id);
        check_key(record, &key)?;
        let decision = match approval.decision {
            ApprovalDecision::Approve => Ok(()),
            ApprovalDecision::Reject => Err(format!(
                "rejected by {}: {}",
                approval.decided_by,
                approval.reason.as_deref().unwrap_or("no reason given")
            )),
            ApprovalDecision::Unknown => {
                return Err(ProcessError::permanent(
                    "unknown_decision",
                    format!("the decision on `{key}` is one this reader does not know"),
                ))
            }
        };
        let (Some(mut workflow), Some(order)) = (
            state.get_json::<Workflow>(WORKFLOWS, key.as_bytes())?,
            stored_order(state, ORDERS, &key)?,
        ) else {
            return Ok(Vec::new());
        };
        let was = workflow.phase.clone();
        let effects = workflow.decide(approval.revision, decision, now_ms);
        if let (Some(metrics), false) = (&self.metrics, effects.is_empty()) {
            metrics.approval(match approval.decision {
                ApprovalDecision::Approve => "approved",
                _ => "rejected",
            });
        }
        self.apply(state, &key, &order, &was, workflow, effects, now_ms)
    }

    /// A step's result, from the step sink: moves the workflow on if it is the running step's.
    fn step_result(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let result: DeliveryResult = self.decode(record)?;
        let (key, step) = parse_delivery_key(&result.delivery_key).ok_or_else(|| {
            ProcessError::permanent(
                "invalid_step_key",
                format!(
                    "delivery_key `{}` is not <tenant>:<order>:<revision>:<workflow>:<step>",
                    result.delivery_key
                ),
            )
        })?;
        check_key(record, key)?;
        let outcome = match result.outcome {
            DeliveryOutcome::Delivered | DeliveryOutcome::AlreadyDelivered => Ok(()),
            DeliveryOutcome::Rejected => Err(format!(
                "{}: {}",
                result.error_code.as_deref().unwrap_or("rejected"),
                result.error_message.as_deref().unwrap_or("")
            )),
            DeliveryOutcome::Unknown => {
                return Err(ProcessError::permanent(
                    "unknown_outcome",
                    format!(
                        "the result of `{}` has an outcome this reader does not know",
                        result.delivery_key
                    ),
                ))
            }
        };
        let (Some(mut workflow), Some(order)) = (
            state.get_json::<Workflow>(WORKFLOWS, key.as_bytes())?,
            stored_order(state, ORDERS, key)?,
        ) else {
            return Ok(Vec::new());
        };
        let (revision, kind, name) = step;
        if workflow.is_running(revision, kind, name) {
            if let Some(metrics) = &self.metrics {
                let took = u64::try_from(now_ms - workflow.started_ms).unwrap_or(0);
                let outcome = if outcome.is_ok() { "done" } else { "refused" };
                metrics.step_result(name.name(), outcome, Some(Duration::from_millis(took)));
            }
        }
        let was = workflow.phase.clone();
        let effects = workflow.result(step, outcome, now_ms);
        self.apply(state, key, &order, &was, workflow, effects, now_ms)
    }

    /// Keeps `workflow` and turns its `effects` into records; starts the pending revision when
    /// the effects say so.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        state: &mut State<'_>,
        key: &str,
        order: &SalesOrder,
        was: &Phase,
        workflow: Workflow,
        effects: Vec<Effect>,
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        if effects.is_empty() {
            return Ok(Vec::new());
        }
        let at_micros = now_ms * 1_000;
        let mut outputs = Vec::new();
        let mut start_pending = false;
        for effect in effects {
            match effect {
                Effect::Step {
                    step,
                    subscription_change,
                    conclusion,
                } => {
                    let command = records::step(
                        order,
                        workflow.kind,
                        step,
                        subscription_change,
                        conclusion,
                        at_micros,
                    );
                    outputs.push(self.output(&self.settings.steps_topic, key, &command)?);
                }
                Effect::State {
                    state: entered,
                    step,
                    reason,
                } => {
                    if let Some(metrics) = &self.metrics {
                        metrics.state_entered(state_name(entered));
                        if entered == OrderWorkflowState::Escalated {
                            metrics.approval("escalated");
                        }
                        if entered == OrderWorkflowState::Compensating
                            && matches!(was, Phase::Running(_))
                        {
                            metrics.compensation_started();
                        }
                    }
                    let change = records::state_change(
                        order,
                        workflow.kind,
                        entered,
                        step,
                        reason,
                        at_micros,
                    );
                    outputs.push(self.output(&self.settings.status_topic, key, &change)?);
                }
                Effect::Park { reason } => {
                    tracing::warn!(order = %key, revision = order.revision, %reason, "order parked for a person");
                    let parked = records::state_change(
                        order,
                        workflow.kind,
                        OrderWorkflowState::Parked,
                        None,
                        Some(reason),
                        at_micros,
                    );
                    outputs.push(self.output(&self.settings.exceptions_topic, key, &parked)?);
                }
                Effect::Subscribed(change) => {
                    let subscription = records::subscription(order, change, at_micros);
                    outputs.extend(self.subscription_output(order, subscription)?);
                }
                Effect::SubscriptionRestored(plan) => {
                    let subscription =
                        records::restored_subscription(order, plan.as_deref(), at_micros);
                    outputs.extend(self.subscription_output(order, subscription)?);
                }
                Effect::StartPending => start_pending = true,
            }
        }
        Due::set(state, key, &workflow, self.timeouts())?;
        state.put_json(WORKFLOWS, key.as_bytes(), &workflow)?;
        if start_pending {
            if let Some(pending) = stored_order(state, PENDING, key)? {
                state.delete(PENDING, key.as_bytes())?;
                let mut before = workflow;
                before.pending = None;
                outputs.extend(self.start(state, key, &pending, Some(&before), now_ms)?);
            }
        }
        Ok(outputs)
    }

    fn decode<T: Contract + serde::de::DeserializeOwned>(
        &self,
        record: &InputRecord<'_>,
    ) -> Result<T, ProcessError> {
        let value = record
            .value
            .ok_or_else(|| ProcessError::permanent("missing_value", "record has no value"))?;
        Ok(self.outputs.codec().decode_cached_as(value, T::schema())?)
    }

    /// `subscription`'s master record, keyed `<tenant>:<subscription id>` as the enricher's
    /// table reads it.
    fn subscription_output(
        &self,
        order: &SalesOrder,
        subscription: Option<Subscription>,
    ) -> Result<Option<OutputRecord>, ProcessError> {
        subscription
            .map(|subscription| {
                let key = format!(
                    "{}:{}",
                    order.metadata.tenant_id, subscription.subscription_id
                );
                self.output(&self.settings.subscriptions_topic, &key, &subscription)
            })
            .transpose()
    }

    fn output<T: Contract + serde::Serialize>(
        &self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<OutputRecord, ProcessError> {
        let id = self.outputs.id(topic)?;
        let value = encode_framed(id, value)
            .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?;
        Ok(OutputRecord {
            topic: topic.to_owned(),
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
        })
    }
}

/// Refuses a record whose key is not its order's: it would be in another partition's state.
fn check_key(record: &InputRecord<'_>, key: &str) -> Result<(), ProcessError> {
    if record.key == Some(key.as_bytes()) {
        return Ok(());
    }
    Err(ProcessError::permanent(
        "key_mismatch",
        format!(
            "{}[{}]@{}: key `{}` is not the order's `{key}`",
            record.topic,
            record.partition,
            record.offset,
            String::from_utf8_lossy(record.key.unwrap_or_default())
        ),
    ))
}

/// The state as metric labels and event ids spell it.
pub(crate) fn state_name(state: OrderWorkflowState) -> &'static str {
    match state {
        OrderWorkflowState::AwaitingApproval => "awaiting_approval",
        OrderWorkflowState::Escalated => "escalated",
        OrderWorkflowState::InProgress => "in_progress",
        OrderWorkflowState::Compensating => "compensating",
        OrderWorkflowState::Fulfilled => "fulfilled",
        OrderWorkflowState::Cancelled => "cancelled",
        OrderWorkflowState::Rejected => "rejected",
        OrderWorkflowState::Parked => "parked",
        OrderWorkflowState::Unknown => "unknown",
    }
}

//! The ERP route: each rated line becomes a balanced [`LedgerPosting`] for its legal entity,
//! with GL accounts from the GL mapping master data.

use backbone_calendar::{civil_from_days, month_bounds};
use backbone_core::ProcessError;
use backbone_schemas::types::{Amount, GlMapping, LedgerPosting, PostingLine, RatedUsage};

use crate::envelope;

/// The posting of `line` under `mapping` on `posting_date`, the local day of the usage in its
/// legal entity's time zone, whose month is the accounting period: receivable debited and
/// revenue credited, the other way round for a negative amount. `None` for a line that moves
/// no money.
pub fn posting(
    line: &RatedUsage,
    mapping: &GlMapping,
    posting_date: i32,
) -> Result<Option<LedgerPosting>, ProcessError> {
    let amount = line.delta_amount;
    if amount.unscaled() == 0 {
        return Ok(None);
    }
    let size = Amount::from_unscaled(amount.unscaled().abs())
        .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?;
    let (period_start, period_end) = month_bounds(posting_date);
    let (year, month, _) = civil_from_days(posting_date);
    let description = format!(
        "Usage {} {year:04}-{month:02} {}",
        line.meter_id, line.subscription_id
    );
    let side = |number: i32, account: &str, debit: bool, receivable: bool| PostingLine {
        line_number: number,
        gl_account: account.to_owned(),
        debit: if debit { size } else { Amount::ZERO },
        credit: if debit { Amount::ZERO } else { size },
        currency: line.currency.clone(),
        description: description.clone(),
        source_rating_id: Some(line.rating_id.clone()),
        customer_id: receivable.then(|| line.customer_id.clone()),
    };
    let positive = amount.unscaled() > 0;
    let lines = vec![
        side(1, &mapping.receivable_account, positive, true),
        side(2, &mapping.revenue_account, !positive, false),
    ];
    Ok(Some(LedgerPosting {
        metadata: envelope(
            &line.metadata,
            &line.rating_id,
            "backbone.erp.posting",
            line.metadata.occurred_at,
        ),
        rating_id: line.rating_id.clone(),
        legal_entity_id: line.legal_entity_id.clone(),
        customer_id: line.customer_id.clone(),
        subscription_id: line.subscription_id.clone(),
        charge_id: line.charge_id.clone(),
        mapping_id: mapping.mapping_id.clone(),
        posting_date,
        period_start,
        period_end,
        currency: line.currency.clone(),
        amount,
        lines,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backbone_schemas::types::{EventMetadata, TraceContext};

    use super::*;
    use crate::tests::{line, DAY, MIDNIGHT};

    fn mapping(
        id: &str,
        entity: &str,
        charge: Option<&str>,
        from: i32,
        to: Option<i32>,
    ) -> GlMapping {
        GlMapping {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: id.into(),
                source: "erp".into(),
                r#type: "backbone.master.gl-mapping".into(),
                occurred_at: 0,
                produced_at: 0,
                trace: TraceContext {
                    traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                    tracestate: None,
                },
                schema_version: None,
            },
            mapping_id: id.into(),
            legal_entity_id: entity.into(),
            product_id: None,
            charge_id: charge.map(str::to_owned),
            revenue_account: format!("4{id}"),
            receivable_account: format!("1{id}"),
            deferred_revenue_account: "2500".into(),
            tax_account: "3800".into(),
            effective_from: from,
            effective_to: to,
        }
    }

    #[test]
    fn the_charge_mapping_beats_the_default_and_dates_bound_both() {
        let default = mapping("d", "le-eu", None, 0, None);
        let charge = mapping("c", "le-eu", Some("api-calls"), DAY, Some(DAY + 1));
        let other_entity = mapping("a", "le-us", Some("api-calls"), 0, None);
        let mut product = mapping("b", "le-eu", Some("api-calls"), 0, None);
        product.product_id = Some("prod-1".into());
        let all: Vec<Arc<GlMapping>> = [default, charge, other_entity, product]
            .into_iter()
            .map(Arc::new)
            .collect();
        let pick =
            |day| GlMapping::select(&all, "le-eu", "api-calls", day).map(|m| m.mapping_id.as_str());
        assert_eq!(pick(DAY), Some("c"));
        assert_eq!(pick(DAY + 1), Some("d"), "the charge mapping has ended");
        assert_eq!(
            pick(DAY - 1),
            Some("d"),
            "the charge mapping has not started"
        );
        assert_eq!(GlMapping::select(&all, "le-xx", "api-calls", DAY), None);
        assert_eq!(
            GlMapping::select(&all, "le-eu", "storage", DAY).map(|m| m.mapping_id.as_str()),
            Some("d")
        );
    }

    #[test]
    fn a_posting_balances_and_a_negative_amount_reverses_the_sides() {
        let gl = mapping("d", "le-eu", None, 0, None);
        let charge = posting(&line("sub-1", "12.500000", MIDNIGHT + 5, DAY), &gl, DAY)
            .expect("posting")
            .expect("a non-zero amount posts");
        let sides: Vec<(&str, String, String)> = charge
            .lines
            .iter()
            .map(|l| {
                (
                    l.gl_account.as_str(),
                    l.debit.to_string(),
                    l.credit.to_string(),
                )
            })
            .collect();
        assert_eq!(
            sides,
            vec![
                ("1d", "12.500000".into(), "0.000000".into()),
                ("4d", "0.000000".into(), "12.500000".into()),
            ]
        );
        assert_eq!(charge.lines[0].customer_id.as_deref(), Some("cust-1"));
        assert_eq!((charge.posting_date, charge.period_start), (DAY, DAY - 26));
        let credit = posting(&line("sub-1", "-3.000000", MIDNIGHT, DAY), &gl, DAY)
            .expect("posting")
            .expect("a negative amount posts");
        assert_eq!(credit.lines[0].credit.to_string(), "3.000000");
        assert_eq!(credit.lines[1].debit.to_string(), "3.000000");
        assert_eq!(credit.amount.to_string(), "-3.000000");
        assert_eq!(
            posting(&line("sub-1", "0", MIDNIGHT, DAY), &gl, DAY).expect("posting"),
            None
        );
    }
}

//! Period-to-date accumulators: what the rater keeps per (subscription, charge, group, period)
//! so that any meter's aggregate can be read after each event.

use backbone_schemas::types::{MeterAggregation, Quantity};
use serde::{Deserialize, Serialize};

use crate::price::round_down_scale;
use crate::RatingError;

/// Unscaled value of one whole unit of a quantity (9 fraction digits).
const ONE: i128 = 1_000_000_000;

/// The running state of one meter over one period. Every aggregation reads from the same
/// fields, so a charge's aggregation can be answered whichever it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulator {
    /// Events added.
    pub events: u64,
    /// Sum of their quantities (unscaled).
    pub sum: i128,
    /// Smallest quantity (unscaled).
    pub min: Option<i128>,
    /// Largest quantity (unscaled).
    pub max: Option<i128>,
    /// The latest event by event time, ties broken by event id: (time, id, quantity unscaled).
    pub latest: Option<(i64, String, i128)>,
    /// Distinct unique values seen; the caller says which values are new.
    pub unique: u64,
    /// Lines emitted for this accumulator so far: the next line's revision is this plus one.
    pub revision: i64,
}

/// One event as a meter sees it.
#[derive(Debug, Clone, Copy)]
pub struct MeterEvent<'a> {
    /// Its quantity.
    pub quantity: Quantity,
    /// Its event time, microseconds since the epoch.
    pub occurred_at: i64,
    /// Its id, to order events of the same time.
    pub event_id: &'a str,
    /// Whether its `unique_value` was not seen before in this accumulator (UNIQUE_COUNT).
    pub new_unique_value: bool,
}

impl Accumulator {
    /// Adds `event`.
    pub fn add(&mut self, event: &MeterEvent<'_>) {
        let quantity = event.quantity.unscaled();
        self.events += 1;
        self.sum = self.sum.saturating_add(quantity);
        self.min = Some(self.min.map_or(quantity, |m| m.min(quantity)));
        self.max = Some(self.max.map_or(quantity, |m| m.max(quantity)));
        let newer = self
            .latest
            .as_ref()
            .is_none_or(|(time, id, _)| (event.occurred_at, event.event_id) > (*time, id.as_str()));
        if newer {
            self.latest = Some((event.occurred_at, event.event_id.to_owned(), quantity));
        }
        if event.new_unique_value {
            self.unique += 1;
        }
    }

    /// The aggregate `aggregation` gives over what was added; zero before any event.
    pub fn aggregate(
        &self,
        aggregation: MeterAggregation,
        charge: &str,
    ) -> Result<Quantity, RatingError> {
        let unscaled = match aggregation {
            MeterAggregation::Sum => Some(self.sum),
            MeterAggregation::Count => i128::from(self.events).checked_mul(ONE),
            MeterAggregation::Min => Some(self.min.unwrap_or(0)),
            MeterAggregation::Max => Some(self.max.unwrap_or(0)),
            MeterAggregation::Avg if self.events == 0 => Some(0),
            MeterAggregation::Avg => {
                // Mean at the quantity's scale, rounded half away from zero on one more digit.
                self.sum.checked_mul(10).and_then(|scaled| {
                    round_down_scale(scaled.checked_div(i128::from(self.events)), 1)
                })
            }
            MeterAggregation::UniqueCount => i128::from(self.unique).checked_mul(ONE),
            MeterAggregation::Latest => Some(self.latest.as_ref().map_or(0, |(_, _, q)| *q)),
            MeterAggregation::TimeWeighted | MeterAggregation::Unknown => {
                return Err(RatingError::Unsupported {
                    charge: charge.to_owned(),
                    what: format!("aggregation {aggregation:?}"),
                })
            }
        };
        unscaled
            .and_then(|u| Quantity::from_unscaled(u).ok())
            .ok_or_else(|| RatingError::Overflow {
                charge: charge.to_owned(),
                what: "the aggregate",
            })
    }
}

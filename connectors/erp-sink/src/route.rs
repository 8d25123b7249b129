//! Which ERP a posting goes to: a legal entity's books move from a legacy ERP to a cloud one on
//! a cutover date, and nothing upstream changes. Each posting is routed by its legal entity
//! and its `posting_date`, so postings dated before an entity's cutover reach the ERP that
//! kept its books then, and later ones the next.

use std::collections::BTreeMap;
use std::fmt;

use backbone_calendar::{format_date, parse_date};
use backbone_core::config::ConfigError;
use serde::{Deserialize, Deserializer};

/// One of the two ERPs the sink posts to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErpTarget {
    /// The cloud ERP's JSON journal API (the sink's `[destination]`).
    #[default]
    Cloud,
    /// The legacy ERP, which imports files and answers with acknowledgement files
    /// (`[sink.legacy]`).
    Legacy,
}

impl fmt::Display for ErpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cloud => "cloud",
            Self::Legacy => "legacy",
        })
    }
}

/// A `[[sink.routes]]` entry: from `effective_from` on, `legal_entity_id`'s postings go to
/// `erp`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The legal entity routed.
    pub legal_entity_id: String,
    /// Where its postings go.
    pub erp: ErpTarget,
    /// The first posting date routed so, `YYYY-MM-DD` in the config.
    #[serde(deserialize_with = "date")]
    pub effective_from: i32,
}

fn date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_date(&text).ok_or_else(|| {
        serde::de::Error::custom(format!("expected a date like \"2026-11-16\", got {text:?}"))
    })
}

/// The routes by legal entity, each entity's by date.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    default: ErpTarget,
    by_entity: BTreeMap<String, BTreeMap<i32, ErpTarget>>,
}

impl Routes {
    /// `routes`, with `default` for entities and dates no route covers. Two routes of one
    /// entity from the same date are refused, naming them.
    pub fn new(default: ErpTarget, routes: &[Route]) -> Result<Self, ConfigError> {
        let mut by_entity: BTreeMap<String, BTreeMap<i32, ErpTarget>> = BTreeMap::new();
        for (i, route) in routes.iter().enumerate() {
            let invalid = |message: String| ConfigError::Invalid {
                key: format!("sink.routes[{i}]"),
                message,
            };
            if route.legal_entity_id.is_empty() {
                return Err(invalid("legal_entity_id must not be empty".to_owned()));
            }
            let dates = by_entity.entry(route.legal_entity_id.clone()).or_default();
            if dates.insert(route.effective_from, route.erp).is_some() {
                return Err(invalid(format!(
                    "a second route for `{}` from {}",
                    route.legal_entity_id,
                    format_date(route.effective_from)
                )));
            }
        }
        Ok(Self { default, by_entity })
    }

    /// The ERP that keeps `legal_entity_id`'s books on `posting_date`: its latest route
    /// effective on or before that day, else the default.
    pub fn target(&self, legal_entity_id: &str, posting_date: i32) -> ErpTarget {
        self.by_entity
            .get(legal_entity_id)
            .and_then(|dates| dates.range(..=posting_date).next_back())
            .map(|(_, erp)| *erp)
            .unwrap_or(self.default)
    }

    /// Whether any posting can reach `erp`.
    pub fn reaches(&self, erp: ErpTarget) -> bool {
        self.default == erp
            || self
                .by_entity
                .values()
                .any(|dates| dates.values().any(|e| *e == erp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(entity: &str, erp: ErpTarget, from: &str) -> Route {
        Route {
            legal_entity_id: entity.to_owned(),
            erp,
            effective_from: parse_date(from).expect("date"),
        }
    }

    #[test]
    fn a_posting_goes_to_the_erp_of_its_entity_on_its_date() {
        let routes = Routes::new(
            ErpTarget::Cloud,
            &[
                route("le-berlin", ErpTarget::Legacy, "2020-01-01"),
                route("le-berlin", ErpTarget::Cloud, "2026-11-16"),
            ],
        )
        .expect("routes");
        let on = |entity: &str, day: &str| routes.target(entity, parse_date(day).expect("day"));
        assert_eq!(on("le-berlin", "2026-11-15"), ErpTarget::Legacy);
        assert_eq!(on("le-berlin", "2026-11-16"), ErpTarget::Cloud);
        assert_eq!(
            on("le-berlin", "2019-12-31"),
            ErpTarget::Cloud,
            "before any route"
        );
        assert_eq!(
            on("le-us", "2026-11-15"),
            ErpTarget::Cloud,
            "an entity not routed"
        );
        assert!(routes.reaches(ErpTarget::Legacy));
        assert!(!Routes::new(ErpTarget::Cloud, &[])
            .expect("none")
            .reaches(ErpTarget::Legacy));
    }

    #[test]
    fn two_routes_of_an_entity_from_one_day_are_refused() {
        let err = Routes::new(
            ErpTarget::Cloud,
            &[
                route("le-berlin", ErpTarget::Legacy, "2026-11-16"),
                route("le-berlin", ErpTarget::Cloud, "2026-11-16"),
            ],
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("sink.routes[1]")
                && text.contains("le-berlin")
                && text.contains("2026-11-16"),
            "{text}"
        );
    }
}

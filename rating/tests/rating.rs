//! Rating arithmetic: published tier examples, every charge model, free units and spend
//! bounds, cumulative deltas under any split and order, billing periods and line ids.

use backbone_calendar::{civil_from_days, days_from_civil};
use backbone_rating::{price, rate, Accumulator, MeterEvent, PeriodPlan, RatingError, RatingKey};
use backbone_schemas::types::{
    Amount, BillingInterval, ChargeModel, MeterAggregation, PriceTier, Quantity, RateCharge,
    UnitPrice,
};
use proptest::prelude::*;

fn q(text: &str) -> Quantity {
    text.parse().expect("quantity")
}

fn a(text: &str) -> Amount {
    text.parse().expect("amount")
}

fn p(text: &str) -> UnitPrice {
    text.parse().expect("unit price")
}

fn charge(model: ChargeModel) -> RateCharge {
    RateCharge {
        charge_id: "api-calls".into(),
        name: "API calls".into(),
        meter_id: "api_calls".into(),
        aggregation: MeterAggregation::Sum,
        charge_model: model,
        flat_amount: None,
        unit_price: None,
        package_size: None,
        percentage: None,
        free_units: None,
        minimum_spend: None,
        maximum_spend: None,
        tiers: Vec::new(),
        group_by: Vec::new(),
    }
}

fn tier(up_to: Option<&str>, unit_price: &str) -> PriceTier {
    PriceTier {
        up_to: up_to.map(q),
        unit_price: p(unit_price),
        flat_fee: None,
    }
}

fn tiered(model: ChargeModel, tiers: Vec<PriceTier>) -> RateCharge {
    RateCharge {
        tiers,
        ..charge(model)
    }
}

/// Stripe's "Typographic" example: fonts 1-5 at 7 USD, 6-10 at 6.50 USD, 11 and more at 6 USD.
/// Source: <https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing>.
fn typographic(model: ChargeModel) -> RateCharge {
    tiered(
        model,
        vec![
            tier(Some("5"), "7"),
            tier(Some("10"), "6.5"),
            tier(None, "6"),
        ],
    )
}

/// Stripe's older tiers example: 5, 4, 3, 2 and 1 USD per unit above 5, 10, 15 and 20 units.
/// Source: <https://stripe.com/docs/billing/subscriptions/tiers>.
fn stripe_five_tiers(model: ChargeModel) -> RateCharge {
    tiered(
        model,
        vec![
            tier(Some("5"), "5"),
            tier(Some("10"), "4"),
            tier(Some("15"), "3"),
            tier(Some("20"), "2"),
            tier(None, "1"),
        ],
    )
}

#[test]
fn published_volume_examples_give_the_published_amounts() {
    let volume = typographic(ChargeModel::Volume);
    for (quantity, amount) in [
        ("1", "7"),
        ("5", "35"),
        ("6", "39"),
        ("20", "120"),
        ("25", "150"),
    ] {
        assert_eq!(
            price(&volume, q(quantity)),
            Ok(a(amount)),
            "{quantity} fonts"
        );
    }
    let volume = stripe_five_tiers(ChargeModel::Volume);
    for (quantity, amount) in [
        ("1", "5"),
        ("5", "25"),
        ("6", "24"),
        ("20", "40"),
        ("25", "25"),
    ] {
        assert_eq!(
            price(&volume, q(quantity)),
            Ok(a(amount)),
            "{quantity} units"
        );
    }
}

#[test]
fn published_graduated_examples_give_the_published_amounts() {
    // Typographic, graduated: 5 x 7 = 35; then 6.50 each up to 10; then 6 each.
    let graduated = typographic(ChargeModel::Graduated);
    for (quantity, amount) in [
        ("1", "7"),
        ("5", "35"),
        ("6", "41.5"),
        ("20", "127.5"),
        ("25", "157.5"),
    ] {
        assert_eq!(
            price(&graduated, q(quantity)),
            Ok(a(amount)),
            "{quantity} fonts"
        );
    }
    // Stripe: "the total cost for an amount of 6 is $29".
    assert_eq!(
        price(&stripe_five_tiers(ChargeModel::Graduated), q("6")),
        Ok(a("29"))
    );
}

#[test]
fn tier_flat_fees_are_due_once_usage_enters_the_tier() {
    let mut graduated = typographic(ChargeModel::Graduated);
    graduated.tiers[1].flat_fee = Some(a("10"));
    assert_eq!(price(&graduated, q("5")), Ok(a("35")));
    assert_eq!(price(&graduated, q("6")), Ok(a("51.5")));
    let mut volume = typographic(ChargeModel::Volume);
    volume.tiers[0].flat_fee = Some(a("2"));
    volume.tiers[2].flat_fee = Some(a("1"));
    assert_eq!(price(&volume, q("5")), Ok(a("37")));
    assert_eq!(price(&volume, q("11")), Ok(a("67")));
}

#[test]
fn unit_package_percentage_and_flat_models() {
    let unit = RateCharge {
        unit_price: Some(p("0.0015")),
        ..charge(ChargeModel::Unit)
    };
    assert_eq!(price(&unit, q("1000")), Ok(a("1.5")));
    // 0.0000005 rounds half away from zero to 0.000001.
    assert_eq!(price(&unit, q("0.0005")), Ok(a("0.000001")));
    assert_eq!(price(&unit, q("0.0003")), Ok(a("0")));

    let package = RateCharge {
        unit_price: Some(p("25")),
        package_size: Some(q("100")),
        ..charge(ChargeModel::Package)
    };
    assert_eq!(price(&package, q("100")), Ok(a("25")));
    assert_eq!(
        price(&package, q("100.000000001")),
        Ok(a("50")),
        "a started package is billed"
    );

    let percentage = RateCharge {
        percentage: Some("2.9".parse().expect("percent")),
        ..charge(ChargeModel::Percentage)
    };
    assert_eq!(price(&percentage, q("1250")), Ok(a("36.25")));

    let flat = RateCharge {
        flat_amount: Some(a("49")),
        ..charge(ChargeModel::Flat)
    };
    assert_eq!(price(&flat, q("0")), Ok(a("0")), "no usage, no fee");
    assert_eq!(price(&flat, q("0.5")), Ok(a("49")));
    assert_eq!(price(&flat, q("5000")), Ok(a("49")));
}

#[test]
fn free_units_come_off_first_and_spend_bounds_come_last() {
    let unit = RateCharge {
        unit_price: Some(p("2")),
        free_units: Some(q("10")),
        ..charge(ChargeModel::Unit)
    };
    assert_eq!(price(&unit, q("8")), Ok(a("0")));
    assert_eq!(price(&unit, q("15")), Ok(a("10")));

    let bounded = RateCharge {
        minimum_spend: Some(a("5")),
        maximum_spend: Some(a("30")),
        ..unit
    };
    assert_eq!(price(&bounded, q("0")), Ok(a("0")), "no usage, no minimum");
    assert_eq!(
        price(&bounded, q("8")),
        Ok(a("5")),
        "usage within the free units"
    );
    assert_eq!(price(&bounded, q("15")), Ok(a("10")));
    assert_eq!(price(&bounded, q("100")), Ok(a("30")));

    // Free units apply before tiers too: 7 units, 2 free, graduated over 5 at 7 USD.
    let graduated = RateCharge {
        free_units: Some(q("2")),
        ..typographic(ChargeModel::Graduated)
    };
    assert_eq!(price(&graduated, q("7")), Ok(a("35")));
}

#[test]
fn unusable_charges_are_errors_that_name_charge_and_field() {
    let missing = price(&charge(ChargeModel::Unit), q("1")).unwrap_err();
    assert_eq!(
        missing.to_string(),
        "charge `api-calls`: UNIT charges need `unit_price`"
    );
    let open_ended = tiered(ChargeModel::Graduated, vec![tier(Some("5"), "1")]);
    assert!(matches!(
        price(&open_ended, q("1")),
        Err(RatingError::BadTiers { .. })
    ));
    let descending = tiered(
        ChargeModel::Volume,
        vec![tier(Some("5"), "1"), tier(Some("3"), "1"), tier(None, "1")],
    );
    assert!(matches!(
        price(&descending, q("1")),
        Err(RatingError::BadTiers { .. })
    ));
    let zero_package = RateCharge {
        unit_price: Some(p("1")),
        package_size: Some(q("0")),
        ..charge(ChargeModel::Package)
    };
    assert!(matches!(
        price(&zero_package, q("1")),
        Err(RatingError::BadValue {
            field: "package_size",
            ..
        })
    ));
    let inverted = RateCharge {
        unit_price: Some(p("1")),
        minimum_spend: Some(a("10")),
        maximum_spend: Some(a("5")),
        ..charge(ChargeModel::Unit)
    };
    assert!(price(&inverted, q("1")).is_err());
    assert!(matches!(
        price(&charge(ChargeModel::Unknown), q("1")),
        Err(RatingError::Unsupported { .. })
    ));
}

fn event(quantity: i128, at: i64, id: &str, new_unique: bool) -> MeterEvent<'_> {
    MeterEvent {
        quantity: Quantity::from_unscaled(quantity).expect("quantity"),
        occurred_at: at,
        event_id: id,
        new_unique_value: new_unique,
    }
}

#[test]
fn every_meter_reads_its_aggregate() {
    let mut acc = Accumulator::default();
    for (i, (quantity, at)) in [
        (3_000_000_000, 30),
        (1_000_000_000, 10),
        (5_000_000_000, 20),
    ]
    .into_iter()
    .enumerate()
    {
        acc.add(&event(quantity, at, &format!("e-{i}"), i != 1));
    }
    let read = |aggregation| acc.aggregate(aggregation, "c").expect("aggregate");
    assert_eq!(read(MeterAggregation::Sum), q("9"));
    assert_eq!(read(MeterAggregation::Count), q("3"));
    assert_eq!(read(MeterAggregation::Min), q("1"));
    assert_eq!(read(MeterAggregation::Max), q("5"));
    assert_eq!(read(MeterAggregation::Avg), q("3"));
    assert_eq!(read(MeterAggregation::UniqueCount), q("2"));
    assert_eq!(
        read(MeterAggregation::Latest),
        q("3"),
        "the event at time 30"
    );
    assert!(acc.aggregate(MeterAggregation::TimeWeighted, "c").is_err());

    let mut thirds = Accumulator::default();
    thirds.add(&event(1_000_000_000, 1, "a", true));
    thirds.add(&event(0, 2, "b", true));
    thirds.add(&event(1_000_000_000, 3, "c", true));
    assert_eq!(
        thirds.aggregate(MeterAggregation::Avg, "c"),
        Ok(q("0.666666667")),
        "the mean rounds half away from zero"
    );
}

#[test]
fn rating_ids_are_stable_and_tell_inputs_apart() {
    let key = RatingKey {
        tenant_id: "acme",
        subscription_id: "sub-1",
        charge_id: "api-calls",
        group_key: "region=eu",
        period_start: 20_000,
        input: "acme/api/e-1",
    };
    let id = key.rating_id();
    assert_eq!(id, key.rating_id());
    assert!(id.starts_with("rtg-") && id.len() == 36, "{id}");
    let other_input = RatingKey {
        input: "acme/api/e-2",
        ..key
    };
    assert_ne!(id, other_input.rating_id());
    // Fields are length-prefixed: moving a character between fields changes the id.
    let shifted = RatingKey {
        subscription_id: "sub-1a",
        charge_id: "pi-calls",
        ..key
    };
    assert_ne!(id, shifted.rating_id());
}

#[test]
fn periods_follow_the_anchor_day_and_clamp_to_short_months() {
    let day = |y, m, d| days_from_civil(y, m, d);
    // Anchored on the 31st: January 31, February 28 (2027 is no leap year), March 31.
    let monthly = PeriodPlan::new(day(2027, 1, 31), 31, BillingInterval::Monthly).expect("plan");
    let february = monthly.period_of(day(2027, 2, 15));
    assert_eq!(
        (february.start, february.end),
        (day(2027, 1, 31), day(2027, 2, 28))
    );
    let march = monthly.next(february);
    assert_eq!(
        (march.start, march.end),
        (day(2027, 2, 28), day(2027, 3, 31))
    );
    // A leap year's February 29.
    let leap = PeriodPlan::new(day(2028, 1, 31), 31, BillingInterval::Monthly).expect("plan");
    assert_eq!(leap.period_of(day(2028, 3, 1)).start, day(2028, 2, 29));
    // Quarterly from March 15: the series keeps the reference's phase, before it too.
    let quarterly =
        PeriodPlan::new(day(2026, 3, 15), 15, BillingInterval::Quarterly).expect("plan");
    let q3 = quarterly.period_of(day(2026, 7, 1));
    assert_eq!((q3.start, q3.end), (day(2026, 6, 15), day(2026, 9, 15)));
    let earlier = quarterly.period_of(day(2025, 12, 20));
    assert_eq!(
        (earlier.start, earlier.end),
        (day(2025, 12, 15), day(2026, 3, 15))
    );
    let annual = PeriodPlan::new(day(2026, 2, 1), 1, BillingInterval::Annual).expect("plan");
    assert_eq!(annual.period_of(day(2027, 1, 31)).end, day(2027, 2, 1));
    assert!(PeriodPlan::new(0, 32, BillingInterval::Monthly).is_err());
    assert!(PeriodPlan::new(0, 1, BillingInterval::Unknown).is_err());
}

#[test]
fn calendar_conversions_agree_with_known_dates() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(days_from_civil(2026, 11, 27), 20_784);
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
}

fn tiers_strategy() -> impl Strategy<Value = Vec<PriceTier>> {
    // 1 to 4 tiers with increasing bounds (whole units) and prices with 4 decimals.
    prop::collection::vec((1u64..50, 0u64..200_000), 1..5).prop_map(|steps| {
        let mut bound = 0u64;
        let last = steps.len() - 1;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (width, price))| {
                bound += width;
                PriceTier {
                    up_to: (i < last)
                        .then(|| Quantity::from_unscaled(i128::from(bound) * 1_000_000_000))
                        .transpose()
                        .expect("bound"),
                    unit_price: UnitPrice::from_unscaled(i128::from(price) * 100_000_000)
                        .expect("price"),
                    flat_fee: None,
                }
            })
            .collect()
    })
}

fn model_strategy() -> impl Strategy<Value = RateCharge> {
    (
        prop_oneof![
            Just(ChargeModel::Graduated),
            Just(ChargeModel::Volume),
            Just(ChargeModel::Unit),
            Just(ChargeModel::Package),
        ],
        tiers_strategy(),
        0u64..5,
        prop::option::of(0u64..5_000),
        prop::option::of(5_000u64..50_000),
    )
        .prop_map(|(model, tiers, free, minimum, maximum)| RateCharge {
            tiers,
            unit_price: Some(UnitPrice::from_unscaled(12_345_678_901).expect("price")),
            package_size: Some(Quantity::from_unscaled(2_500_000_000).expect("size")),
            free_units: Some(
                Quantity::from_unscaled(i128::from(free) * 1_000_000_000).expect("free"),
            ),
            minimum_spend: minimum
                .map(|m| Amount::from_unscaled(i128::from(m) * 1_000).expect("min")),
            maximum_spend: maximum
                .map(|m| Amount::from_unscaled(i128::from(m) * 1_000_000).expect("max")),
            ..charge(model)
        })
}

proptest! {
    /// For any charge, and any split of usage into events in any order, the deltas add up to
    /// the price of the total.
    #[test]
    fn deltas_add_up_to_the_price_of_the_total(
        charge in model_strategy(),
        quantities in prop::collection::vec(0i128..30_000_000_000, 1..40),
        order in any::<prop::sample::Index>(),
    ) {
        let mut events: Vec<(usize, i128)> = quantities.iter().copied().enumerate().collect();
        let rotate = order.index(events.len());
        events.rotate_left(rotate);
        let mut acc = Accumulator::default();
        let mut billed = Amount::ZERO;
        for (i, quantity) in &events {
            let before = acc.clone();
            let id = format!("e-{i}");
            acc.add(&event(*quantity, 0, &id, true));
            let delta = rate(&charge, &before, &acc).expect("rate");
            billed = billed.checked_add(delta.delta).expect("sum");
        }
        let total = Quantity::from_unscaled(quantities.iter().sum()).expect("total");
        prop_assert_eq!(billed, price(&charge, total).expect("price"));
    }

    /// The final aggregate of every meter does not depend on the order events arrive in.
    #[test]
    fn aggregates_do_not_depend_on_arrival_order(
        events in prop::collection::vec((0i128..10_000_000_000, 0i64..1_000), 1..30),
        seed in any::<prop::sample::Index>(),
    ) {
        let add_all = |order: &[usize]| {
            let mut acc = Accumulator::default();
            for &i in order {
                let (quantity, at) = events[i];
                acc.add(&event(quantity, at, &format!("e-{i:03}"), true));
            }
            acc
        };
        let forward: Vec<usize> = (0..events.len()).collect();
        let mut shuffled = forward.clone();
        let len = shuffled.len();
        shuffled.rotate_left(seed.index(len));
        shuffled.reverse();
        let (a, b) = (add_all(&forward), add_all(&shuffled));
        for aggregation in [
            MeterAggregation::Sum,
            MeterAggregation::Count,
            MeterAggregation::Min,
            MeterAggregation::Max,
            MeterAggregation::Avg,
            MeterAggregation::UniqueCount,
            MeterAggregation::Latest,
        ] {
            prop_assert_eq!(a.aggregate(aggregation, "c"), b.aggregate(aggregation, "c"));
        }
    }

    /// Day numbers and calendar dates convert both ways.
    #[test]
    fn calendar_conversions_round_trip(day in -1_000_000i32..1_000_000) {
        let (year, month, day_of_month) = civil_from_days(day);
        prop_assert_eq!(days_from_civil(year, month, day_of_month), day);
    }

    /// Every day falls in exactly the period `period_of` gives, and consecutive periods touch.
    #[test]
    fn periods_tile_the_calendar(
        reference in 10_000i32..30_000,
        anchor in 1i32..=31,
        interval in prop_oneof![
            Just(BillingInterval::Monthly),
            Just(BillingInterval::Quarterly),
            Just(BillingInterval::Annual),
        ],
        day in 10_000i32..30_000,
    ) {
        let plan = PeriodPlan::new(reference, anchor, interval).expect("plan");
        let period = plan.period_of(day);
        prop_assert!(period.contains(day));
        prop_assert_eq!(plan.next(period).start, period.end);
        prop_assert_eq!(plan.period_of(period.start), period);
        prop_assert_eq!(plan.period_of(period.end - 1), period);
    }
}

//! The one metrics encoder: every collector describes its families as a table of
//! [`Family`] rows and hands it to [`encode`]. Values are read when `/metrics` is scraped,
//! so the hot path only bumps uncontended atomics. Labels are bounded sets (transports,
//! reasons, protocols), never a MAC, an IP, a LAN name or a token subject.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One metric family: a name, its help text and its samples.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: Kind,
    pub(crate) samples: Samples,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// An unlabelled value, or one value per label value.
#[derive(Debug)]
pub(crate) enum Samples {
    One(i64),
    By {
        label: &'static str,
        rows: Vec<(&'static str, i64)>,
    },
    /// One value per pair of label values, e.g. transport and reason.
    By2 {
        labels: [&'static str; 2],
        rows: Vec<([&'static str; 2], i64)>,
    },
}

impl Family {
    pub(crate) fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self::one(name, help, Kind::Counter, clamp(value))
    }

    pub(crate) fn gauge(name: &'static str, help: &'static str, value: i64) -> Self {
        Self::one(name, help, Kind::Gauge, value)
    }

    /// A counter per label value, e.g. `("reason", [("too_short", 3), ...])`.
    pub(crate) fn counters_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        rows: impl IntoIterator<Item = (&'static str, u64)>,
    ) -> Self {
        Self::by(
            name,
            help,
            Kind::Counter,
            label,
            rows.into_iter().map(|(l, v)| (l, clamp(v))),
        )
    }

    /// A counter per pair of label values, e.g.
    /// `(["transport", "reason"], [(["webrtc", "send_buffer_full"], 3), ...])`.
    pub(crate) fn counters_by2(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; 2],
        rows: impl IntoIterator<Item = ([&'static str; 2], u64)>,
    ) -> Self {
        Family {
            name,
            help,
            kind: Kind::Counter,
            samples: Samples::By2 {
                labels,
                rows: rows.into_iter().map(|(l, v)| (l, clamp(v))).collect(),
            },
        }
    }

    pub(crate) fn gauges_by(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        rows: impl IntoIterator<Item = (&'static str, i64)>,
    ) -> Self {
        Self::by(name, help, Kind::Gauge, label, rows)
    }

    fn one(name: &'static str, help: &'static str, kind: Kind, value: i64) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Samples::One(value),
        }
    }

    fn by(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        label: &'static str,
        rows: impl IntoIterator<Item = (&'static str, i64)>,
    ) -> Self {
        Family {
            name,
            help,
            kind,
            samples: Samples::By {
                label,
                rows: rows.into_iter().collect(),
            },
        }
    }
}

/// Counters are u64 but OpenMetrics encodes them through i64 here; a counter past
/// i64::MAX (never, in practice) stays at the maximum rather than wrapping negative.
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Writes every family of the table.
pub(crate) fn encode(
    encoder: &mut DescriptorEncoder,
    families: impl IntoIterator<Item = Family>,
) -> Result<(), std::fmt::Error> {
    for family in families {
        let metric_type = match family.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
        };
        let mut descriptor =
            encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
        match family.samples {
            Samples::One(value) => sample(family.kind, value, descriptor)?,
            Samples::By { label, rows } => {
                for (label_value, value) in rows {
                    let labels = [(label, label_value)];
                    sample(family.kind, value, descriptor.encode_family(&labels)?)?;
                }
            }
            Samples::By2 { labels, rows } => {
                for ([a, b], value) in rows {
                    let labels = [(labels[0], a), (labels[1], b)];
                    sample(family.kind, value, descriptor.encode_family(&labels)?)?;
                }
            }
        }
    }
    Ok(())
}

fn sample(
    kind: Kind,
    value: i64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(value.max(0) as u64).encode(encoder),
        Kind::Gauge => ConstGauge::new(value).encode(encoder),
    }
}

/// A collector that encodes the table its closure builds at each scrape.
pub(crate) struct TableCollector<F>(pub(crate) F);

impl<F> std::fmt::Debug for TableCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableCollector")
    }
}

impl<F> prometheus_client::collector::Collector for TableCollector<F>
where
    F: Fn() -> Vec<Family> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(&mut encoder, (self.0)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn a_table_renders_as_openmetrics() {
        let mut registry = Registry::with_prefix("v86_relay");
        registry.register_collector(Box::new(TableCollector(|| {
            vec![
                Family::gauge("lans", "LANs", 2),
                Family::counters_by("drops", "Drops", "reason", [("a", 1), ("b", 0)]),
                Family::counters_by2("lost", "Lost", ["t", "r"], [(["x", "y"], 2)]),
            ]
        })));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("v86_relay_lans 2\n"), "{out}");
        assert!(
            out.contains("v86_relay_drops_total{reason=\"a\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE v86_relay_drops counter"), "{out}");
        assert!(
            out.contains("v86_relay_lost_total{t=\"x\",r=\"y\"} 2\n"),
            "{out}"
        );
    }
}

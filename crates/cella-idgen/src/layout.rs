//! Id layouts as data: which fields an id is made of, most significant first, and how wide
//! each is — in bits (a binary layout, the id is a number below 2^63) or in decimal digits
//! (a decimal layout, the id is a fixed-width string of digits, below 10^38).
//!
//! Guarantees of a validated [`Layout`]:
//! - exactly one timestamp field, and it is the most significant, so a later timestamp
//!   always gives a larger id (numerically, and as a string for decimal layouts);
//! - exactly one sequence and one worker field; any number of tag fields (caller-chosen
//!   values such as an order type or database/table suffixes, so a record can be routed by
//!   its id alone);
//! - every field's value fits in a `u64`, and [`Layout::encode`] / [`Layout::decode`] are
//!   exact inverses for values within the field widths.
//!
//! Built-ins: [`SNOWFLAKE64`] (41-bit ms timestamp, 10-bit worker, 12-bit sequence) and
//! [`ORDER32`] (the 32-digit order number: 15 timestamp, 4 sequence, 2 type, 7 machine,
//! 2 database suffix, 2 table suffix).

use serde::{Deserialize, Serialize};

use crate::error::{IdgenError, IdgenResult};

/// Name of the built-in classic 64-bit snowflake layout.
pub const SNOWFLAKE64: &str = "snowflake64";
/// Name of the built-in 32-digit order-number layout.
pub const ORDER32: &str = "order32";

/// Epoch of the built-in layouts: 2020-01-01T00:00:00Z, in ms since 1970.
pub const DEFAULT_EPOCH_UNIX_MS: u64 = 1_577_836_800_000;

/// Most bits a binary layout may use: ids stay positive in a signed 64-bit integer.
const MAX_BITS: u32 = 63;
/// Most digits a decimal layout may use: every such number fits in a `u128`.
const MAX_DIGITS: u32 = 38;
/// Most digits one decimal field may use, so its value fits in a `u64`.
const MAX_FIELD_DIGITS: u32 = 19;
/// Longest layout or field name.
const MAX_NAME_LEN: usize = 64;

/// How an id's fields are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Radix {
    /// Field widths are bits; the id is printed as a decimal number.
    Binary,
    /// Field widths are decimal digits; the id is printed zero-padded to the full width.
    Decimal,
}

/// What fills a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Milliseconds since the layout's epoch.
    Timestamp,
    /// Counter within one millisecond.
    Sequence,
    /// The generator's leased worker id.
    Worker,
    /// A value the caller chooses per request (0 when not given).
    Tag,
}

/// One field of a layout definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// The field's name, as decode reports it (`[a-z0-9_]`, 1–64 chars).
    pub name: String,
    /// What fills it.
    pub kind: FieldKind,
    /// Its width, in bits or digits according to the layout's radix.
    pub width: u32,
}

/// A layout definition as written in configuration; [`Layout::new`] validates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutSpec {
    /// The layout's name (`[a-z0-9_-]`, 1–64 chars); it appears in core keys.
    pub name: String,
    /// Bits or decimal digits.
    pub radix: Radix,
    /// The timestamp field counts milliseconds from this instant (ms since 1970).
    #[serde(default = "default_epoch")]
    pub epoch_unix_ms: u64,
    /// The fields, most significant first.
    pub fields: Vec<FieldSpec>,
}

fn default_epoch() -> u64 {
    DEFAULT_EPOCH_UNIX_MS
}

/// An id of some layout: the number its fields pack into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub u128);

/// A validated layout: encodes field values into ids and decodes ids back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    spec: LayoutSpec,
    /// Per field: how many values it holds (2^bits or 10^digits).
    capacity: Vec<u128>,
    /// Per field: what one unit of it is worth in the packed id.
    unit: Vec<u128>,
    /// Indices of the timestamp, sequence and worker fields.
    timestamp: usize,
    sequence: usize,
    worker: usize,
}

/// The parts of a decoded id, field by field in layout order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decoded {
    /// The layout's name.
    pub layout: String,
    /// The id as text.
    pub id: String,
    /// The timestamp as ms since 1970 (the epoch plus the timestamp field).
    pub unix_ms: u64,
    /// Each field's name and value, most significant first.
    pub fields: Vec<(String, u64)>,
}

fn field(name: &str, kind: FieldKind, width: u32) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        kind,
        width,
    }
}

/// The built-in layout definitions.
pub fn builtin_specs() -> Vec<LayoutSpec> {
    use FieldKind::*;
    vec![
        LayoutSpec {
            name: SNOWFLAKE64.into(),
            radix: Radix::Binary,
            epoch_unix_ms: DEFAULT_EPOCH_UNIX_MS,
            fields: vec![
                field("timestamp", Timestamp, 41),
                field("worker", Worker, 10),
                field("sequence", Sequence, 12),
            ],
        },
        LayoutSpec {
            name: ORDER32.into(),
            radix: Radix::Decimal,
            epoch_unix_ms: DEFAULT_EPOCH_UNIX_MS,
            fields: vec![
                field("timestamp", Timestamp, 15),
                field("sequence", Sequence, 4),
                field("type", Tag, 2),
                field("machine", Worker, 7),
                field("db", Tag, 2),
                field("table", Tag, 2),
            ],
        },
    ]
}

/// Checks a layout or field name: 1–64 chars of `allowed`.
fn check_name(layout: &str, what: &str, name: &str, extra: &[char]) -> IdgenResult<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c));
    if ok {
        return Ok(());
    }
    let allowed = if extra.contains(&'-') {
        "a-z, 0-9, '_' and '-'"
    } else {
        "a-z, 0-9 and '_'"
    };
    Err(IdgenError::InvalidLayout {
        layout: layout.into(),
        field: what.into(),
        rule: format!("is {name:?}; it must be 1 to {MAX_NAME_LEN} characters of {allowed}"),
    })
}

impl Layout {
    /// Validates a definition; errors name the field and the broken rule.
    pub fn new(spec: LayoutSpec) -> IdgenResult<Layout> {
        let name = spec.name.clone();
        check_name(&name, "name", &spec.name, &['_', '-'])?;
        let invalid = |field: &str, rule: String| IdgenError::InvalidLayout {
            layout: name.clone(),
            field: field.into(),
            rule,
        };
        if spec.fields.is_empty() {
            return Err(invalid(
                "fields",
                "must list at least the timestamp, sequence and worker fields".into(),
            ));
        }
        let (unit_name, max_total) = match spec.radix {
            Radix::Binary => ("bits", MAX_BITS),
            Radix::Decimal => ("digits", MAX_DIGITS),
        };
        let mut total: u32 = 0;
        for (i, f) in spec.fields.iter().enumerate() {
            check_name(&name, &format!("fields[{i}].name"), &f.name, &['_'])?;
            if spec.fields[..i].iter().any(|g| g.name == f.name) {
                return Err(invalid(
                    &f.name,
                    "appears twice; field names must be unique".into(),
                ));
            }
            let max_width = match spec.radix {
                Radix::Binary => MAX_BITS,
                Radix::Decimal => MAX_FIELD_DIGITS,
            };
            if f.width == 0 || f.width > max_width {
                return Err(invalid(
                    &f.name,
                    format!(
                        "has width {}; it must be 1 to {max_width} {unit_name}",
                        f.width
                    ),
                ));
            }
            total = total.saturating_add(f.width);
        }
        if total > max_total {
            return Err(IdgenError::LayoutTooWide {
                layout: name,
                total,
                max: max_total,
                unit: unit_name,
            });
        }
        let only_one = |kind: FieldKind, label: &str| -> IdgenResult<usize> {
            let mut found = spec
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.kind == kind);
            match (found.next(), found.next()) {
                (Some((i, _)), None) => Ok(i),
                _ => Err(invalid(
                    "fields",
                    format!("must contain exactly one {label} field"),
                )),
            }
        };
        let timestamp = only_one(FieldKind::Timestamp, "timestamp")?;
        let sequence = only_one(FieldKind::Sequence, "sequence")?;
        let worker = only_one(FieldKind::Worker, "worker")?;
        if timestamp != 0 {
            return Err(invalid(
                &spec.fields[timestamp].name,
                "must be the first (most significant) field, so later ids are larger".into(),
            ));
        }
        let capacity: Vec<u128> = spec
            .fields
            .iter()
            .map(|f| match spec.radix {
                Radix::Binary => 1u128 << f.width,
                Radix::Decimal => 10u128.pow(f.width),
            })
            .collect();
        let mut unit = vec![1u128; capacity.len()];
        for i in (0..capacity.len().saturating_sub(1)).rev() {
            unit[i] = unit[i + 1] * capacity[i + 1];
        }
        Ok(Layout {
            spec,
            capacity,
            unit,
            timestamp,
            sequence,
            worker,
        })
    }

    /// The layout's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The definition it was built from.
    pub fn spec(&self) -> &LayoutSpec {
        &self.spec
    }

    /// The largest value field `index` holds.
    fn max_of(&self, index: usize) -> u64 {
        // Every field is at most 63 bits or 19 digits, so this fits in a u64.
        (self.capacity[index] - 1) as u64
    }

    /// The largest timestamp (ms since the epoch) the layout holds.
    pub fn max_timestamp(&self) -> u64 {
        self.max_of(self.timestamp)
    }

    /// The largest sequence number within one millisecond.
    pub fn max_sequence(&self) -> u64 {
        self.max_of(self.sequence)
    }

    /// The largest worker id.
    pub fn max_worker(&self) -> u64 {
        self.max_of(self.worker)
    }

    /// The tag fields' names, in layout order.
    pub fn tag_names(&self) -> impl Iterator<Item = &str> {
        self.spec
            .fields
            .iter()
            .filter(|f| f.kind == FieldKind::Tag)
            .map(|f| f.name.as_str())
    }

    /// The layout's epoch, in ms since 1970.
    pub fn epoch_unix_ms(&self) -> u64 {
        self.spec.epoch_unix_ms
    }

    /// Converts a clock reading (ms since 1970) to this layout's timestamp, if it fits.
    pub fn timestamp_of(&self, unix_ms: u64) -> IdgenResult<u64> {
        unix_ms
            .checked_sub(self.spec.epoch_unix_ms)
            .filter(|ts| *ts <= self.max_timestamp())
            .ok_or_else(|| IdgenError::TimestampOutOfRange {
                layout: self.spec.name.clone(),
                unix_ms,
            })
    }

    /// Resolves named tag values against the layout: one value per tag field, in layout
    /// order (0 where not given). Refuses names the layout lacks and values too large.
    pub fn tags<'a>(&self, given: impl IntoIterator<Item = (&'a str, u64)>) -> IdgenResult<Tags> {
        let mut values = vec![0u64; self.spec.fields.len()];
        for (name, value) in given {
            let Some(i) = self.spec.fields.iter().position(|f| f.name == name) else {
                return Err(IdgenError::UnknownField {
                    layout: self.spec.name.clone(),
                    field: name.into(),
                    rule: format!(
                        "the layout has no such field; its tag fields are [{}]",
                        self.tag_names().collect::<Vec<_>>().join(", ")
                    ),
                });
            };
            if self.spec.fields[i].kind != FieldKind::Tag {
                return Err(IdgenError::UnknownField {
                    layout: self.spec.name.clone(),
                    field: name.into(),
                    rule: "the generator fills it; only tag fields may be given".into(),
                });
            }
            self.check_fits(i, value)?;
            values[i] = value;
        }
        Ok(Tags(values))
    }

    fn check_fits(&self, index: usize, value: u64) -> IdgenResult<()> {
        if value > self.max_of(index) {
            return Err(IdgenError::FieldOverflow {
                layout: self.spec.name.clone(),
                field: self.spec.fields[index].name.clone(),
                value,
                max: self.max_of(index),
            });
        }
        Ok(())
    }

    /// Packs field values (one per field, in layout order) into an id.
    pub fn encode(&self, values: &[u64]) -> IdgenResult<Id> {
        if values.len() != self.spec.fields.len() {
            return Err(IdgenError::UnknownField {
                layout: self.spec.name.clone(),
                field: "fields".into(),
                rule: format!(
                    "{} values given; the layout has {} fields",
                    values.len(),
                    self.spec.fields.len()
                ),
            });
        }
        let mut id = 0u128;
        for (i, value) in values.iter().enumerate() {
            self.check_fits(i, *value)?;
            id += u128::from(*value) * self.unit[i];
        }
        Ok(Id(id))
    }

    /// Packs a generated id: timestamp, sequence and worker from the generator, the rest
    /// from `tags`. The caller guarantees the three fit (the generator checks them).
    pub(crate) fn compose(&self, timestamp: u64, sequence: u64, worker: u64, tags: &Tags) -> Id {
        let fixed = u128::from(timestamp) * self.unit[self.timestamp]
            + u128::from(sequence) * self.unit[self.sequence]
            + u128::from(worker) * self.unit[self.worker];
        Id(fixed + tags.packed(self))
    }

    /// Unpacks an id into one value per field, in layout order.
    pub fn unpack(&self, id: Id) -> Vec<u64> {
        self.capacity
            .iter()
            .zip(&self.unit)
            .map(|(cap, unit)| (id.0 / unit % cap) as u64)
            .collect()
    }

    /// The id as text: a decimal number (binary layouts) or all digits zero-padded
    /// (decimal layouts).
    pub fn format(&self, id: Id) -> String {
        match self.spec.radix {
            Radix::Binary => id.0.to_string(),
            Radix::Decimal => {
                let width = self.spec.fields.iter().map(|f| f.width as usize).sum();
                format!("{:0width$}", id.0)
            }
        }
    }

    /// Parses an id of this layout from text (leading zeros allowed).
    pub fn parse(&self, text: &str) -> IdgenResult<Id> {
        let invalid = |rule: String| IdgenError::InvalidId {
            layout: self.spec.name.clone(),
            id: text.into(),
            rule,
        };
        let digits = text.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "it must be a non-empty string of decimal digits".into(),
            ));
        }
        let limit = self.capacity.iter().product::<u128>();
        match digits.parse::<u128>() {
            Ok(value) if value < limit => Ok(Id(value)),
            _ => Err(invalid(format!("it must be below {limit}"))),
        }
    }

    /// Parses and decodes an id into its named parts.
    pub fn decode(&self, text: &str) -> IdgenResult<Decoded> {
        let id = self.parse(text)?;
        let values = self.unpack(id);
        Ok(Decoded {
            layout: self.spec.name.clone(),
            id: self.format(id),
            unix_ms: self.spec.epoch_unix_ms + values[self.timestamp],
            fields: self
                .spec
                .fields
                .iter()
                .map(|f| f.name.clone())
                .zip(values)
                .collect(),
        })
    }
}

/// Tag values resolved against one layout (see [`Layout::tags`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(Vec<u64>);

impl Tags {
    /// The tags' contribution to a packed id (zero when none were given).
    fn packed(&self, layout: &Layout) -> u128 {
        self.0
            .iter()
            .zip(&layout.unit)
            .map(|(v, unit)| u128::from(*v) * unit)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn builtin(name: &str) -> Layout {
        let spec = builtin_specs()
            .into_iter()
            .find(|s| s.name == name)
            .expect("built-in exists");
        Layout::new(spec).expect("built-ins are valid")
    }

    fn spec(radix: Radix, widths: &[(FieldKind, u32)]) -> LayoutSpec {
        LayoutSpec {
            name: "custom".into(),
            radix,
            epoch_unix_ms: 0,
            fields: widths
                .iter()
                .enumerate()
                .map(|(i, (kind, width))| field(&format!("f{i}"), *kind, *width))
                .collect(),
        }
    }

    #[test]
    fn builtins_have_the_documented_shape() {
        let s = builtin(SNOWFLAKE64);
        assert_eq!(
            (s.max_timestamp(), s.max_worker(), s.max_sequence()),
            ((1 << 41) - 1, 1023, 4095)
        );
        let o = builtin(ORDER32);
        assert_eq!(o.max_sequence(), 9_999);
        assert_eq!(o.max_worker(), 9_999_999);
        assert_eq!(o.tag_names().collect::<Vec<_>>(), ["type", "db", "table"]);
        let id = o.encode(&[123, 45, 6, 7_654_321, 8, 9]).expect("fits");
        assert_eq!(o.format(id), "00000000000012300450676543210809");
    }

    #[test]
    fn layouts_wider_than_their_radix_are_refused() {
        use FieldKind::*;
        use Radix::*;
        let too_many_bits = spec(Binary, &[(Timestamp, 42), (Worker, 10), (Sequence, 12)]);
        let err = Layout::new(too_many_bits).unwrap_err();
        assert_eq!(
            err,
            IdgenError::LayoutTooWide {
                layout: "custom".into(),
                total: 64,
                max: 63,
                unit: "bits"
            }
        );
        assert!(err.to_string().contains("64 bits"), "{err}");
        let too_many_digits = spec(Decimal, &[(Timestamp, 19), (Sequence, 19), (Worker, 1)]);
        assert!(matches!(
            Layout::new(too_many_digits),
            Err(IdgenError::LayoutTooWide {
                total: 39,
                max: 38,
                ..
            })
        ));
        let wide_field = spec(Decimal, &[(Timestamp, 20), (Sequence, 4), (Worker, 4)]);
        assert!(Layout::new(wide_field)
            .unwrap_err()
            .to_string()
            .contains("1 to 19 digits"));
    }

    #[test]
    fn layouts_breaking_field_rules_are_refused_with_the_field_named() {
        use FieldKind::*;
        use Radix::*;
        let cases = [
            (
                spec(Binary, &[(Worker, 10), (Timestamp, 41), (Sequence, 12)]),
                "most significant",
            ),
            (
                spec(Binary, &[(Timestamp, 41), (Sequence, 12)]),
                "exactly one worker",
            ),
            (
                spec(
                    Binary,
                    &[(Timestamp, 41), (Worker, 5), (Worker, 5), (Sequence, 12)],
                ),
                "exactly one worker",
            ),
            (
                spec(Binary, &[(Timestamp, 41), (Worker, 0), (Sequence, 12)]),
                "width 0",
            ),
            (spec(Binary, &[]), "at least"),
        ];
        for (s, rule) in cases {
            let err = Layout::new(s).unwrap_err().to_string();
            assert!(err.contains(rule), "{err:?} lacks {rule:?}");
        }
        let mut bad_name = spec(Binary, &[(Timestamp, 41), (Worker, 10), (Sequence, 12)]);
        bad_name.name = "Bad/Name".into();
        assert!(Layout::new(bad_name)
            .unwrap_err()
            .to_string()
            .contains("field `name`"));
        let mut twice = spec(Binary, &[(Timestamp, 41), (Worker, 10), (Sequence, 12)]);
        twice.fields[2].name = "f1".into();
        assert!(Layout::new(twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn values_too_large_and_bad_ids_are_refused() {
        let o = builtin(ORDER32);
        assert!(matches!(
            o.tags([("type", 100)]),
            Err(IdgenError::FieldOverflow { max: 99, .. })
        ));
        assert!(matches!(
            o.tags([("machine", 1)]),
            Err(IdgenError::UnknownField { .. })
        ));
        assert!(matches!(
            o.tags([("colour", 1)]),
            Err(IdgenError::UnknownField { .. })
        ));
        let s = builtin(SNOWFLAKE64);
        for bad in ["", "12a", "-1", "9223372036854775808", "1e5"] {
            assert!(
                matches!(s.parse(bad), Err(IdgenError::InvalidId { .. })),
                "{bad:?}"
            );
        }
        assert!(o.parse(&"9".repeat(33)).is_err());
        assert!(o.parse(&"9".repeat(32)).is_ok());
    }

    #[test]
    fn decode_names_every_part() {
        let s = builtin(SNOWFLAKE64);
        let id = s.encode(&[1000, 7, 42]).expect("fits");
        let d = s.decode(&s.format(id)).expect("decodes");
        assert_eq!(d.unix_ms, DEFAULT_EPOCH_UNIX_MS + 1000);
        assert_eq!(
            d.fields,
            [
                ("timestamp".into(), 1000),
                ("worker".into(), 7),
                ("sequence".into(), 42)
            ]
        );
    }

    fn values_for(layout: &Layout) -> impl Strategy<Value = Vec<u64>> {
        let maxes: Vec<u64> = (0..layout.spec.fields.len())
            .map(|i| layout.max_of(i))
            .collect();
        maxes.into_iter().map(|m| 0..=m).collect::<Vec<_>>()
    }

    proptest! {
        #[test]
        fn every_builtin_round_trips_through_text(
            which in prop::sample::select(vec![SNOWFLAKE64, ORDER32]),
            seed in any::<[u64; 8]>(),
        ) {
            let layout = builtin(which);
            let values: Vec<u64> = (0..layout.spec.fields.len())
                .map(|i| seed[i] % (layout.max_of(i) + 1))
                .collect();
            let id = layout.encode(&values).expect("in range");
            let text = layout.format(id);
            prop_assert_eq!(layout.parse(&text).expect("parses"), id);
            let decoded = layout.decode(&text).expect("decodes");
            let got: Vec<u64> = decoded.fields.iter().map(|(_, v)| *v).collect();
            prop_assert_eq!(got, values);
        }

        #[test]
        fn snowflake64_later_timestamp_is_larger(
            (a, b) in values_for(&builtin(SNOWFLAKE64)).prop_flat_map(|a| (Just(a.clone()), values_for(&builtin(SNOWFLAKE64))))
        ) {
            later_is_larger(&builtin(SNOWFLAKE64), a, b)?;
        }

        #[test]
        fn order32_later_timestamp_is_larger(
            (a, b) in values_for(&builtin(ORDER32)).prop_flat_map(|a| (Just(a.clone()), values_for(&builtin(ORDER32))))
        ) {
            later_is_larger(&builtin(ORDER32), a, b)?;
        }
    }

    /// Whatever the other fields, the id with the later timestamp is larger, as a number
    /// and as text.
    fn later_is_larger(layout: &Layout, a: Vec<u64>, b: Vec<u64>) -> Result<(), TestCaseError> {
        prop_assume!(a[0] != b[0]);
        let (early, late) = if a[0] < b[0] { (a, b) } else { (b, a) };
        let (e, l) = (
            layout.encode(&early).expect("fits"),
            layout.encode(&late).expect("fits"),
        );
        prop_assert!(e < l);
        if layout.spec.radix == Radix::Decimal {
            prop_assert!(layout.format(e) < layout.format(l));
        }
        Ok(())
    }
}

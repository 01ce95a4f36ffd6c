//! Layout definitions to and from the API's messages (`cella.idgen.v1.LayoutSpec`), so a
//! client can generate ids locally in any layout a node serves.

use cella_proto::cella::idgen::v1 as idpb;

use crate::error::{IdgenError, IdgenResult};
use crate::layout::{FieldKind, FieldSpec, LayoutSpec, Radix};

/// A layout definition as the API sends it.
pub fn to_wire(spec: &LayoutSpec) -> idpb::LayoutSpec {
    idpb::LayoutSpec {
        name: spec.name.clone(),
        radix: match spec.radix {
            Radix::Binary => "binary",
            Radix::Decimal => "decimal",
        }
        .into(),
        epoch_unix_ms: spec.epoch_unix_ms,
        fields: spec
            .fields
            .iter()
            .map(|f| idpb::FieldSpec {
                name: f.name.clone(),
                kind: match f.kind {
                    FieldKind::Timestamp => "timestamp",
                    FieldKind::Sequence => "sequence",
                    FieldKind::Worker => "worker",
                    FieldKind::Tag => "tag",
                }
                .into(),
                width: f.width,
            })
            .collect(),
    }
}

/// A layout definition from the API (validate it with [`crate::Layout::new`]).
pub fn from_wire(spec: &idpb::LayoutSpec) -> IdgenResult<LayoutSpec> {
    let invalid = |field: String, rule: String| IdgenError::InvalidLayout {
        layout: spec.name.clone(),
        field,
        rule,
    };
    let radix = match spec.radix.as_str() {
        "binary" => Radix::Binary,
        "decimal" => Radix::Decimal,
        other => {
            return Err(invalid(
                "radix".into(),
                format!("is {other:?}; it must be \"binary\" or \"decimal\""),
            ))
        }
    };
    let fields = spec
        .fields
        .iter()
        .map(|f| {
            let kind = match f.kind.as_str() {
                "timestamp" => FieldKind::Timestamp,
                "sequence" => FieldKind::Sequence,
                "worker" => FieldKind::Worker,
                "tag" => FieldKind::Tag,
                other => {
                    return Err(invalid(
                        f.name.clone(),
                        format!(
                            "has kind {other:?}; it must be timestamp, sequence, worker or tag"
                        ),
                    ))
                }
            };
            Ok(FieldSpec {
                name: f.name.clone(),
                kind,
                width: f.width,
            })
        })
        .collect::<IdgenResult<Vec<_>>>()?;
    Ok(LayoutSpec {
        name: spec.name.clone(),
        radix,
        epoch_unix_ms: spec.epoch_unix_ms,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::builtin_specs;

    #[test]
    fn builtins_survive_the_wire() {
        for spec in builtin_specs() {
            assert_eq!(from_wire(&to_wire(&spec)), Ok(spec));
        }
    }

    #[test]
    fn unknown_radix_or_kind_is_refused() {
        let mut wire = to_wire(&builtin_specs()[0]);
        wire.radix = "hex".into();
        assert!(from_wire(&wire).unwrap_err().to_string().contains("radix"));
        let mut wire = to_wire(&builtin_specs()[0]);
        wire.fields[1].kind = "node".into();
        assert!(from_wire(&wire).unwrap_err().to_string().contains("kind"));
    }
}

//! Per-namespace access control: a namespace without an ACL is open; with one, every call
//! needs a bearer token listed in it with the permission the call needs.

use crate::error::{ConfigError, ConfigResult};
use crate::model::Acl;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// get, list, history, diff, watch, audit, ACL read.
    Read,
    /// delete configs, set the ACL, delete the namespace.
    Write,
    /// publish, rollback, gray start / promote / abort.
    Publish,
}

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Publish => "publish",
        }
    }
}

/// Who calls: the bearer token the request carried, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The token, without the `Bearer ` prefix.
    pub token: Option<String>,
}

impl Caller {
    /// A caller from an `Authorization` header value (`Bearer <token>`), if present.
    pub fn from_authorization(value: Option<&str>) -> Caller {
        let token = value
            .map(str::trim)
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Caller { token }
    }
}

/// Decides whether `caller` may do `permission`; Ok(Some(name)) names the token used.
pub(crate) fn check(
    acl: Option<&Acl>,
    caller: &Caller,
    namespace: &str,
    permission: Permission,
) -> ConfigResult<Option<String>> {
    let Some(acl) = acl else { return Ok(None) };
    let unauthenticated = || ConfigError::Unauthenticated {
        namespace: namespace.into(),
    };
    let token = caller.token.as_deref().ok_or_else(unauthenticated)?;
    let entry = acl
        .entries
        .iter()
        .find(|e| e.token == token)
        .ok_or_else(unauthenticated)?;
    let allowed = match permission {
        Permission::Read => entry.read,
        Permission::Write => entry.write,
        Permission::Publish => entry.publish,
    };
    if !allowed {
        return Err(ConfigError::PermissionDenied {
            namespace: namespace.into(),
            permission: permission.name(),
        });
    }
    Ok(Some(entry.name.clone()))
}

/// Checks every entry names a token and its owner, and no token repeats.
pub(crate) fn validate(acl: &Acl) -> ConfigResult<()> {
    for (i, e) in acl.entries.iter().enumerate() {
        if e.name.is_empty() {
            return Err(ConfigError::InvalidField {
                field: "entries.name",
                rule: format!("is required (entry {i})"),
            });
        }
        if e.token.len() < 8 {
            return Err(ConfigError::InvalidField {
                field: "entries.token",
                rule: format!("must be at least 8 characters (entry {i})"),
            });
        }
        if acl.entries[..i].iter().any(|o| o.token == e.token) {
            return Err(ConfigError::InvalidField {
                field: "entries.token",
                rule: format!("must be unique (entry {i} repeats one)"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AclEntry;

    fn acl() -> Acl {
        Acl {
            entries: vec![AclEntry {
                name: "reader".into(),
                token: "read-token-1".into(),
                read: true,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn open_without_acl_and_token_scoped_with_one() {
        let nobody = Caller::default();
        assert_eq!(check(None, &nobody, "ns", Permission::Publish), Ok(None));
        assert!(matches!(
            check(Some(&acl()), &nobody, "ns", Permission::Read),
            Err(ConfigError::Unauthenticated { .. })
        ));
        let reader = Caller::from_authorization(Some("Bearer read-token-1"));
        assert_eq!(
            check(Some(&acl()), &reader, "ns", Permission::Read),
            Ok(Some("reader".into()))
        );
        assert!(matches!(
            check(Some(&acl()), &reader, "ns", Permission::Publish),
            Err(ConfigError::PermissionDenied {
                permission: "publish",
                ..
            })
        ));
    }

    #[test]
    fn entries_need_names_and_long_unique_tokens() {
        validate(&acl()).unwrap();
        let mut twice = acl();
        twice.entries.push(twice.entries[0].clone());
        assert!(validate(&twice).is_err());
        let short = Acl {
            entries: vec![AclEntry {
                name: "a".into(),
                token: "x".into(),
                ..Default::default()
            }],
        };
        assert!(validate(&short)
            .unwrap_err()
            .to_string()
            .contains("entries.token"));
    }
}

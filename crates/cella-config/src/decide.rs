//! The decisions behind every change to a config, as pure functions: given the head read
//! from the core, the request and the time, return the new head and release (or an error).
//! The service performs the read and the txn; these are tested with plain values.

use crate::error::{ConfigError, ConfigResult};
use crate::format::Format;
use crate::md5;
use crate::model::{ConfigKey, Gray, GrayTarget, Head, Release};

/// A change to one config's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The head to write.
    pub head: Head,
    /// A new release to store under its own key (also referenced by `head`).
    pub new_release: Option<Release>,
    /// The release number the audit log names.
    pub release: u64,
}

/// Who publishes what, and when.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub key: ConfigKey,
    pub content: String,
    pub format: Format,
    pub author: String,
    pub comment: String,
    pub now_unix_ms: u64,
}

impl Draft {
    fn release(&self, number: u64, gray: bool) -> Release {
        Release {
            key: self.key.clone(),
            number,
            hash: md5::hex(self.content.as_bytes()),
            content: self.content.clone(),
            format: self.format,
            author: self.author.clone(),
            comment: self.comment.clone(),
            created_unix_ms: self.now_unix_ms,
            gray,
        }
    }
}

/// Checks content against the size limit and its format.
pub(crate) fn check_content(content: &str, format: Format, max: usize) -> ConfigResult<()> {
    if content.len() > max {
        return Err(ConfigError::ContentTooLarge {
            len: content.len(),
            max,
        });
    }
    format.validate(content)
}

fn check_base(head: Option<&Head>, base: Option<u64>) -> ConfigResult<()> {
    let current = head.map_or(0, |h| h.current.number);
    match base {
        Some(base) if base != current => Err(ConfigError::StaleBase { base, current }),
        _ => Ok(()),
    }
}

fn no_gray(head: &Head) -> ConfigResult<()> {
    match &head.gray {
        Some(g) => Err(ConfigError::GrayInProgress {
            key: head.current.key.to_string(),
            gray: g.release.number,
        }),
        None => Ok(()),
    }
}

fn existing<'a>(head: Option<&'a Head>, key: &ConfigKey) -> ConfigResult<&'a Head> {
    head.ok_or_else(|| ConfigError::ConfigNotFound {
        key: key.to_string(),
    })
}

/// A new current release with the draft's content.
pub(crate) fn publish(head: Option<&Head>, draft: &Draft, base: Option<u64>) -> ConfigResult<Plan> {
    check_base(head, base)?;
    if let Some(h) = head {
        no_gray(h)?;
    }
    let number = head.map_or(0, |h| h.latest) + 1;
    let release = draft.release(number, false);
    Ok(Plan {
        head: Head {
            latest: number,
            current: release.clone(),
            gray: None,
        },
        new_release: Some(release),
        release: number,
    })
}

/// A gray candidate with the draft's content, for `target`; the current release stays.
pub(crate) fn start_gray(
    head: Option<&Head>,
    draft: &Draft,
    target: GrayTarget,
    base: Option<u64>,
) -> ConfigResult<Plan> {
    target.validate()?;
    let head = existing(head, &draft.key)?;
    check_base(Some(head), base)?;
    no_gray(head)?;
    let number = head.latest + 1;
    let release = draft.release(number, true);
    Ok(Plan {
        head: Head {
            latest: number,
            current: head.current.clone(),
            gray: Some(Gray {
                release: release.clone(),
                target,
            }),
        },
        new_release: Some(release),
        release: number,
    })
}

/// The gray candidate becomes current.
pub(crate) fn promote_gray(head: Option<&Head>, key: &ConfigKey) -> ConfigResult<Plan> {
    let head = existing(head, key)?;
    let gray = head.gray.as_ref().ok_or_else(|| ConfigError::NoGray {
        key: key.to_string(),
    })?;
    Ok(Plan {
        head: Head {
            latest: head.latest,
            current: gray.release.clone(),
            gray: None,
        },
        new_release: None,
        release: gray.release.number,
    })
}

/// The gray candidate is dropped; everyone gets the current release.
pub(crate) fn abort_gray(head: Option<&Head>, key: &ConfigKey) -> ConfigResult<Plan> {
    let head = existing(head, key)?;
    let gray = head.gray.as_ref().ok_or_else(|| ConfigError::NoGray {
        key: key.to_string(),
    })?;
    Ok(Plan {
        release: gray.release.number,
        head: Head {
            gray: None,
            ..head.clone()
        },
        new_release: None,
    })
}

/// A new release equal to `old` in content and format.
pub(crate) fn rollback(
    head: Option<&Head>,
    old: &Release,
    author: &str,
    comment: &str,
    now_unix_ms: u64,
    base: Option<u64>,
) -> ConfigResult<Plan> {
    let h = existing(head, &old.key)?;
    no_gray(h)?;
    let note = if comment.is_empty() {
        format!("rollback to release {}", old.number)
    } else {
        format!("rollback to release {}: {comment}", old.number)
    };
    let draft = Draft {
        key: old.key.clone(),
        content: old.content.clone(),
        format: old.format,
        author: author.into(),
        comment: note,
        now_unix_ms,
    };
    publish(head, &draft, base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(content: &str) -> Draft {
        Draft {
            key: ConfigKey::new("dev", "g", "app"),
            content: content.into(),
            format: Format::Text,
            author: "ann".into(),
            comment: "c".into(),
            now_unix_ms: 42,
        }
    }

    fn pct(p: u32) -> GrayTarget {
        GrayTarget {
            percentage: Some(p),
            ..Default::default()
        }
    }

    #[test]
    fn publishes_number_releases_and_check_the_base() {
        let first = publish(None, &draft("a"), Some(0)).unwrap();
        assert_eq!(first.head.current.number, 1);
        assert_eq!(first.head.current.hash, md5::hex(b"a"));
        assert_eq!(first.head.current.created_unix_ms, 42);
        let second = publish(Some(&first.head), &draft("b"), Some(1)).unwrap();
        assert_eq!(second.head.latest, 2);
        let stale = publish(Some(&second.head), &draft("c"), Some(1)).unwrap_err();
        assert_eq!(
            stale,
            ConfigError::StaleBase {
                base: 1,
                current: 2
            }
        );
        publish(Some(&second.head), &draft("c"), None).unwrap();
    }

    #[test]
    fn gray_starts_on_an_existing_config_then_promotes_or_aborts() {
        assert!(matches!(
            start_gray(None, &draft("g"), pct(10), None),
            Err(ConfigError::ConfigNotFound { .. })
        ));
        let base = publish(None, &draft("a"), None).unwrap().head;
        let gray = start_gray(Some(&base), &draft("g"), pct(10), None)
            .unwrap()
            .head;
        assert_eq!(gray.current, base.current);
        assert!(gray.gray.as_ref().unwrap().release.gray);
        assert!(matches!(
            publish(Some(&gray), &draft("x"), None),
            Err(ConfigError::GrayInProgress { gray: 2, .. })
        ));
        let key = base.current.key.clone();
        let promoted = promote_gray(Some(&gray), &key).unwrap().head;
        assert_eq!(promoted.current.content, "g");
        assert!(promoted.gray.is_none());
        let aborted = abort_gray(Some(&gray), &key).unwrap().head;
        assert_eq!(aborted.current.content, "a");
        assert_eq!(aborted.latest, 2);
        assert!(matches!(
            abort_gray(Some(&aborted), &key),
            Err(ConfigError::NoGray { .. })
        ));
    }

    #[test]
    fn rollback_is_a_new_release_with_the_old_content() {
        let one = publish(None, &draft("a"), None).unwrap().head;
        let two = publish(Some(&one), &draft("b"), None).unwrap().head;
        let back = rollback(Some(&two), &one.current, "bob", "", 99, Some(2)).unwrap();
        assert_eq!(back.head.current.number, 3);
        assert_eq!(back.head.current.content, "a");
        assert_eq!(back.head.current.hash, one.current.hash);
        assert_eq!(back.head.current.comment, "rollback to release 1");
    }

    #[test]
    fn content_over_the_limit_or_invalid_is_refused() {
        assert_eq!(
            check_content("12345", Format::Text, 4),
            Err(ConfigError::ContentTooLarge { len: 5, max: 4 })
        );
        assert!(check_content("{", Format::Json, 100).is_err());
        check_content("{}", Format::Json, 100).unwrap();
    }
}

//! Cross-process tests live in the `[[test]]` targets of this package; see `tests/*.rs`.

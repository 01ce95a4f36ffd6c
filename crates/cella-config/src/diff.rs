//! A line diff between two texts: common prefix and suffix, then a longest-common-
//! subsequence table on the middle. Past [`MAX_TABLE_CELLS`] the middle is shown as all
//! removed then all added — still a correct diff, just not a minimal one.

/// Largest LCS table computed (lines × lines).
const MAX_TABLE_CELLS: usize = 4_000_000;

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffLine {
    /// In both texts.
    Same(String),
    /// Only in the old text.
    Removed(String),
    /// Only in the new text.
    Added(String),
}

impl DiffLine {
    /// `" "`, `"-"` or `"+"`.
    pub fn op(&self) -> &'static str {
        match self {
            DiffLine::Same(_) => " ",
            DiffLine::Removed(_) => "-",
            DiffLine::Added(_) => "+",
        }
    }

    /// The line's text.
    pub fn text(&self) -> &str {
        match self {
            DiffLine::Same(t) | DiffLine::Removed(t) | DiffLine::Added(t) => t,
        }
    }
}

/// The line diff from `old` to `new`.
pub fn diff_lines(old: &str, new: &str) -> Vec<DiffLine> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let mut out: Vec<DiffLine> = a[..prefix]
        .iter()
        .map(|l| DiffLine::Same(l.to_string()))
        .collect();
    if am.len().saturating_mul(bm.len()) <= MAX_TABLE_CELLS {
        out.extend(lcs_diff(am, bm));
    } else {
        out.extend(am.iter().map(|l| DiffLine::Removed(l.to_string())));
        out.extend(bm.iter().map(|l| DiffLine::Added(l.to_string())));
    }
    out.extend(
        a[a.len() - suffix..]
            .iter()
            .map(|l| DiffLine::Same(l.to_string())),
    );
    out
}

fn lcs_diff(a: &[&str], b: &[&str]) -> Vec<DiffLine> {
    let w = b.len() + 1;
    // table[i * w + j] = LCS length of a[i..] and b[j..].
    let mut table = vec![0u32; (a.len() + 1) * w];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            table[i * w + j] = if a[i] == b[j] {
                table[(i + 1) * w + j + 1] + 1
            } else {
                table[(i + 1) * w + j].max(table[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(DiffLine::Same(a[i].to_string()));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || table[(i + 1) * w + j] >= table[i * w + j + 1]) {
            out.push(DiffLine::Removed(a[i].to_string()));
            i += 1;
        } else {
            out.push(DiffLine::Added(b[j].to_string()));
            j += 1;
        }
    }
    out
}

/// The diff as text: each line prefixed by its op.
pub fn render(lines: &[DiffLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{}{}\n", l.op(), l.text()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_changed_line_is_removed_then_added_between_common_lines() {
        let d = diff_lines("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(render(&d), " a\n-b\n+B\n c\n+d\n");
        assert!(diff_lines("x\n", "x\n")
            .iter()
            .all(|l| matches!(l, DiffLine::Same(_))));
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_both_texts(
            a in proptest::collection::vec("[abc]", 0..12),
            b in proptest::collection::vec("[abc]", 0..12),
        ) {
            let (old, new) = (a.join("\n"), b.join("\n"));
            let d = diff_lines(&old, &new);
            let back_old: Vec<&str> = d.iter().filter(|l| !matches!(l, DiffLine::Added(_))).map(|l| l.text()).collect();
            let back_new: Vec<&str> = d.iter().filter(|l| !matches!(l, DiffLine::Removed(_))).map(|l| l.text()).collect();
            prop_assert_eq!(back_old, old.lines().collect::<Vec<_>>());
            prop_assert_eq!(back_new, new.lines().collect::<Vec<_>>());
        }
    }
}

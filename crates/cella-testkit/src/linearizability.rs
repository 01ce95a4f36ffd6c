//! A linearizability checker for histories of a key-value register.
//!
//! A [`History`] records what concurrent clients did: each [`Operation`] has a [`Call`]
//! (`Put`, `Get`, `Cas`), the instant it was invoked and how it completed — returned with an
//! [`Output`] at an instant, failed without effect, or with an unknown outcome (a timeout or
//! an error after the request may have reached the server). [`check`] decides whether some
//! total order of the operations (a) respects real time — an operation that returned before
//! another was invoked comes first — and (b) is a legal sequential run of the register model.
//!
//! Guarantees and method:
//! - Sound and complete for the model: `Ok` means a linearization exists, `Err` with
//!   [`CheckError::NotLinearizable`] means none does. The search is the Wing–Gong algorithm
//!   with Lowe's memoization, as Porcupine and Knossos implement it: a depth-first search
//!   over which pending operation takes effect next, never revisiting a (set of linearized
//!   operations, model state) pair.
//! - Keys are independent registers, and linearizability is local, so each key is checked
//!   on its own (P-compositionality); the cost is exponential only in the concurrency within
//!   one key.
//! - An operation with an unknown outcome may take effect at any point after its invocation
//!   or never: it is treated as returning at the end of time, and taking effect "at the end"
//!   is indistinguishable from never. An unknown `Get` tells nothing and is ignored;
//!   operations that failed without effect are ignored.
//! - Limits: the search gives up with [`CheckError::SearchLimit`] after
//!   [`MAX_STATES_PER_KEY`] distinct states for one key rather than running for hours.
//!   Histories whose writes use distinct values check fastest, because each read then pins
//!   down which write it saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

/// Identifies the client (a sequential thread of operations) that issued an operation.
pub type ClientId = u64;

/// Index of an operation in its [`History`].
pub type OpId = usize;

/// Distinct (linearized set, state) pairs explored for one key before giving up.
pub const MAX_STATES_PER_KEY: usize = 5_000_000;

/// What a client asked the register to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Set `key` to `value`.
    Put { key: String, value: String },
    /// Read `key`.
    Get { key: String },
    /// Set `key` to `new` if its current value equals `expected` (`None`: the key is absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

impl Call {
    /// The key the call touches.
    pub fn key(&self) -> &str {
        match self {
            Call::Put { key, .. } | Call::Get { key } | Call::Cas { key, .. } => key,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Put { key, value } => write!(f, "put({key}, {value})"),
            Call::Get { key } => write!(f, "get({key})"),
            Call::Cas { key, expected, new } => {
                write!(f, "cas({key}, {}, {new})", show_value(expected.as_deref()))
            }
        }
    }
}

/// What the register answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put was applied.
    Put,
    /// The value read (`None`: absent).
    Get(Option<String>),
    /// Whether the compare-and-set applied.
    Cas(bool),
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Put => write!(f, "ok"),
            Output::Get(value) => write!(f, "{}", show_value(value.as_deref())),
            Output::Cas(applied) => write!(f, "{applied}"),
        }
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    /// It may or may not have taken effect (timeout, connection lost after sending). This is
    /// also the state of an operation that was invoked and never completed.
    Unknown,
    /// It returned `output` at instant `at`.
    Returned { at: Instant, output: Output },
    /// It definitely had no effect (for example, the connection was refused before sending).
    Failed,
}

/// One client operation in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it.
    pub client: ClientId,
    /// What was asked.
    pub call: Call,
    /// When the client invoked it (taken before the request was sent).
    pub invoked: Instant,
    /// How it ended (its instant taken after the response arrived).
    pub completion: Completion,
    /// Free-form context shown in counterexamples, such as which server was asked.
    pub note: Option<String>,
}

/// A record of concurrent operations, in invocation order as recorded.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an invocation now; the operation counts as [`Completion::Unknown`] until
    /// [`History::returned`] or [`History::failed`] is called with the returned id.
    pub fn invoke(&mut self, client: ClientId, call: Call) -> OpId {
        self.push(Operation {
            client,
            call,
            invoked: Instant::now(),
            completion: Completion::Unknown,
            note: None,
        })
    }

    /// Attaches context to operation `id`, shown when it appears in a counterexample.
    pub fn annotate(&mut self, id: OpId, note: impl Into<String>) {
        if let Some(op) = self.ops.get_mut(id) {
            op.note = Some(note.into());
        }
    }

    /// Records that operation `id` returned `output` now.
    pub fn returned(&mut self, id: OpId, output: Output) {
        if let Some(op) = self.ops.get_mut(id) {
            op.completion = Completion::Returned {
                at: Instant::now(),
                output,
            };
        }
    }

    /// Records that operation `id` definitely had no effect.
    pub fn failed(&mut self, id: OpId) {
        if let Some(op) = self.ops.get_mut(id) {
            op.completion = Completion::Failed;
        }
    }

    /// Appends a fully described operation (for histories built by hand).
    pub fn push(&mut self, op: Operation) -> OpId {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// The recorded operations.
    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Figures from a successful check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Keys (independent registers) checked.
    pub keys: usize,
    /// Operations that took part in the check.
    pub operations: usize,
    /// Of those, operations with an unknown outcome.
    pub unknown: usize,
    /// Operations left out: unknown-outcome reads and operations that failed without effect.
    pub ignored: usize,
    /// Distinct search states visited, summed over keys.
    pub states: usize,
}

/// Why a history was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// No linearization exists; the text describes the longest linearizable prefix found and
    /// the operations none of which could come next.
    NotLinearizable { key: String, explanation: String },
    /// The search for `key` exceeded [`MAX_STATES_PER_KEY`] states.
    SearchLimit { key: String, states: usize },
    /// The history itself is inconsistent (an output of the wrong kind, a return before the
    /// invocation).
    Malformed { op: OpId, reason: String },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable { key, explanation } => {
                write!(
                    f,
                    "history of key {key:?} is not linearizable\n{explanation}"
                )
            }
            CheckError::SearchLimit { key, states } => {
                write!(f, "gave up on key {key:?} after {states} search states")
            }
            CheckError::Malformed { op, reason } => {
                write!(f, "operation {op} is malformed: {reason}")
            }
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks that `history` is linearizable with respect to a map of independent registers,
/// all initially absent.
pub fn check(history: &History) -> Result<CheckReport, CheckError> {
    let origin = history.ops.iter().map(|op| op.invoked).min();
    let Some(origin) = origin else {
        return Ok(CheckReport::default());
    };
    let mut report = CheckReport::default();
    let mut by_key: BTreeMap<&str, Vec<OpId>> = BTreeMap::new();
    for (id, op) in history.ops.iter().enumerate() {
        validate(id, op)?;
        let relevant = match (&op.completion, &op.call) {
            (Completion::Failed, _) | (Completion::Unknown, Call::Get { .. }) => false,
            (Completion::Unknown, _) => {
                report.unknown += 1;
                true
            }
            (Completion::Returned { .. }, _) => true,
        };
        if relevant {
            by_key.entry(op.call.key()).or_default().push(id);
        } else {
            report.ignored += 1;
        }
    }
    for (key, ids) in by_key {
        let partition = Partition::new(history, origin, &ids);
        report.keys += 1;
        report.operations += ids.len();
        report.states += partition.search(key)?;
    }
    Ok(report)
}

fn validate(id: OpId, op: &Operation) -> Result<(), CheckError> {
    let Completion::Returned { at, output } = &op.completion else {
        return Ok(());
    };
    if *at < op.invoked {
        return Err(CheckError::Malformed {
            op: id,
            reason: "returned before it was invoked".into(),
        });
    }
    let kinds_match = matches!(
        (&op.call, output),
        (Call::Put { .. }, Output::Put)
            | (Call::Get { .. }, Output::Get(_))
            | (Call::Cas { .. }, Output::Cas(_))
    );
    if !kinds_match {
        return Err(CheckError::Malformed {
            op: id,
            reason: format!("{} answered with {output}", op.call),
        });
    }
    Ok(())
}

fn show_value(value: Option<&str>) -> String {
    value.map_or_else(|| "<absent>".to_string(), |v| format!("{v:?}"))
}

/// A register value, interned per key: `None` is absent. [`UNREAD`] stands for every value
/// that no operation reads or compares against: such values are indistinguishable to the
/// rest of the history, and merging them lets the memo recognise equivalent states.
type State = Option<u32>;

/// The interned index shared by all values nobody reads.
const UNREAD: u32 = 0;

/// One key's operations in the form the search needs: interned values, integer times.
#[derive(Debug)]
struct KeyOp {
    id: OpId,
    step: Step,
    /// Nanoseconds since the history's first invocation.
    invoked: u64,
    /// Nanoseconds since the history's first invocation; `u64::MAX` for an unknown outcome.
    returned: u64,
    /// Whether the outcome is unknown (the operation may also never have taken effect).
    unknown: bool,
    /// For unknown-outcome operations with the same effect as another one: the index of
    /// their group of interchangeable operations.
    group: Option<usize>,
}

/// The register model's transition for one operation, with values interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
    Put(u32),
    Get(State),
    Cas {
        expected: State,
        new: u32,
        outcome: Option<bool>,
    },
}

impl Step {
    /// The state after applying this operation to `state`, or `None` if the operation's
    /// recorded output is impossible in `state`.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Put(value) => Some(Some(value)),
            Step::Get(seen) => (seen == state).then_some(state),
            Step::Cas {
                expected,
                new,
                outcome,
            } => {
                let matches = expected == state;
                match outcome {
                    Some(applied) if applied != matches => None,
                    _ if matches => Some(Some(new)),
                    _ => Some(state),
                }
            }
        }
    }
}

/// What the memo remembers of a search node: which operations are linearized (for
/// interchangeable unknown operations only how many of each group) and the register state.
///
/// Two nodes with equal keys have the same futures. For groups this holds because every
/// linearized member of a group was invoked before the earliest return among the remaining
/// definite operations, so swapping it with an unlinearized member that is also past its
/// invocation changes nothing that can still happen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct MemoKey {
    linearized: BitSet,
    group_counts: Box<[u32]>,
    state: State,
}

struct Partition<'h> {
    history: &'h History,
    ops: Vec<KeyOp>,
    values: Vec<String>,
    groups: usize,
}

impl<'h> Partition<'h> {
    fn new(history: &'h History, origin: Instant, ids: &[OpId]) -> Self {
        let mut read: HashSet<&str> = HashSet::new();
        for &id in ids {
            let op = &history.ops[id];
            if let Completion::Returned {
                output: Output::Get(Some(value)),
                ..
            } = &op.completion
            {
                read.insert(value);
            }
            if let Call::Cas {
                expected: Some(value),
                ..
            } = &op.call
            {
                read.insert(value);
            }
        }
        let mut interned: HashMap<&str, u32> = HashMap::new();
        let mut values: Vec<String> = vec!["<a value nobody read>".to_string()];
        let mut intern = |value: &'h str| -> u32 {
            if !read.contains(value) {
                return UNREAD;
            }
            *interned.entry(value).or_insert_with(|| {
                values.push(value.to_string());
                (values.len() - 1) as u32
            })
        };
        let since = |at: Instant| {
            at.duration_since(origin)
                .as_nanos()
                .min(u64::MAX as u128 - 1) as u64
        };
        let mut ops = Vec::with_capacity(ids.len());
        for &id in ids {
            let op = &history.ops[id];
            let (returned, output) = match &op.completion {
                Completion::Returned { at, output } => (since(*at), Some(output)),
                _ => (u64::MAX, None),
            };
            let step = match &op.call {
                Call::Put { value, .. } => Step::Put(intern(value)),
                Call::Get { .. } => match output {
                    Some(Output::Get(seen)) => Step::Get(seen.as_deref().map(&mut intern)),
                    _ => unreachable!("unknown reads are filtered out and kinds are validated"),
                },
                Call::Cas { expected, new, .. } => Step::Cas {
                    expected: expected.as_deref().map(&mut intern),
                    new: intern(new),
                    outcome: match output {
                        Some(Output::Cas(applied)) => Some(*applied),
                        _ => None,
                    },
                },
            };
            let unknown = output.is_none();
            ops.push(KeyOp {
                id,
                step,
                invoked: since(op.invoked),
                returned,
                unknown,
                group: None,
            });
        }
        let mut by_effect: HashMap<Step, Vec<usize>> = HashMap::new();
        for (index, op) in ops.iter().enumerate().filter(|(_, op)| op.unknown) {
            by_effect.entry(op.step).or_default().push(index);
        }
        let mut groups = 0;
        for members in by_effect.into_values().filter(|members| members.len() > 1) {
            for index in members {
                ops[index].group = Some(groups);
            }
            groups += 1;
        }
        Self {
            history,
            ops,
            values,
            groups,
        }
    }

    /// Runs the search; returns the number of states visited.
    fn search(&self, key: &str) -> Result<usize, CheckError> {
        let mut remaining = self.ops.iter().filter(|op| !op.unknown).count();
        if remaining == 0 {
            return Ok(0);
        }
        let mut list = EntryList::new(&self.ops);
        let mut node = MemoKey {
            linearized: BitSet::new(self.ops.len()),
            group_counts: vec![0; self.groups].into_boxed_slice(),
            state: None,
        };
        let mut memo: HashSet<MemoKey> = HashSet::new();
        // Each frame: the call entry linearized and the state before it.
        let mut stack: Vec<(usize, State)> = Vec::new();
        let mut deepest: Vec<(usize, State)> = Vec::new();
        let mut entry = list.first();
        loop {
            if list.is_call(entry) {
                let op = &self.ops[list.op_of(entry)];
                let next = op.step.apply(node.state);
                // An unknown-outcome operation is placed only where it changes the register:
                // where it changes nothing it is the same as never having taken effect, which
                // it may anyway. This keeps failed unknown writes from multiplying the states.
                let next = next.filter(|next| !(op.unknown && *next == node.state));
                if let Some(next) = next {
                    let previous = node.state;
                    self.mark(&mut node, entry, true);
                    node.state = next;
                    if memo.insert(node.clone()) {
                        if memo.len() > MAX_STATES_PER_KEY {
                            return Err(CheckError::SearchLimit {
                                key: key.to_string(),
                                states: memo.len(),
                            });
                        }
                        stack.push((entry, previous));
                        if stack.len() > deepest.len() {
                            deepest.clone_from(&stack);
                        }
                        list.lift(entry, !op.unknown);
                        if !op.unknown {
                            remaining -= 1;
                            if remaining == 0 {
                                return Ok(memo.len());
                            }
                        }
                        entry = list.first();
                        continue;
                    }
                    node.state = previous;
                    self.mark(&mut node, entry, false);
                }
                entry = list.next(entry);
            } else {
                // A definite operation returns here without having been linearized: undo the
                // latest choice and try the next candidate after it.
                let Some((call, previous)) = stack.pop() else {
                    return Err(CheckError::NotLinearizable {
                        key: key.to_string(),
                        explanation: self.explain(&deepest),
                    });
                };
                let op = &self.ops[list.op_of(call)];
                node.state = previous;
                self.mark(&mut node, call, false);
                list.unlift(call, !op.unknown);
                if !op.unknown {
                    remaining += 1;
                }
                entry = list.next(call);
            }
        }
    }

    /// Records in `node` that the operation of call entry `entry` is (or no longer is)
    /// linearized.
    fn mark(&self, node: &mut MemoKey, entry: usize, linearized: bool) {
        let index = entry / 2;
        match (self.ops[index].group, linearized) {
            (Some(group), true) => node.group_counts[group] += 1,
            (Some(group), false) => node.group_counts[group] -= 1,
            (None, true) => node.linearized.insert(index),
            (None, false) => node.linearized.remove(index),
        }
    }

    /// Describes the longest linearizable prefix and the operations that could not follow it.
    fn explain(&self, deepest: &[(usize, State)]) -> String {
        let order: Vec<usize> = deepest.iter().map(|&(entry, _)| entry / 2).collect();
        let mut state: State = None;
        let mut lines = vec![format!(
            "longest linearizable prefix: {} of {} operations; its last steps:",
            order.len(),
            self.ops.len()
        )];
        let shown_from = order.len().saturating_sub(8);
        for (i, &op) in order.iter().enumerate() {
            state = self.ops[op].step.apply(state).unwrap_or(state);
            if i >= shown_from {
                lines.push(format!("  {}  => {}", self.describe(op), self.show(state)));
            }
        }
        let done: HashSet<usize> = order.iter().copied().collect();
        let horizon = (0..self.ops.len())
            .filter(|op| !done.contains(op))
            .map(|op| self.ops[op].returned)
            .min();
        lines.push(format!(
            "state then: {}; none of these could take effect next:",
            self.show(state)
        ));
        let (mut frontier, unknown): (Vec<usize>, Vec<usize>) = (0..self.ops.len())
            .filter(|op| !done.contains(op) && Some(self.ops[*op].invoked) <= horizon)
            .partition(|&op| !self.ops[op].unknown);
        frontier.sort_by_key(|&op| self.ops[op].invoked);
        for op in frontier.into_iter().take(12) {
            lines.push(format!("  {}", self.describe(op)));
        }
        if !unknown.is_empty() {
            lines.push(format!(
                "  (and {} unknown-outcome operations that could not help)",
                unknown.len()
            ));
        }
        lines.join("\n")
    }

    fn describe(&self, op: usize) -> String {
        let key_op = &self.ops[op];
        let recorded = &self.history.ops[key_op.id];
        let at = |nanos: u64| format!("{:.3}ms", nanos as f64 / 1e6);
        let completion = match &recorded.completion {
            Completion::Returned { output, .. } => {
                format!("-> {output} at {}", at(key_op.returned))
            }
            _ => "-> unknown outcome".to_string(),
        };
        let note = recorded
            .note
            .as_deref()
            .map(|note| format!(" [{note}]"))
            .unwrap_or_default();
        format!(
            "#{} client {} {} invoked {} {completion}{note}",
            key_op.id,
            recorded.client,
            recorded.call,
            at(key_op.invoked)
        )
    }

    fn show(&self, state: State) -> String {
        show_value(state.map(|v| self.values[v as usize].as_str()))
    }
}

/// The history as a doubly linked list of call and return entries in time order, from which
/// linearized operations are lifted and restored in LIFO order (dancing links).
///
/// Entry `2 * op` is the call of `op`, `2 * op + 1` its return; unknown-outcome operations
/// have no return entry in the list. `head` and `tail` are sentinels stored after them.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl EntryList {
    fn new(ops: &[KeyOp]) -> Self {
        let n = ops.len();
        let mut order: Vec<usize> = (0..2 * n)
            .filter(|&e| e.is_multiple_of(2) || !ops[e / 2].unknown)
            .collect();
        // At equal times calls sort before returns: touching intervals count as concurrent.
        order.sort_by_key(|&e| {
            let op = &ops[e / 2];
            if e.is_multiple_of(2) {
                (op.invoked, 0u8)
            } else {
                (op.returned, 1u8)
            }
        });
        let head = 2 * n;
        let tail = 2 * n + 1;
        let mut next = vec![tail; 2 * n + 2];
        let mut prev = vec![head; 2 * n + 2];
        let mut last = head;
        for e in order {
            next[last] = e;
            prev[e] = last;
            last = e;
        }
        next[last] = tail;
        prev[tail] = last;
        Self { next, prev, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn next(&self, entry: usize) -> usize {
        self.next[entry]
    }

    /// Whether `entry` is a call entry. The tail sentinel (`2 * n + 1`) counts as a return,
    /// so a search that runs off the end backtracks; it cannot while a definite operation
    /// remains, whose return entry comes first.
    fn is_call(&self, entry: usize) -> bool {
        entry.is_multiple_of(2) && entry != self.head
    }

    fn op_of(&self, entry: usize) -> usize {
        entry / 2
    }

    fn unlink(&mut self, entry: usize) {
        let (p, n) = (self.prev[entry], self.next[entry]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, entry: usize) {
        let (p, n) = (self.prev[entry], self.next[entry]);
        self.next[p] = entry;
        self.prev[n] = entry;
    }

    /// Removes a call entry and, if the operation has one, its return entry.
    fn lift(&mut self, call: usize, has_return: bool) {
        self.unlink(call);
        if has_return {
            self.unlink(call + 1);
        }
    }

    /// Restores what the matching `lift` removed; lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize, has_return: bool) {
        if has_return {
            self.relink(call + 1);
        }
        self.relink(call);
    }
}

/// A fixed-size set of operation indices.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BitSet(Box<[u64]>);

impl BitSet {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)].into_boxed_slice())
    }

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[cfg(test)]
mod tests;

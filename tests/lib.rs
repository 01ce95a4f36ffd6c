//! Cross-process tests live in the `[[test]]` targets of this package; see `tests/*.rs`.
//!
//! They start real `cella` processes through `cella-testkit`, kill them and check what
//! survived. Run them with `cargo test --workspace`, or `cargo build -p cella-cli && cargo
//! test -p cella-e2e` (the binary is not rebuilt by the latter alone); add `-- --nocapture`
//! to see what each test measured. Knobs: `CELLA_BIN` (binary to run),
//! `CELLA_FAULT_ITERATIONS` (kill -9 cycles in `durability`, default 20), `CELLA_FAULT_SEED`
//! (the random choices of `linearizable`). A failing test prints each node's log tail and
//! keeps its temporary directory.

//! A crate that the binary never names is left out by the linker, and its
//! handlers with it. This binary depends on `allocation` but never names it:
//! building a bus scoped to it must fail, saying how to fix it, rather than
//! start a service without handlers.
#![allow(missing_docs)]

use eda_core::{MessageBus, WiringProblem};

#[test]
fn a_scope_whose_crate_was_left_out_by_the_linker_is_rejected_with_the_remedy() {
    let err = MessageBus::builder()
        .scope("allocation")
        .build()
        .expect_err("allocation's handlers are not linked into this binary");
    assert_eq!(
        err.problems,
        vec![WiringProblem::EmptyScope {
            scope: "allocation".into()
        }]
    );
    assert!(
        err.to_string().contains("`use allocation as _;`"),
        "the message gives the one-line remedy: {err}"
    );
}

// `Dependency` is sealed: a handler takes the user's own types as adapters
// (`impl Adapter`); nothing outside eda implements `Dependency` itself, even
// one that writes every hidden item out, because it cannot name the token.
use eda_core::Dependency;
use std::sync::Arc;

use eda_core::__private::{Adapters, Context, DepSlot, Requirements};

pub struct Clock;

static CLOCK: Clock = Clock;

impl Dependency for Clock {
    fn __sealed(_: eda_core::dependency::sealed::Token) {}
    fn __prepare(_: &Adapters<'_>) -> Option<Arc<Clock>> {
        None
    }
    fn __resolve<'c>(
        _: &'c Option<Arc<Clock>>,
        _: &'c Context<'_>,
    ) -> Result<DepSlot<'c, Clock>, eda_core::Error> {
        Ok(DepSlot::Lent(&CLOCK))
    }
    fn __require(_: &mut Requirements) {}
}

fn main() {}

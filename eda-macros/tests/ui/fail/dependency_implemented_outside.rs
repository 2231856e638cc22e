// `Dependency` is sealed: a handler takes the user's own types as adapters
// (`impl Adapter`); nothing outside eda implements `Dependency` itself, even
// one that writes every hidden item out, because it cannot name the token.
use eda_core::Dependency;
use eda_core::__private::{Context, Requirements};

pub struct Clock;

static CLOCK: Clock = Clock;

impl Dependency for Clock {
    type __Slot<'a> = &'a Clock;
    fn __sealed(_: eda_core::dependency::sealed::Token) {}
    fn __resolve<'a>(_: &Context<'a>) -> Result<&'a Clock, eda_core::Error> {
        Ok(&CLOCK)
    }
    fn __get<'s>(slot: &'s &Clock) -> &'s Self {
        slot
    }
    fn __require(_: &mut Requirements) {}
}

fn main() {}

use eda_core::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
pub struct Happened {}

#[event_handler(id = "notify the warehouse")]
async fn notify(_: &Happened) {}

#[event_handler(id = "a", id = "b")]
async fn twice(_: &Happened) {}

fn main() {}

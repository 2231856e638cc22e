//! The handler lives in another module than its command, and names it by
//! path.

mod domain {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, eda_core::Command)]
    #[command(output = u32)]
    pub struct Double {
        pub n: u32,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, eda_core::Event)]
    pub struct Doubled {
        pub n: u32,
    }
}

mod handlers {
    #[eda_core::command_handler]
    async fn double(cmd: crate::domain::Double) -> Result<u32, eda_core::BoxError> {
        Ok(cmd.n * 2)
    }

    #[eda_core::event_handler]
    async fn on_doubled(_: &super::domain::Doubled) {}
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bus = eda_core::MessageBus::builder().build().expect("wired");
    assert_eq!(bus.handle(domain::Double { n: 21 }).await.unwrap(), 42);
}

// `AnyEvent` is sealed: eda boxes every raised event itself; a type outside
// eda cannot pose as one, even one that writes every hidden method out.
use eda_core::{AnyEvent, BoxError, Metadata};

#[derive(Debug)]
pub struct Fake(Metadata);

impl AnyEvent for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn is_external(&self) -> bool {
        false
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
    fn to_json(&self) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    fn metadata(&self) -> &Metadata {
        &self.0
    }
    fn __set_metadata(&mut self, metadata: Metadata) {
        self.0 = metadata;
    }
    fn __clone_box(&self) -> Box<dyn AnyEvent> {
        Box::new(Fake(self.0))
    }
    fn __type_id(&self) -> std::any::TypeId {
        std::any::TypeId::of::<Fake>()
    }
}

fn main() {}

//! Test fixture `net-probe`: a model that tries to open a TCP connection, so
//! its component imports `wasi:sockets`. Uploads of it must be refused.

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

struct NetProbe;

impl Guest for NetProbe {
    fn metadata() -> ModelMetadata {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![-1],
        };
        ModelMetadata {
            name: "net-probe".into(),
            version: "1".into(),
            platform: "fixture".into(),
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
        }
    }

    fn infer(_request: InferRequest) -> Result<InferResponse, Error> {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Err(Error::Internal("connected: the sandbox leaked".into())),
            Err(e) => Err(Error::Internal(format!("no network: {e}"))),
        }
    }
}

export!(NetProbe);

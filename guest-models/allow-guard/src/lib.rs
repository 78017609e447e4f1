//! Test fixture `allow-guard`: a component of the `policy` world that lets
//! every request and response through. Uploaded as a model it must be
//! refused, since it does not export `airlock:inference/inference`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use airlock::inference::types::{InferRequest, InferResponse};
use exports::airlock::inference::guard::{Guest, RequestDecision, ResponseDecision};

struct AllowAll;

impl Guest for AllowAll {
    fn check_request(_config: String, _request: InferRequest) -> RequestDecision {
        RequestDecision::Allow
    }

    fn check_response(
        _config: String,
        _request: InferRequest,
        _response: InferResponse,
    ) -> ResponseDecision {
        ResponseDecision::Allow
    }
}

export!(AllowAll);

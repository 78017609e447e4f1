//! Test fixture `script-guard`: a component of the `policy` world whose
//! configuration (the `config` string of the model's manifest) says what it
//! decides, so that host tests can drive a guard chain through every path.
//! The same script applies to `check-request` and `check-response`.
//!
//! | `config`        | decision                                                     |
//! |-----------------|--------------------------------------------------------------|
//! | `""`, `allow`   | allow                                                        |
//! | `deny:<reason>` | deny with `<reason>`                                         |
//! | `append:<s>`    | rewrite: `<s>` appended to every element of every BYTES tensor |
//! | `reshape`       | rewrite into another structure (one element dropped): invalid  |
//! | `loop`          | spins forever                                                |
//! | `trap`          | panics, which is a wasm trap                                 |
//!
//! Uploaded as a model it must be refused, since it does not export
//! `airlock:inference/inference`.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
});

use std::hint::black_box;

use airlock::inference::types::{InferRequest, InferResponse, Tensor, TensorData};
use exports::airlock::inference::guard::{Guest, RequestDecision, ResponseDecision};

/// What the script says to do with the tensors.
enum Action {
    Allow,
    Deny(String),
    Rewrite(fn(&mut Vec<Tensor>, &str), String),
}

fn parse(config: &str) -> Action {
    match config {
        "" | "allow" => Action::Allow,
        "loop" => loop {
            black_box(());
        },
        "trap" => panic!("script-guard: told to trap"),
        "reshape" => Action::Rewrite(reshape, String::new()),
        other => match other.split_once(':') {
            Some(("deny", reason)) => Action::Deny(reason.to_owned()),
            Some(("append", suffix)) => Action::Rewrite(append, suffix.to_owned()),
            _ => Action::Deny(format!("script-guard: unknown script {other:?}")),
        },
    }
}

fn append(tensors: &mut Vec<Tensor>, suffix: &str) {
    for tensor in tensors {
        if let TensorData::Bytes(elements) = &mut tensor.data {
            for element in elements {
                element.extend_from_slice(suffix.as_bytes());
            }
        }
    }
}

fn reshape(tensors: &mut Vec<Tensor>, _: &str) {
    if let Some(tensor) = tensors.first_mut() {
        if let TensorData::Bytes(elements) = &mut tensor.data {
            elements.pop();
        }
        if let Some(first) = tensor.shape.first_mut() {
            *first = first.saturating_sub(1);
        }
    }
}

struct Script;

impl Guest for Script {
    fn check_request(config: String, mut request: InferRequest) -> RequestDecision {
        match parse(&config) {
            Action::Allow => RequestDecision::Allow,
            Action::Deny(reason) => RequestDecision::Deny(reason),
            Action::Rewrite(edit, arg) => {
                edit(&mut request.inputs, &arg);
                RequestDecision::Rewrite(request)
            }
        }
    }

    fn check_response(
        config: String,
        _request: InferRequest,
        mut response: InferResponse,
    ) -> ResponseDecision {
        match parse(&config) {
            Action::Allow => ResponseDecision::Allow,
            Action::Deny(reason) => ResponseDecision::Deny(reason),
            Action::Rewrite(edit, arg) => {
                edit(&mut response.outputs, &arg);
                ResponseDecision::Rewrite(response)
            }
        }
    }
}

export!(Script);

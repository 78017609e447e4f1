//! `infra deploy|status|destroy` as a user runs it: the binary, configured
//! only through the standard AWS environment (AWS_ENDPOINT_URL points it at
//! the emulator).

use std::process::{Command, Output};

use crate::moto::{Moto, REGION};
use crate::support::package;

fn infra(moto: &Moto, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infra"))
        .args(args)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AIRLOCK_STACK")
        .output()
        .expect("failed to run infra")
}

fn ok(moto: &Moto, args: &[&str]) -> String {
    let output = infra(moto, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "infra {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn deploy_twice_status_and_destroy_from_the_command_line() {
    let moto = Moto::start();
    let (_dir, zip) = package("#!/bin/sh\n");
    let zip = zip.to_str().unwrap();

    let first = ok(&moto, &["deploy", "--zip", zip]);
    for line in [
        "bucket airlock-models-123456789012-us-east-1: created",
        "role airlock-lambda: created",
        "function airlock: created",
        "alias airlock:live (version 1): created",
        "stage airlock $default: created",
        "Endpoint: https://",
        "curl https://",
        "/v2/models/digits/infer -H 'content-type: application/json' -d '{\"inputs\"",
        "airlock push model.wasm --name digits --server https://",
    ] {
        assert!(first.contains(line), "{line:?} missing from:\n{first}");
    }

    let second = ok(&moto, &["deploy", "--zip", zip]);
    assert!(second.contains("No change"), "{second}");
    assert!(
        !second.contains("created") && !second.contains("updated"),
        "{second}"
    );

    let plan = ok(
        &moto,
        &["deploy", "--dry-run", "--memory", "2048", "--zip", zip],
    );
    assert!(
        plan.contains("function airlock: would update (memory)"),
        "{plan}"
    );
    assert!(plan.contains("Dry run: nothing was changed."), "{plan}");

    let status = ok(&moto, &["status"]);
    assert!(status.contains("alias airlock:live: version 1"), "{status}");
    assert!(status.contains("endpoint: https://"), "{status}");
    assert!(status.contains("14 routes (4 AWS_IAM)"), "{status}");

    let destroyed = ok(&moto, &["destroy", "--delete-bucket"]);
    for line in [
        "function airlock: deleted",
        "role airlock-lambda: deleted",
        "bucket airlock-models-123456789012-us-east-1: deleted",
    ] {
        assert!(
            destroyed.contains(line),
            "{line:?} missing from:\n{destroyed}"
        );
    }
    let status = ok(&moto, &["status"]);
    assert!(
        status.contains("api airlock: absent") && status.contains("endpoint: none"),
        "{status}"
    );
}

#[test]
fn a_missing_zip_fails_with_a_clear_message() {
    let moto = Moto::start();
    let output = infra(&moto, &["deploy", "--zip", "/nonexistent/bootstrap.zip"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/bootstrap.zip does not exist")
            && stderr.contains("cargo run -p infra -- package"),
        "{stderr}"
    );
    // A dry run, status and destroy do not need it.
    let plan = ok(
        &moto,
        &["deploy", "--dry-run", "--zip", "/nonexistent/bootstrap.zip"],
    );
    assert!(plan.contains("function airlock: would create"), "{plan}");
}

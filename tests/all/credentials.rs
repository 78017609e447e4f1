//! Credentials as an attacker presents them: an empty admin token is
//! refused before a host starts, and the bearer scheme is read one way over
//! HTTP/1.1 and HTTP/2 (where a trailing space survives).

use airlock::{Host, HostConfig};

use crate::support::{ADMIN_TOKEN, assert_still_serving, server, test_config};

/// Empty, blank or too-short admin tokens make the host refuse to start;
/// before the fix `""` was taken as the token and matched `Bearer `.
#[test]
fn an_empty_admin_token_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    for token in ["", " ", "short", "has a space in it!"] {
        let mut config: HostConfig = test_config(data.path());
        config.admin_token = Some(token.to_owned());
        let error = match Host::new(config.clone()) {
            Ok(_) => panic!("a host started with admin token {token:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains("admin token"), "{token:?}: {error}");
        assert!(Host::open(config).is_err(), "Host::open with {token:?}");
    }
}

/// The attack of the report, over HTTP/2: `authorization: Bearer ` with
/// its trailing space. It is no credential at all (401), not a wrong one,
/// and the scheme is matched without regard to case.
#[tokio::test]
async fn an_empty_bearer_is_no_credential_over_http2() {
    let s = server();
    let h2 = s
        .client_builder_with_alpn(&[b"h2"])
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (method, path) in [
        (reqwest::Method::GET, "/metrics"),
        (reqwest::Method::POST, "/v2/repository/index"),
    ] {
        for value in ["Bearer ", "Bearer", "bearer    "] {
            let response = h2
                .request(method.clone(), s.url(path))
                .header("authorization", value)
                .send()
                .await
                .unwrap();
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            assert_eq!(response.status(), 401, "{method} {path} with {value:?}");
        }
        for value in [
            format!("bearer {ADMIN_TOKEN}"),
            format!("BEARER  {ADMIN_TOKEN} "),
        ] {
            let response = h2
                .request(method.clone(), s.url(path))
                .header("authorization", value.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method} {path} with {value:?}");
        }
    }
    assert_still_serving(&h2).await;
}

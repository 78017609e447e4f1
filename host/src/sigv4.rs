//! AWS Signature Version 4 for the repository API behind API Gateway.
//!
//! `infra` puts the repository routes behind the HTTP API's `AWS_IAM`
//! authorization: API Gateway refuses (403) any request to them that is not
//! SigV4-signed by a principal allowed `execute-api:Invoke`, before the
//! Lambda function sees it. [`Signer`] signs the client's requests for that
//! (service `execute-api`), with credentials from the standard AWS chain.
//!
//! Every request is signed whole: method, path, query, the headers the
//! client sets (`host`, `content-type`, `x-amz-date`, the model signature
//! header …) and the SHA-256 of the body, multipart bodies included, so a
//! body changed on the way no longer matches. The hash goes into the
//! canonical request only (no `x-amz-content-sha256` header: API Gateway
//! does not need one, unlike S3).
//!
//! The presigned S3 leg of an upload is *not* signed here: its URL carries
//! its own signature in the query, made by the server for exactly that
//! `PUT`, and a second signature (an `Authorization` header) on top is
//! refused by S3.

use std::time::SystemTime;

use anyhow::Context as _;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials as _;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// The service name API Gateway checks the signature's scope against.
pub const SERVICE: &str = "execute-api";

/// Signs requests for API Gateway's `AWS_IAM` routes.
#[derive(Clone)]
pub struct Signer {
    credentials: Credentials,
    region: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials' own Debug hides the secret; the key id is not one.
        f.debug_struct("Signer")
            .field("access_key_id", &self.credentials.access_key_id())
            .field("region", &self.region)
            .finish()
    }
}

impl Signer {
    /// A signer with these credentials for `region`.
    pub fn new(credentials: Credentials, region: impl Into<String>) -> Self {
        Self {
            credentials,
            region: region.into(),
        }
    }

    /// A signer for `server` with the standard AWS configuration chain:
    /// credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
    /// (`AWS_SESSION_TOKEN`), `AWS_PROFILE` and the `~/.aws` files (SSO,
    /// assumed roles, `credential_process`), web identity, container or
    /// instance metadata. The region is the one in an
    /// `execute-api.<region>.amazonaws.com` host name (the signature must
    /// name the API's region, whatever the local default), else `region`,
    /// else the chain's (`AWS_REGION`, the profile).
    ///
    /// Credentials are resolved once: a push takes minutes at most, and
    /// the chain's temporary credentials last longer than that.
    pub fn from_environment(server: &str, region: Option<&str>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start a runtime to load AWS credentials")?;
        let (credentials, chain_region) = runtime.block_on(async {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .load()
                .await;
            let provider = config
                .credentials_provider()
                .context("no AWS credentials provider is configured")?;
            let credentials = provider.provide_credentials().await.context(
                "failed to load AWS credentials to sign requests for API Gateway \
                 (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
            )?;
            anyhow::Ok((credentials, config.region().map(|r| r.as_ref().to_owned())))
        })?;
        let region = execute_api_region(server)
            .or_else(|| region.map(str::to_owned))
            .or(chain_region)
            .context(
                "no AWS region to sign for: the server is not an execute-api host name, \
                 so set AWS_REGION (or --aws-region)",
            )?;
        Ok(Self::new(credentials, region))
    }

    /// The region signatures are scoped to.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The headers to add to the request `method url` with `headers` (those
    /// the client will send besides `host`, which comes from `url`) and
    /// `body`: `x-amz-date`, `authorization` and, with temporary
    /// credentials, `x-amz-security-token`. `url` must be percent-encoded
    /// exactly as it is sent.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Vec<(String, String)>> {
        self.sign_at(method, url, headers, body, SystemTime::now())
    }

    fn sign_at(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        time: SystemTime,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .context("failed to set up SigV4 signing")?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .with_context(|| format!("cannot sign a request to {url}"))?;
        let (instructions, _signature) = sign(request, &params)
            .with_context(|| format!("failed to sign the request to {url}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

/// The region of an API Gateway default endpoint,
/// `<api-id>.execute-api.<region>.amazonaws.com` (`.com.cn` in China);
/// `None` for any other URL, a custom domain included.
pub fn execute_api_region(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let rest = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [id, "execute-api", region]
            if !id.is_empty()
                && !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Some((*region).to_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_execute_api_host_names_only() {
        assert_eq!(
            execute_api_region("https://a1b2c3.execute-api.eu-west-1.amazonaws.com/v2").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            execute_api_region("https://a1b2c3.execute-api.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(execute_api_region("https://models.example.com"), None);
        assert_eq!(
            execute_api_region("https://execute-api.us-east-1.amazonaws.com"),
            None
        );
        assert_eq!(
            execute_api_region("https://x.execute-api.us-east-1.amazonaws.com.evil.test"),
            None
        );
        assert_eq!(execute_api_region("https://127.0.0.1:8443"), None);
    }

    /// The example of the AWS SigV4 documentation ("Create a signed AWS API
    /// request", GET ?Action=ListUsers on IAM, 20150830T123600Z) is for
    /// service `iam`; here the same inputs with `execute-api` must give a
    /// signature that changes with every signed part. The cross-check
    /// against an independent implementation (botocore) is the
    /// `push_signs_for_api_gateway` test in host/tests/lambda.rs.
    #[test]
    fn every_signed_part_changes_the_signature() {
        let signer = Signer::new(
            Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"),
            "us-east-1",
        );
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160);
        let sign = |method: &str, url: &str, ct: &str, body: &[u8]| {
            let headers = signer
                .sign_at(method, url, &[("content-type", ct)], body, time)
                .unwrap();
            headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .unwrap()
                .1
                .clone()
        };
        let base = sign("POST", "https://h.test/v2/x?a=1", "text/plain", b"body");
        assert!(
            base.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/execute-api/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, Signature="
            ),
            "{base}"
        );
        for other in [
            sign("PUT", "https://h.test/v2/x?a=1", "text/plain", b"body"),
            sign("POST", "https://h.test/v2/y?a=1", "text/plain", b"body"),
            sign("POST", "https://h.test/v2/x?a=2", "text/plain", b"body"),
            sign("POST", "https://g.test/v2/x?a=1", "text/plain", b"body"),
            sign("POST", "https://h.test/v2/x?a=1", "text/html", b"body"),
            sign("POST", "https://h.test/v2/x?a=1", "text/plain", b"bodY"),
        ] {
            assert_ne!(other, base);
        }
        let with_token = Signer::new(
            Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test"),
            "us-east-1",
        )
        .sign_at("GET", "https://h.test/", &[], b"", time)
        .unwrap();
        assert!(
            with_token
                .iter()
                .any(|(k, v)| k == "x-amz-security-token" && v == "tok")
        );
    }
}

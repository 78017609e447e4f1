//! deploy / status / destroy against the emulator, with every property the
//! stack promises checked through the SDK.

use std::collections::BTreeMap;

use airlock_infra::{
    ADMIN_ROUTES, Aws, Change, DeployOptions, DestroyOptions, DomainPlan, DomainSpec,
    PUBLIC_ROUTES, Report, deploy, destroy, status,
};
use aws_sdk_apigatewayv2::types::{
    AuthorizationType, EndpointType, IntegrationType, SecurityPolicy,
};
use aws_sdk_lambda::types::{Architecture, Runtime};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketVersioningStatus, ServerSideEncryption};
use serde_json::Value;

use crate::moto::{ACCOUNT, Moto, REGION};
use crate::support::{assert_same, options, package, snapshot, write_zip};

const BUCKET: &str = "airlock-models-123456789012-us-east-1";
const CERTIFICATE: &str =
    "arn:aws:acm:us-east-1:123456789012:certificate/4f9a7f5e-0000-4000-8000-000000000001";

fn kinds_changed(report: &Report) -> Vec<(&'static str, Change)> {
    report
        .changes()
        .into_iter()
        .map(|s| (s.kind, s.change.clone()))
        .collect()
}

/// IAM returns policy documents URL-encoded (moto returns them plain).
fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| {
        let decoded = percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .unwrap();
        serde_json::from_str(&decoded).unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_from_nothing_creates_the_whole_stack_and_a_second_run_is_a_no_op() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (_dir, zip) = package("#!/bin/sh\necho v1\n");

    let first = deploy(&aws, &options(&zip)).await.unwrap();
    for step in &first.report.steps {
        let expected = if step.kind == "endpoint" {
            Change::Unchanged
        } else {
            Change::Created
        };
        assert_eq!(step.change, expected, "{step}");
    }
    let kinds: Vec<_> = first.report.steps.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            "bucket",
            "role",
            "log-group",
            "log-group",
            "function",
            "alias",
            "api",
            "integration",
            "routes",
            "stage",
            "permission",
            "endpoint"
        ]
    );
    let api_id = first.api_id.clone().unwrap();
    let endpoint = format!("https://{api_id}.execute-api.{REGION}.amazonaws.com");
    assert_eq!(first.endpoint.as_deref(), Some(endpoint.as_str()));
    assert_eq!(first.live_version.as_deref(), Some("1"));
    let instructions = first.instructions();
    assert!(
        instructions.contains(&format!("curl {endpoint}/v2/models/digits/infer -H 'content-type: application/json' -d '{{\"inputs\"")),
        "{instructions}"
    );
    assert!(
        instructions.contains(&format!(
            "airlock push model.wasm --name digits --server {endpoint}"
        )),
        "{instructions}"
    );

    check_role(&aws).await;
    check_bucket(&aws).await;
    check_function(&aws, &zip).await;
    check_api(&aws, &api_id).await;

    // Again: nothing to do, and nothing done.
    let key = artifact_key(&aws, None).await;
    let before = snapshot(&aws, &api_id).await;
    let second = deploy(&aws, &options(&zip)).await.unwrap();
    assert!(
        !second.report.changed(),
        "second deploy changed {:?}",
        kinds_changed(&second.report)
    );
    assert!(
        second
            .report
            .steps
            .iter()
            .all(|s| s.change == Change::Unchanged)
    );
    assert_eq!(second.api_id.as_deref(), Some(api_id.as_str()));
    assert_eq!(second.live_version.as_deref(), Some("1"));
    assert_same(&before, &snapshot(&aws, &api_id).await, "the second deploy");
    assert_eq!(
        artifact_key(&aws, None).await,
        key,
        "a redeploy keeps the artifact key"
    );
    assert_eq!(artifact_key(&aws, Some("live")).await, key);

    // A dry run of a converged stack plans nothing either.
    let dry = deploy(
        &aws,
        &DeployOptions {
            dry_run: true,
            ..options(&zip)
        },
    )
    .await
    .unwrap();
    assert!(!dry.report.changed(), "{:?}", kinds_changed(&dry.report));
    assert_same(&before, &snapshot(&aws, &api_id).await, "a dry run");
}

async fn check_role(aws: &Aws) {
    let role = aws
        .iam
        .get_role()
        .role_name("airlock-lambda")
        .send()
        .await
        .unwrap()
        .role
        .unwrap();
    let trust = json(role.assume_role_policy_document().unwrap());
    let statements = trust["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "{trust}");
    assert_eq!(statements[0]["Effect"], "Allow");
    assert_eq!(
        statements[0]["Principal"],
        serde_json::json!({"Service": "lambda.amazonaws.com"})
    );
    assert_eq!(statements[0]["Action"], "sts:AssumeRole");
    let tags: BTreeMap<_, _> = role.tags().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(tags.get("airlock:stack"), Some(&"airlock"));

    let attached = aws
        .iam
        .list_attached_role_policies()
        .role_name("airlock-lambda")
        .send()
        .await
        .unwrap();
    let arns: Vec<_> = attached
        .attached_policies()
        .iter()
        .filter_map(|p| p.policy_arn())
        .collect();
    assert_eq!(
        arns,
        ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"]
    );

    let inline = aws
        .iam
        .get_role_policy()
        .role_name("airlock-lambda")
        .policy_name("airlock-model-bucket")
        .send()
        .await
        .unwrap();
    let doc = json(inline.policy_document());
    // Least privilege: only this bucket, only the store prefix, no wildcard action.
    for statement in doc["Statement"].as_array().unwrap() {
        let resources = match &statement["Resource"] {
            Value::String(one) => vec![one.clone()],
            many => many
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect(),
        };
        for resource in resources {
            assert!(
                resource == format!("arn:aws:s3:::{BUCKET}")
                    || resource == format!("arn:aws:s3:::{BUCKET}/models/*"),
                "{resource}"
            );
        }
        assert!(
            !statement["Action"].to_string().contains('*'),
            "{statement}"
        );
    }
    let names = aws
        .iam
        .list_role_policies()
        .role_name("airlock-lambda")
        .send()
        .await
        .unwrap();
    assert_eq!(names.policy_names(), ["airlock-model-bucket"]);
}

async fn check_bucket(aws: &Aws) {
    let encryption = aws
        .s3
        .get_bucket_encryption()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let rules = encryption
        .server_side_encryption_configuration()
        .unwrap()
        .rules();
    assert_eq!(
        rules[0]
            .apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm(),
        &ServerSideEncryption::Aes256
    );
    let versioning = aws
        .s3
        .get_bucket_versioning()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert_eq!(versioning.status(), Some(&BucketVersioningStatus::Enabled));
    let block = aws
        .s3
        .get_public_access_block()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let block = block.public_access_block_configuration().unwrap();
    let lifecycle = aws
        .s3
        .get_bucket_lifecycle_configuration()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let rules = lifecycle.rules();
    for ours in airlock_infra::lifecycle_rules() {
        assert!(
            rules.iter().any(|r| airlock_infra::same_rule(r, &ours)),
            "{ours:?} missing from {rules:?}"
        );
    }
    let staging = rules
        .iter()
        .find(|r| r.id() == Some("airlock-expire-staging"))
        .unwrap();
    assert_eq!(
        staging.filter().and_then(|f| f.prefix()),
        Some("models/staging/")
    );
    assert_eq!(staging.expiration().and_then(|e| e.days()), Some(1));
    assert_eq!(
        [
            block.block_public_acls(),
            block.ignore_public_acls(),
            block.block_public_policy(),
            block.restrict_public_buckets()
        ],
        [Some(true); 4]
    );
    let policy = aws
        .s3
        .get_bucket_policy()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let policy = json(policy.policy().unwrap());
    let statements = policy["Statement"].as_array().unwrap();
    let no_tls = statements
        .iter()
        .find(|s| s["Condition"]["Bool"]["aws:SecureTransport"] == "false")
        .expect("a statement about aws:SecureTransport");
    assert_eq!(no_tls["Effect"], "Deny");
    assert_eq!(no_tls["Principal"], "*");
    assert_eq!(no_tls["Action"], "s3:*");
    let resources = no_tls["Resource"].to_string();
    assert!(
        resources.contains(&format!("\"arn:aws:s3:::{BUCKET}\"")),
        "{resources}"
    );
    assert!(
        resources.contains(&format!("\"arn:aws:s3:::{BUCKET}/*\"")),
        "{resources}"
    );
    let old_tls = statements
        .iter()
        .find(|s| s["Condition"]["NumericLessThan"]["s3:TlsVersion"] == "1.2")
        .expect("a statement about s3:TlsVersion");
    assert_eq!(old_tls["Effect"], "Deny");
    let tags = aws
        .s3
        .get_bucket_tagging()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == "airlock:stack" && t.value() == "airlock")
    );
}

async fn check_function(aws: &Aws, zip: &std::path::Path) {
    let function = aws
        .lambda
        .get_function()
        .function_name("airlock")
        .send()
        .await
        .unwrap();
    let cfg = function.configuration().unwrap();
    assert_eq!(cfg.runtime(), Some(&Runtime::Providedal2023));
    assert_eq!(cfg.handler(), Some("bootstrap"));
    assert_eq!(
        cfg.role(),
        Some("arn:aws:iam::123456789012:role/airlock-lambda")
    );
    assert_eq!(cfg.memory_size(), Some(1024));
    assert_eq!(cfg.timeout(), Some(30));
    assert_eq!(cfg.architectures(), [Architecture::X8664]);
    let package = airlock_infra::CodePackage::read(zip).unwrap();
    assert_eq!(cfg.code_sha256(), Some(package.sha256.as_str()));
    let env = cfg.environment().unwrap().variables().unwrap();
    assert_eq!(env["AIRLOCK_STORE"], format!("s3://{BUCKET}/models"));
    assert_eq!(env["AIRLOCK_REFRESH_SECS"], "5");
    let key = &env[airlock_infra::ARTIFACT_KEY_ENV];
    assert_eq!(key.len(), 64, "32 random bytes, hex");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{}", key.len());
    assert_eq!(env.len(), 3);
    assert_eq!(function.tags().unwrap()["airlock:stack"], "airlock");

    let alias = aws
        .lambda
        .get_alias()
        .function_name("airlock")
        .name("live")
        .send()
        .await
        .unwrap();
    assert_eq!(alias.function_version(), Some("1"));
    let version = aws
        .lambda
        .get_function()
        .function_name("airlock")
        .qualifier("1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        version.configuration().unwrap().code_sha256(),
        Some(package.sha256.as_str())
    );

    for (group, retention) in [("/aws/lambda/airlock", 30), ("/aws/apigateway/airlock", 30)] {
        let groups = aws
            .logs
            .describe_log_groups()
            .log_group_name_prefix(group)
            .send()
            .await
            .unwrap();
        let found = groups
            .log_groups()
            .iter()
            .find(|g| g.log_group_name() == Some(group));
        assert_eq!(
            found.and_then(|g| g.retention_in_days()),
            Some(retention),
            "{group}"
        );
    }
}

async fn check_api(aws: &Aws, api_id: &str) {
    let api = aws.apigw.get_api().api_id(api_id).send().await.unwrap();
    assert_eq!(api.name(), Some("airlock"));
    assert_eq!(api.disable_execute_api_endpoint(), Some(false));
    assert_eq!(api.tags().unwrap()["airlock:stack"], "airlock");

    let integrations = aws
        .apigw
        .get_integrations()
        .api_id(api_id)
        .send()
        .await
        .unwrap();
    let [integration] = integrations.items() else {
        panic!("one integration expected: {:?}", integrations.items());
    };
    assert_eq!(
        integration.integration_type(),
        Some(&IntegrationType::AwsProxy)
    );
    assert_eq!(
        integration.integration_uri(),
        Some("arn:aws:lambda:us-east-1:123456789012:function:airlock:live")
    );
    assert_eq!(integration.payload_format_version(), Some("2.0"));
    let target = format!("integrations/{}", integration.integration_id().unwrap());

    let routes = aws.apigw.get_routes().api_id(api_id).send().await.unwrap();
    let mut found: Vec<(String, AuthorizationType)> = routes
        .items()
        .iter()
        .map(|r| {
            assert_eq!(r.target(), Some(target.as_str()), "{r:?}");
            (
                r.route_key().unwrap().to_owned(),
                r.authorization_type()
                    .cloned()
                    .unwrap_or(AuthorizationType::None),
            )
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wanted: Vec<(String, AuthorizationType)> = PUBLIC_ROUTES
        .iter()
        .map(|r| (r.to_string(), AuthorizationType::None))
        .chain(
            ADMIN_ROUTES
                .iter()
                .map(|r| (r.to_string(), AuthorizationType::AwsIam)),
        )
        .collect();
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found, wanted);
    // The routes, spelled out once more so a change to the lists is seen.
    assert!(found.contains(&(
        "POST /v2/models/{name}/infer".into(),
        AuthorizationType::None
    )));
    assert!(found.contains(&(
        "ANY /v2/repository/{proxy+}".into(),
        AuthorizationType::AwsIam
    )));
    assert!(found.contains(&(
        "POST /v2/repository/index".into(),
        AuthorizationType::AwsIam
    )));

    let stage = aws
        .apigw
        .get_stage()
        .api_id(api_id)
        .stage_name("$default")
        .send()
        .await
        .unwrap();
    assert_eq!(stage.auto_deploy(), Some(true));
    let throttling = stage.default_route_settings().unwrap();
    assert_eq!(throttling.throttling_rate_limit(), Some(50.0));
    assert_eq!(throttling.throttling_burst_limit(), Some(100));
    let logs = stage.access_log_settings().unwrap();
    assert_eq!(
        logs.destination_arn(),
        Some("arn:aws:logs:us-east-1:123456789012:log-group:/aws/apigateway/airlock")
    );
    let format: Value = serde_json::from_str(logs.format().unwrap()).expect("JSON access logs");
    assert_eq!(format["requestId"], "$context.requestId");
    assert!(!logs.format().unwrap().contains("requestBody"));

    let policy = aws
        .lambda
        .get_policy()
        .function_name("airlock")
        .qualifier("live")
        .send()
        .await
        .unwrap();
    let policy = json(policy.policy().unwrap());
    let statement = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "airlock-apigateway-invoke")
        .expect("the stack's invoke permission");
    assert_eq!(
        statement["Principal"]["Service"],
        "apigateway.amazonaws.com"
    );
    assert_eq!(statement["Action"], "lambda:InvokeFunction");
    assert_eq!(
        airlock_infra::statement_source_arn(statement),
        Some(format!("arn:aws:execute-api:{REGION}:{ACCOUNT}:{api_id}/*").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_zip_updates_only_the_function_code_and_the_alias() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (dir, zip) = package("#!/bin/sh\necho v1\n");
    deploy(&aws, &options(&zip)).await.unwrap();

    let zip2 = write_zip(dir.path(), "bootstrap-2.zip", "#!/bin/sh\necho v2\n");
    let second = deploy(&aws, &options(&zip2)).await.unwrap();
    assert_eq!(
        kinds_changed(&second.report),
        [
            ("function", Change::Updated(vec!["code".into()])),
            ("alias", Change::Updated(vec!["version 1 -> 2".into()])),
        ]
    );
    assert_eq!(second.live_version.as_deref(), Some("2"));
    let sha2 = airlock_infra::CodePackage::read(&zip2).unwrap().sha256;
    let live = aws
        .lambda
        .get_function()
        .function_name("airlock")
        .qualifier("live")
        .send()
        .await
        .unwrap();
    assert_eq!(
        live.configuration().unwrap().code_sha256(),
        Some(sha2.as_str())
    );
    assert_eq!(live.configuration().unwrap().version(), Some("2"));

    // A configuration change publishes too; nothing else moves.
    let third = deploy(
        &aws,
        &DeployOptions {
            memory_mb: 2048,
            ..options(&zip2)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        kinds_changed(&third.report),
        [
            ("function", Change::Updated(vec!["memory".into()])),
            ("alias", Change::Updated(vec!["version 2 -> 3".into()])),
        ]
    );
    let again = deploy(
        &aws,
        &DeployOptions {
            memory_mb: 2048,
            ..options(&zip2)
        },
    )
    .await
    .unwrap();
    assert!(
        !again.report.changed(),
        "{:?}",
        kinds_changed(&again.report)
    );
    // Code and configuration updates keep the artifact key, in `$LATEST`
    // and in every published version.
    let key = artifact_key(&aws, Some("1")).await;
    for qualifier in [None, Some("2"), Some("3"), Some("live")] {
        assert_eq!(artifact_key(&aws, qualifier).await, key, "{qualifier:?}");
    }
}

/// The artifact key in the environment of the function (`$LATEST`, or
/// the version or alias `qualifier`).
async fn artifact_key(aws: &Aws, qualifier: Option<&str>) -> String {
    let function = aws
        .lambda
        .get_function()
        .function_name("airlock")
        .set_qualifier(qualifier.map(str::to_owned))
        .send()
        .await
        .unwrap();
    let env = function.configuration().unwrap().environment().unwrap();
    env.variables().unwrap()[airlock_infra::ARTIFACT_KEY_ENV].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_gets_tls_1_2_and_replaces_the_execute_api_endpoint() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (_dir, zip) = package("#!/bin/sh\n");
    let with_domain = DeployOptions {
        domain: DomainPlan::Set(DomainSpec {
            name: "api.example.com".into(),
            certificate_arn: CERTIFICATE.into(),
        }),
        ..options(&zip)
    };
    let first = deploy(&aws, &with_domain).await.unwrap();
    let api_id = first.api_id.clone().unwrap();
    assert_eq!(first.endpoint.as_deref(), Some("https://api.example.com"));
    assert_eq!(first.report.step("domain").unwrap().change, Change::Created);
    assert_eq!(
        first.report.step("api-mapping").unwrap().change,
        Change::Created
    );
    assert_eq!(
        first.report.step("endpoint").unwrap().change,
        Change::Updated(vec!["disabled".into()])
    );
    assert!(
        first
            .instructions()
            .contains("curl https://api.example.com/v2/models/digits/infer")
    );

    let domain = aws
        .apigw
        .get_domain_name()
        .domain_name("api.example.com")
        .send()
        .await
        .unwrap();
    let [config] = domain.domain_name_configurations() else {
        panic!("one configuration expected");
    };
    assert_eq!(config.security_policy(), Some(&SecurityPolicy::Tls12));
    assert_eq!(config.endpoint_type(), Some(&EndpointType::Regional));
    assert_eq!(config.certificate_arn(), Some(CERTIFICATE));
    assert_eq!(domain.tags().unwrap()["airlock:stack"], "airlock");
    let mappings = aws
        .apigw
        .get_api_mappings()
        .domain_name("api.example.com")
        .send()
        .await
        .unwrap();
    let [mapping] = mappings.items() else {
        panic!("one mapping expected: {:?}", mappings.items());
    };
    assert_eq!(mapping.api_id(), Some(api_id.as_str()));
    assert_eq!(mapping.stage(), Some("$default"));
    assert!(mapping.api_mapping_key().unwrap_or_default().is_empty());
    let api = aws.apigw.get_api().api_id(&api_id).send().await.unwrap();
    assert_eq!(api.disable_execute_api_endpoint(), Some(true));

    // Rerun with the domain, and without naming it: both keep it as it is.
    assert!(!deploy(&aws, &with_domain).await.unwrap().report.changed());
    let kept = deploy(&aws, &options(&zip)).await.unwrap();
    assert!(!kept.report.changed(), "{:?}", kinds_changed(&kept.report));
    assert_eq!(kept.endpoint.as_deref(), Some("https://api.example.com"));

    let report = status(&aws, "airlock").await.unwrap();
    assert_eq!(report.endpoint.as_deref(), Some("https://api.example.com"));
    assert!(report.execute_api_disabled);
    assert_eq!(
        report.domains[0].security_policy.as_deref(),
        Some("TLS_1_2")
    );

    // --remove-domain: the domain goes, execute-api comes back.
    let removed = deploy(
        &aws,
        &DeployOptions {
            domain: DomainPlan::Remove,
            ..options(&zip)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        kinds_changed(&removed.report),
        [
            ("domain", Change::Deleted),
            ("endpoint", Change::Updated(vec!["enabled".into()])),
        ]
    );
    assert!(
        aws.apigw
            .get_domain_names()
            .send()
            .await
            .unwrap()
            .items()
            .is_empty()
    );
    let api = aws.apigw.get_api().api_id(&api_id).send().await.unwrap();
    assert_eq!(api.disable_execute_api_endpoint(), Some(false));
    assert_eq!(
        removed.endpoint,
        Some(format!(
            "https://{api_id}.execute-api.{REGION}.amazonaws.com"
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_domain_inputs_are_refused_before_any_call() {
    // No emulator: validation must fail before anything is sent.
    let sdk = aws_config::SdkConfig::builder()
        .region(aws_config::Region::new(REGION))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let aws = Aws::from_sdk_config(&sdk).unwrap();
    let (_dir, zip) = package("#!/bin/sh\n");
    let with = |name: &str, certificate_arn: &str| DeployOptions {
        domain: DomainPlan::Set(DomainSpec {
            name: name.into(),
            certificate_arn: certificate_arn.into(),
        }),
        ..options(&zip)
    };
    let cases = [
        (with("API.example.com", CERTIFICATE), "invalid domain name"),
        (
            with(
                "api.example.com",
                "arn:aws:acm:eu-west-1:123456789012:certificate/x",
            ),
            "deploy region",
        ),
        (
            with("api.example.com", "arn:aws:iam::123456789012:role/x"),
            "invalid certificate ARN",
        ),
        (
            DeployOptions {
                stack: "Bad_Name".into(),
                ..options(&zip)
            },
            "invalid stack name",
        ),
        (
            DeployOptions {
                log_retention_days: 10,
                ..options(&zip)
            },
            "--log-retention-days",
        ),
        (
            DeployOptions {
                memory_mb: 64,
                ..options(&zip)
            },
            "--memory",
        ),
    ];
    for (options, message) in cases {
        let err = deploy(&aws, &options).await.unwrap_err();
        assert!(format!("{err:#}").contains(message), "{err:#}");
    }
    // A missing zip is an error outside a dry run, and says how to build one.
    let missing = DeployOptions {
        zip: "/nonexistent/bootstrap.zip".into(),
        ..DeployOptions::default()
    };
    let err = deploy(&aws, &missing).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("cargo run -p infra -- package"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_leaves_nothing_of_the_stack_behind() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (_dir, zip) = package("#!/bin/sh\n");
    let with_domain = DeployOptions {
        domain: DomainPlan::Set(DomainSpec {
            name: "ml.example.com".into(),
            certificate_arn: CERTIFICATE.into(),
        }),
        ..options(&zip)
    };
    deploy(&aws, &with_domain).await.unwrap();
    // Models in the store, in several versions (the bucket is versioned).
    // The emulator serves plain HTTP and cannot judge the TLS condition, so
    // the bucket policy denies it every object call: seed without it, and
    // let the next deploy put it back.
    aws.s3
        .delete_bucket_policy()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    for body in ["{\"v\":1}", "{\"v\":2}"] {
        aws.s3
            .put_object()
            .bucket(BUCKET)
            .key("models/blobs/sha256/abc.wasm")
            .body(ByteStream::from_static(body.as_bytes()))
            .send()
            .await
            .unwrap();
    }
    aws.s3
        .delete_object()
        .bucket(BUCKET)
        .key("models/blobs/sha256/abc.wasm")
        .send()
        .await
        .unwrap();
    let restored = deploy(&aws, &with_domain).await.unwrap();
    assert_eq!(
        kinds_changed(&restored.report),
        [("bucket", Change::Updated(vec!["TLS-only policy".into()]))]
    );

    let dry = destroy(
        &aws,
        &DestroyOptions {
            dry_run: true,
            delete_bucket: true,
            ..DestroyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(dry.changed());
    assert!(
        !status(&aws, "airlock").await.unwrap().is_empty(),
        "a dry run deleted something"
    );

    // Without --delete-bucket the models stay.
    let report = destroy(&aws, &DestroyOptions::default()).await.unwrap();
    let bucket = report.step("bucket").unwrap();
    assert!(matches!(bucket.change, Change::Kept(_)), "{bucket}");
    for kind in ["domain", "api", "function", "log-group", "role"] {
        assert_eq!(report.step(kind).unwrap().change, Change::Deleted, "{kind}");
    }
    aws.s3
        .head_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("the bucket is kept");

    let report = destroy(
        &aws,
        &DestroyOptions {
            delete_bucket: true,
            ..DestroyOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.step("bucket").unwrap().change, Change::Deleted);
    assert_eq!(report.step("role").unwrap().change, Change::Absent);

    // Listing every kind of resource finds nothing of the stack.
    let roles = aws.iam.list_roles().send().await.unwrap();
    let roles: Vec<_> = roles
        .roles()
        .iter()
        .map(|r| r.role_name())
        .filter(|n| n.starts_with("airlock"))
        .collect();
    assert!(roles.is_empty(), "{roles:?}");
    let buckets = aws.s3.list_buckets().send().await.unwrap();
    assert!(buckets.buckets().is_empty(), "{:?}", buckets.buckets());
    let functions = aws.lambda.list_functions().send().await.unwrap();
    assert!(
        functions.functions().is_empty(),
        "{:?}",
        functions.functions()
    );
    let apis = aws.apigw.get_apis().send().await.unwrap();
    assert!(apis.items().is_empty(), "{:?}", apis.items());
    let domains = aws.apigw.get_domain_names().send().await.unwrap();
    assert!(domains.items().is_empty(), "{:?}", domains.items());
    let groups = aws.logs.describe_log_groups().send().await.unwrap();
    let groups: Vec<_> = groups
        .log_groups()
        .iter()
        .filter_map(|g| g.log_group_name())
        .filter(|n| n.contains("airlock"))
        .collect();
    assert!(groups.is_empty(), "{groups:?}");
    assert!(status(&aws, "airlock").await.unwrap().is_empty());

    // Destroying nothing is fine.
    let again = destroy(
        &aws,
        &DestroyOptions {
            delete_bucket: true,
            ..DestroyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!again.changed(), "{:?}", again.steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_fails_midway_converges_when_run_again() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let (_dir, zip) = package("#!/bin/sh\n");

    let failing = DeployOptions {
        fail_after: Some("function".into()),
        ..options(&zip)
    };
    let err = deploy(&aws, &failing).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("injected failure after step \"function\""),
        "{err:#}"
    );
    let half = status(&aws, "airlock").await.unwrap();
    assert!(half.function.is_some() && half.role_arn.is_some() && half.bucket);
    assert!(
        half.live_version.is_none() && half.api_id.is_none(),
        "{half}"
    );

    let rerun = deploy(&aws, &options(&zip)).await.unwrap();
    let changed: Vec<_> = rerun.report.changes().iter().map(|s| s.kind).collect();
    assert_eq!(
        changed,
        [
            "alias",
            "api",
            "integration",
            "routes",
            "stage",
            "permission"
        ],
        "only what the failed run had not made"
    );
    assert!(!deploy(&aws, &options(&zip)).await.unwrap().report.changed());

    // Drift made by hand is repaired: a route removed, a setting changed.
    let api_id = rerun.api_id.unwrap();
    let routes = aws.apigw.get_routes().api_id(&api_id).send().await.unwrap();
    let infer = routes
        .items()
        .iter()
        .find(|r| r.route_key() == Some("POST /v2/models/{name}/infer"))
        .unwrap();
    aws.apigw
        .delete_route()
        .api_id(&api_id)
        .route_id(infer.route_id().unwrap())
        .send()
        .await
        .unwrap();
    aws.s3
        .delete_bucket_policy()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    aws.s3
        .delete_bucket_lifecycle()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let repaired = deploy(&aws, &options(&zip)).await.unwrap();
    assert_eq!(
        kinds_changed(&repaired.report),
        [
            (
                "bucket",
                Change::Updated(vec!["TLS-only policy".into(), "lifecycle rules".into()])
            ),
            (
                "routes",
                Change::Updated(vec!["+POST /v2/models/{name}/infer".into()])
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_error_names_the_step_the_resource_and_what_aws_said() {
    // Without AWS's managed policies, attaching AWSLambdaBasicExecutionRole
    // fails the way a missing policy fails on AWS.
    let moto = Moto::start_with(false);
    let aws = moto.aws().await;
    let (_dir, zip) = package("#!/bin/sh\n");
    let err = deploy(&aws, &options(&zip)).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.starts_with("step role \"airlock-lambda\" failed"),
        "{text}"
    );
    assert!(
        text.contains("failed to attach AWSLambdaBasicExecutionRole to role \"airlock-lambda\""),
        "{text}"
    );
    assert!(text.contains("NoSuchEntity"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_everything_and_changes_nothing() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let plan = DeployOptions {
        dry_run: true,
        zip: "/nonexistent/bootstrap.zip".into(),
        ..DeployOptions::default()
    };
    let dry = deploy(&aws, &plan).await.unwrap();
    assert!(dry.report.steps.iter().all(|s| s.dry_run));
    assert!(dry.report.changes().len() >= 10, "{:?}", dry.report.steps);
    assert_eq!(
        dry.report.step("function").unwrap().to_string(),
        "function airlock: would create"
    );
    assert!(dry.endpoint.is_none());
    let after = status(&aws, "airlock").await.unwrap();
    assert!(after.is_empty() && !after.bucket, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_endpoint_and_the_active_model_versions() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let empty = status(&aws, "airlock").await.unwrap();
    assert!(empty.is_empty());
    assert!(empty.to_string().contains("endpoint: none"), "{empty}");

    let (_dir, zip) = package("#!/bin/sh\n");
    let deployed = deploy(&aws, &options(&zip)).await.unwrap();
    // The emulator serves plain HTTP and cannot judge the bucket policy's
    // TLS condition, so it denies every object call while the policy is
    // there (AWS, over TLS, does not): take it away to seed and read the store.
    aws.s3
        .delete_bucket_policy()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    // An index as the host's store writes it.
    let index = serde_json::json!({
        "name": "digits",
        "versions": [
            {"version": "1", "sha256": "aa", "size": 1, "uploaded_unix": 0, "model_version": "1"},
            {"version": "2", "sha256": "bb", "size": 1, "uploaded_unix": 0, "model_version": "1"}
        ],
        "active": "2",
        "history": ["1"],
        "loaded": true,
        "next_version": 3
    });
    aws.s3
        .put_object()
        .bucket(BUCKET)
        .key("models/models/digits/index.json")
        .body(ByteStream::from(index.to_string().into_bytes()))
        .send()
        .await
        .unwrap();
    let report = status(&aws, "airlock").await.unwrap();
    assert_eq!(report.endpoint, deployed.endpoint);
    assert_eq!(report.live_version.as_deref(), Some("1"));
    assert_eq!(
        report.routes.len(),
        PUBLIC_ROUTES.len() + ADMIN_ROUTES.len()
    );
    assert_eq!(report.models.len(), 1);
    assert_eq!(report.models[0].name, "digits");
    assert_eq!(report.models[0].active.as_deref(), Some("2"));
    assert_eq!(report.models[0].versions, 2);
    let text = report.to_string();
    assert!(
        text.contains("digits: active version 2, 2 version(s)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("endpoint: {}", deployed.endpoint.clone().unwrap())),
        "{text}"
    );

    // A broken index is reported, and does not hide the rest.
    aws.s3
        .put_object()
        .bucket(BUCKET)
        .key("models/models/broken/index.json")
        .body(ByteStream::from_static(b"not json"))
        .send()
        .await
        .unwrap();
    let report = status(&aws, "airlock").await.unwrap();
    assert_eq!(report.models.len(), 2);
    let text = report.to_string();
    assert!(text.contains("broken: unreadable index"), "{text}");
    assert!(text.contains("digits: active version 2"), "{text}");
}

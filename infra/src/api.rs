//! The HTTP API (API Gateway v2): a Lambda proxy integration (payload 2.0)
//! to the `live` alias, the Open Inference Protocol routes, the repository
//! routes behind IAM authorization, and the `$default` stage.

use std::collections::HashMap;

use anyhow::{Context as _, bail};
use aws_sdk_apigatewayv2::operation::get_stage::GetStageOutput;
use aws_sdk_apigatewayv2::types::{
    AccessLogSettings, Api, AuthorizationType, Integration, IntegrationType, ProtocolType, Route,
    RouteSettings,
};

use crate::aws::{Aws, AwsResultExt as _, failed, found};
use crate::names::{Names, STACK_TAG, STAGE};
use crate::report::Change;

/// Routes anyone may call (the inference API and operations).
pub const PUBLIC_ROUTES: [&str; 10] = [
    "GET /v2",
    "GET /v2/health/live",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/ready",
    "GET /v2/models/{name}/versions/{version}/ready",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "GET /metrics",
];

/// Routes that change what is served: SigV4-signed requests only
/// (`AWS_IAM`), by principals allowed `execute-api:Invoke` on them.
pub const ADMIN_ROUTES: [&str; 4] = [
    "POST /v2/repository/index",
    "POST /v2/repository/models/{name}/load",
    "POST /v2/repository/models/{name}/unload",
    "ANY /v2/repository/{proxy+}",
];

/// The access-log line: who called what and how it went; never a payload.
pub const ACCESS_LOG_FORMAT: &str = concat!(
    r#"{"requestId":"$context.requestId","ip":"$context.identity.sourceIp","#,
    r#""caller":"$context.identity.userArn","requestTime":"$context.requestTime","#,
    r#""routeKey":"$context.routeKey","status":"$context.status","#,
    r#""protocol":"$context.protocol","responseLength":"$context.responseLength","#,
    r#""integrationLatency":"$context.integrationLatency","#,
    r#""integrationError":"$context.integrationErrorMessage"}"#
);

/// API Gateway's own limit on an integration's timeout.
pub const MAX_INTEGRATION_TIMEOUT_MS: i32 = 30_000;

/// Every route with the authorization it needs.
pub fn routes() -> Vec<(&'static str, AuthorizationType)> {
    PUBLIC_ROUTES
        .iter()
        .map(|r| (*r, AuthorizationType::None))
        .chain(ADMIN_ROUTES.iter().map(|r| (*r, AuthorizationType::AwsIam)))
        .collect()
}

/// The stack's API: the one named after the stack and tagged with it.
pub(crate) async fn find(aws: &Aws, names: &Names) -> anyhow::Result<Option<Api>> {
    let mut next: Option<String> = None;
    let mut ours = Vec::new();
    loop {
        let page = aws
            .apigw
            .get_apis()
            .set_next_token(next.take())
            .send()
            .await
            .aws(|| failed("list the HTTP APIs to find", &names.api))?;
        ours.extend(
            page.items()
                .iter()
                .filter(|api| is_ours(api, names))
                .cloned(),
        );
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => break,
        }
    }
    if ours.len() > 1 {
        let ids: Vec<_> = ours.iter().filter_map(|a| a.api_id()).collect();
        bail!(
            "several HTTP APIs are named {:?} and tagged {STACK_TAG}={}: {}; delete the extra ones",
            names.api,
            names.stack,
            ids.join(", ")
        );
    }
    Ok(ours.pop())
}

fn is_ours(api: &Api, names: &Names) -> bool {
    api.name() == Some(names.api.as_str())
        && api.protocol_type() == Some(&ProtocolType::Http)
        && api
            .tags()
            .and_then(|t| t.get(STACK_TAG))
            .is_some_and(|s| *s == names.stack)
}

/// What the API step found or made.
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiState {
    pub(crate) id: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) execute_api_disabled: bool,
}

/// Creates the API or brings its tags in line.
pub(crate) async fn ensure(
    aws: &Aws,
    names: &Names,
    dry_run: bool,
) -> anyhow::Result<(Change, ApiState)> {
    if let Some(api) = find(aws, names).await? {
        let id = api.api_id().context("an API without an id")?.to_owned();
        let state = ApiState {
            endpoint: Some(
                api.api_endpoint()
                    .map_or_else(|| names.execute_api_endpoint(&id), str::to_owned),
            ),
            execute_api_disabled: api.disable_execute_api_endpoint() == Some(true),
            id: Some(id.clone()),
        };
        let tags = api.tags().cloned().unwrap_or_default();
        let change = tag_if_missing(aws, names, &names.api_arn(&id), &tags, dry_run).await?;
        return Ok((change, state));
    }
    if dry_run {
        return Ok((Change::Created, ApiState::default()));
    }
    let mut create = aws
        .apigw
        .create_api()
        .name(&names.api)
        .protocol_type(ProtocolType::Http)
        .description(format!("Airlock inference ({} stack)", names.stack));
    for (key, value) in names.tags() {
        create = create.tags(key, value);
    }
    let api = create
        .send()
        .await
        .aws(|| failed("create HTTP API", &names.api))?;
    let id = api
        .api_id()
        .context("apigateway:CreateApi returned no id")?
        .to_owned();
    let state = ApiState {
        endpoint: Some(
            api.api_endpoint()
                .map_or_else(|| names.execute_api_endpoint(&id), str::to_owned),
        ),
        execute_api_disabled: api.disable_execute_api_endpoint() == Some(true),
        id: Some(id),
    };
    Ok((Change::Created, state))
}

/// Adds the stack's tags that `current` lacks to `arn`.
async fn tag_if_missing(
    aws: &Aws,
    names: &Names,
    arn: &str,
    current: &HashMap<String, String>,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let missing: Vec<_> = names
        .tags()
        .into_iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .collect();
    if missing.is_empty() {
        return Ok(Change::Unchanged);
    }
    if !dry_run {
        let mut tag = aws.apigw.tag_resource().resource_arn(arn);
        for (key, value) in missing {
            tag = tag.tags(key, value);
        }
        tag.send().await.aws(|| failed("tag", arn))?;
    }
    Ok(Change::updated("tags"))
}

/// The Lambda proxy integration to the `live` alias.
pub(crate) async fn ensure_integration(
    aws: &Aws,
    names: &Names,
    api_id: Option<&str>,
    timeout_ms: i32,
    dry_run: bool,
) -> anyhow::Result<(Change, Option<String>)> {
    let Some(api_id) = api_id else {
        return Ok((Change::Created, None));
    };
    let uri = names.alias_arn();
    let integrations = integrations(aws, api_id).await?;
    // Ours is the one that targets the alias; failing that, any Lambda proxy
    // integration (left by an earlier, differently configured deploy).
    let current = integrations
        .iter()
        .find(|i| i.integration_uri() == Some(uri.as_str()))
        .or_else(|| {
            integrations
                .iter()
                .find(|i| i.integration_type() == Some(&IntegrationType::AwsProxy))
        });
    let Some(current) = current else {
        if dry_run {
            return Ok((Change::Created, None));
        }
        let created = aws
            .apigw
            .create_integration()
            .api_id(api_id)
            .description(format!("the {} function's live alias", names.function))
            .integration_type(IntegrationType::AwsProxy)
            .integration_uri(&uri)
            .payload_format_version("2.0")
            .timeout_in_millis(timeout_ms)
            .send()
            .await
            .aws(|| failed("create the Lambda integration of API", api_id))?;
        let id = created
            .integration_id()
            .context("apigateway:CreateIntegration returned no id")?;
        return Ok((Change::Created, Some(id.to_owned())));
    };
    let id = current
        .integration_id()
        .context("an integration without an id")?
        .to_owned();
    let mut updates = Vec::new();
    if current.integration_type() != Some(&IntegrationType::AwsProxy) {
        updates.push("type".to_owned());
    }
    if current.integration_uri() != Some(uri.as_str()) {
        updates.push("target".to_owned());
    }
    if current.payload_format_version() != Some("2.0") {
        updates.push("payload format".to_owned());
    }
    if current.timeout_in_millis() != Some(timeout_ms) {
        updates.push("timeout".to_owned());
    }
    if !updates.is_empty() && !dry_run {
        aws.apigw
            .update_integration()
            .api_id(api_id)
            .integration_id(&id)
            .integration_type(IntegrationType::AwsProxy)
            .integration_uri(&uri)
            .payload_format_version("2.0")
            .timeout_in_millis(timeout_ms)
            .send()
            .await
            .aws(|| failed("update the Lambda integration of API", api_id))?;
    }
    Ok((Change::from_updates(updates), Some(id)))
}

/// The API's integrations.
pub(crate) async fn integrations(aws: &Aws, api_id: &str) -> anyhow::Result<Vec<Integration>> {
    let mut next: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let page = aws
            .apigw
            .get_integrations()
            .api_id(api_id)
            .set_next_token(next.take())
            .send()
            .await
            .aws(|| failed("list the integrations of API", api_id))?;
        all.extend(page.items().iter().cloned());
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// The API's routes.
pub(crate) async fn list_routes(aws: &Aws, api_id: &str) -> anyhow::Result<Vec<Route>> {
    let mut next: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let page = aws
            .apigw
            .get_routes()
            .api_id(api_id)
            .set_next_token(next.take())
            .send()
            .await
            .aws(|| failed("list the routes of API", api_id))?;
        all.extend(page.items().iter().cloned());
        match page.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_owned()),
            _ => return Ok(all),
        }
    }
}

/// Exactly the routes of [`routes`], each to the integration with its
/// authorization; routes the API has beyond those are deleted.
pub(crate) async fn ensure_routes(
    aws: &Aws,
    api_id: Option<&str>,
    integration_id: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let (Some(api_id), Some(integration_id)) = (api_id, integration_id) else {
        return Ok(Change::Created);
    };
    let target = format!("integrations/{integration_id}");
    let current = list_routes(aws, api_id).await?;
    let wanted = routes();
    let mut updates = Vec::new();
    let mut created = 0;
    for (key, authorization) in &wanted {
        match current.iter().find(|r| r.route_key() == Some(key)) {
            None => {
                created += 1;
                updates.push(format!("+{key}"));
                if !dry_run {
                    aws.apigw
                        .create_route()
                        .api_id(api_id)
                        .route_key(*key)
                        .target(&target)
                        .authorization_type(authorization.clone())
                        .send()
                        .await
                        .aws(|| failed("create route", key))?;
                }
            }
            Some(route)
                if route.target() != Some(target.as_str())
                    || route
                        .authorization_type()
                        .unwrap_or(&AuthorizationType::None)
                        != authorization =>
            {
                updates.push(format!("~{key}"));
                if !dry_run {
                    let id = route.route_id().context("a route without an id")?;
                    aws.apigw
                        .update_route()
                        .api_id(api_id)
                        .route_id(id)
                        .target(&target)
                        .authorization_type(authorization.clone())
                        .send()
                        .await
                        .aws(|| failed("update route", key))?;
                }
            }
            Some(_) => {}
        }
    }
    for route in &current {
        let key = route.route_key().unwrap_or_default();
        if wanted.iter().any(|(k, _)| *k == key) {
            continue;
        }
        updates.push(format!("-{key}"));
        if !dry_run {
            let id = route.route_id().context("a route without an id")?;
            aws.apigw
                .delete_route()
                .api_id(api_id)
                .route_id(id)
                .send()
                .await
                .aws(|| failed("delete route", key))?;
        }
    }
    if created == wanted.len() && current.is_empty() {
        return Ok(Change::Created);
    }
    Ok(Change::from_updates(updates))
}

/// Settings of the `$default` stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StageSpec {
    pub(crate) throttle_rate: f64,
    pub(crate) throttle_burst: i32,
}

/// The `$default` stage: auto-deploy, throttling, access logs, tags.
pub(crate) async fn ensure_stage(
    aws: &Aws,
    names: &Names,
    api_id: Option<&str>,
    spec: StageSpec,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let Some(api_id) = api_id else {
        return Ok(Change::Created);
    };
    let throttling = RouteSettings::builder()
        .throttling_rate_limit(spec.throttle_rate)
        .throttling_burst_limit(spec.throttle_burst)
        .build();
    let access_logs = AccessLogSettings::builder()
        .destination_arn(names.log_group_arn(&names.access_log_group))
        .format(ACCESS_LOG_FORMAT)
        .build();
    let Some(stage) = get_stage(aws, api_id).await? else {
        if !dry_run {
            let mut create = aws
                .apigw
                .create_stage()
                .api_id(api_id)
                .stage_name(STAGE)
                .auto_deploy(true)
                .default_route_settings(throttling)
                .access_log_settings(access_logs);
            for (key, value) in names.tags() {
                create = create.tags(key, value);
            }
            create
                .send()
                .await
                .aws(|| failed("create the $default stage of API", api_id))?;
        }
        return Ok(Change::Created);
    };
    let mut updates = Vec::new();
    if stage.auto_deploy() != Some(true) {
        updates.push("auto-deploy".to_owned());
    }
    let current = stage.default_route_settings();
    let rate_ok = current
        .and_then(RouteSettings::throttling_rate_limit)
        .is_some_and(|r| (r - spec.throttle_rate).abs() < 1e-9);
    let burst_ok =
        current.and_then(RouteSettings::throttling_burst_limit) == Some(spec.throttle_burst);
    if !(rate_ok && burst_ok) {
        updates.push("throttling".to_owned());
    }
    let logs = stage.access_log_settings();
    if logs.and_then(AccessLogSettings::destination_arn)
        != Some(names.log_group_arn(&names.access_log_group).as_str())
        || logs.and_then(AccessLogSettings::format) != Some(ACCESS_LOG_FORMAT)
    {
        updates.push("access logs".to_owned());
    }
    if !updates.is_empty() && !dry_run {
        aws.apigw
            .update_stage()
            .api_id(api_id)
            .stage_name(STAGE)
            .auto_deploy(true)
            .default_route_settings(throttling)
            .access_log_settings(access_logs)
            .send()
            .await
            .aws(|| failed("update the $default stage of API", api_id))?;
    }
    let tags = stage.tags().cloned().unwrap_or_default();
    if tag_if_missing(aws, names, &names.stage_arn(api_id), &tags, dry_run)
        .await?
        .is_change()
    {
        updates.push("tags".to_owned());
    }
    Ok(Change::from_updates(updates))
}

/// The `$default` stage, if it exists.
pub(crate) async fn get_stage(aws: &Aws, api_id: &str) -> anyhow::Result<Option<GetStageOutput>> {
    let stage = found(
        aws.apigw
            .get_stage()
            .api_id(api_id)
            .stage_name(STAGE)
            .send()
            .await,
        &["NotFoundException"],
    )
    .aws(|| failed("get the $default stage of API", api_id))?;
    Ok(stage)
}

/// Turns the default `execute-api` endpoint off (when a custom domain
/// serves the API) or on.
pub(crate) async fn ensure_execute_api_endpoint(
    aws: &Aws,
    api: &ApiState,
    disabled: bool,
    dry_run: bool,
) -> anyhow::Result<Change> {
    let Some(api_id) = &api.id else {
        return Ok(if disabled {
            Change::updated("disabled")
        } else {
            Change::Unchanged
        });
    };
    if api.execute_api_disabled == disabled {
        return Ok(Change::Unchanged);
    }
    if !dry_run {
        aws.apigw
            .update_api()
            .api_id(api_id)
            .disable_execute_api_endpoint(disabled)
            .send()
            .await
            .aws(|| failed("switch the execute-api endpoint of API", api_id))?;
    }
    Ok(Change::updated(if disabled {
        "disabled"
    } else {
        "enabled"
    }))
}

/// Deletes the API with its routes, integration and stage.
pub(crate) async fn delete(
    aws: &Aws,
    names: &Names,
    dry_run: bool,
) -> anyhow::Result<(Change, String)> {
    let Some(api) = find(aws, names).await? else {
        return Ok((Change::Absent, names.api.clone()));
    };
    let id = api.api_id().context("an API without an id")?.to_owned();
    if !dry_run {
        aws.apigw
            .delete_api()
            .api_id(&id)
            .send()
            .await
            .aws(|| failed("delete HTTP API", &id))?;
    }
    Ok((Change::Deleted, format!("{} ({id})", names.api)))
}

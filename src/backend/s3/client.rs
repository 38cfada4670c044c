//! Building the S3 client: region, credentials (the AWS sources or the `[s3]` table),
//! timeouts, retries, checksum policy and an optional private CA bundle.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{Credentials, RequestChecksumCalculation, ResponseChecksumValidation};

use super::settings::Tuning;
use super::{BackendError, MAX_ATTEMPTS, READ_TIMEOUT, S3Backend, S3Settings};

/// Region used when no source names one.
const DEFAULT_REGION: &str = "us-east-1";
/// A server that does not accept a connection within this is treated as down (retried).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl S3Backend {
    /// Loads the AWS settings and builds the client. Runs on a small runtime of its own,
    /// so callers stay synchronous; requests later run on the repository's runtime.
    pub fn new(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
    ) -> Result<S3Backend, BackendError> {
        let tuning = settings.tuning()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Other(format!("cannot start a runtime for S3: {e}")))?;
        rt.block_on(Self::build(bucket, prefix, settings, tuning))
    }

    async fn build(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
        tuning: Tuning,
    ) -> Result<S3Backend, BackendError> {
        // Environment and profile files only: the instance-metadata lookup of the default
        // region chain would stall for seconds on a host that is not a cloud VM.
        let region =
            RegionProviderChain::first_try(settings.region.clone().map(aws_config::Region::new))
                .or_else(aws_config::environment::region::EnvironmentVariableRegionProvider::new())
                .or_else(aws_config::profile::ProfileFileRegionProvider::new())
                .or_else(DEFAULT_REGION);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .read_timeout(READ_TIMEOUT)
                    .build(),
            );
        if let Some(p) = &settings.profile {
            loader = loader.profile_name(p);
        }
        if let Some(e) = &settings.endpoint {
            loader = loader.endpoint_url(e);
        }
        match (&settings.access_key_id, &settings.secret_access_key_file) {
            (Some(id), Some(file)) => {
                let secret = crate::secrets::read_secret_file(file, "S3 secret access key file")
                    .map_err(|e| BackendError::Other(e.to_string()))?;
                let secret = String::from_utf8(secret).map_err(|_| {
                    BackendError::Other(format!(
                        "S3 secret access key file {} is not text",
                        file.display()
                    ))
                })?;
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "volguard config",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(BackendError::Other(
                    "config [s3]: access_key_id and secret_access_key_file go together; set both or neither".into(),
                ));
            }
        }
        if let Some(ca) = &settings.ca_bundle {
            loader = loader.http_client(http_client_trusting(ca)?);
        }
        let shared = loader.load().await;
        let custom_endpoint = shared.endpoint_url().map(str::to_string);
        let path_style = settings.path_style.unwrap_or(custom_endpoint.is_some());
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .build();
        let endpoint = custom_endpoint.unwrap_or_else(|| {
            let r = shared
                .region()
                .map(|r| r.to_string())
                .unwrap_or_else(|| DEFAULT_REGION.into());
            format!("AWS S3 ({r})")
        });
        Ok(S3Backend {
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            tuning,
        })
    }
}

/// An HTTPS client that trusts the system roots plus the certificates of a PEM file.
fn http_client_trusting(
    ca: &std::path::Path,
) -> Result<aws_sdk_s3::config::SharedHttpClient, BackendError> {
    use aws_smithy_http_client::tls;
    let pem = std::fs::read(ca).map_err(|e| {
        BackendError::Other(format!(
            "cannot read the CA bundle {} named by ca_bundle in the [s3] config table: {e}",
            ca.display()
        ))
    })?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(BackendError::Other(format!(
            "the CA bundle {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ca.display()
        )));
    }
    let ctx = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(pem))
        .build()
        .map_err(|e| BackendError::Other(format!("CA bundle {}: {e}", ca.display())))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(ctx)
        .build_https())
}

//! What an S3 failure says: one line naming the operation, the object, the endpoint and
//! the server's answer, and the probe that tells the common set-up mistakes apart.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::{Backend, BackendError, Kind, MAX_ATTEMPTS, READ_TIMEOUT, S3Backend};
use crate::error::S3Refusal;

/// Error codes by which an S3 server refuses a request for its credentials or their
/// permissions (AWS's, and what SeaweedFS, Garage and MinIO answer).
const DENIED: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
];

impl S3Backend {
    /// One line: operation, object, endpoint, service error code, message, HTTP status.
    pub(super) fn fail<E>(&self, op: &str, key: &str, err: &SdkError<E>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let what = match (err.code(), err.message()) {
            (Some(code), Some(msg)) if !msg.is_empty() => format!("{code}: {msg}"),
            (Some(code), _) => code.to_string(),
            _ => match (status, err) {
                // HEAD responses carry no body, so no code: name the usual ones.
                (Some(403), _) => "AccessDenied (a HEAD answer carries no error code: wrong credentials or no permission)".to_string(),
                (Some(404), _) => "NotFound (a HEAD answer carries no error code)".to_string(),
                (_, SdkError::DispatchFailure(d)) => {
                    let cause = d
                        .as_connector_error()
                        .map(|c| root_cause(c))
                        .unwrap_or_else(|| one_line(&DisplayErrorContext(err).to_string()));
                    let hint = if cause.contains("certificate") {
                        "the server's TLS certificate is not trusted: put the CA certificate that signed it in a PEM file and name that file as ca_bundle in the [s3] config table"
                    } else {
                        "is it running, and is the endpoint right?"
                    };
                    format!("cannot reach the server ({cause}) after {MAX_ATTEMPTS} attempts; {hint}")
                }
                (_, SdkError::TimeoutError(_)) => format!(
                    "no answer within {}s after {MAX_ATTEMPTS} attempts; the server is overloaded or hung",
                    READ_TIMEOUT.as_secs()
                ),
                _ => one_line(&DisplayErrorContext(err).to_string()),
            },
        };
        let denied = status == Some(403) || err.code().is_some_and(|c| DENIED.contains(&c));
        let status = status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
        let object = format!("s3://{}/{key}", self.bucket);
        if denied {
            return BackendError::Denied(S3Refusal {
                op: op.to_string(),
                object,
                endpoint: self.endpoint.clone(),
                answer: format!("{what}{status}"),
            });
        }
        BackendError::Other(format!(
            "S3 {op} of {object} at {} failed: {what}{status}",
            self.endpoint
        ))
    }

    pub(super) fn not_found(&self, kind: Kind, name: &str) -> BackendError {
        BackendError::NotFound {
            kind,
            name: name.to_string(),
            location: self.location(),
        }
    }

    /// One cheap request that tells the common set-up mistakes apart before any real
    /// work: missing bucket, wrong credentials, wrong region, an endpoint that is not S3.
    pub(super) async fn probe(&self) -> Result<(), BackendError> {
        let prefix = self.with_prefix("");
        let err = match self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .max_keys(1)
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let status = err.raw_response().map(|r| r.status().as_u16());
        let what = match (err.code(), &err) {
            (Some("NoSuchBucket"), _) => format!(
                "bucket {:?} does not exist at {} (NoSuchBucket); create it first, volguard does not create buckets",
                self.bucket, self.endpoint
            ),
            (
                Some(
                    code @ ("AuthorizationHeaderMalformed"
                    | "PermanentRedirect"
                    | "IllegalLocationConstraintException"),
                ),
                _,
            ) => format!(
                "bucket {:?} at {} is in another region than the configured {:?} ({code}: {}); set AWS_REGION or region in the [s3] config table",
                self.bucket,
                self.endpoint,
                self.client
                    .config()
                    .region()
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                err.message().unwrap_or("")
            ),
            (Some(_), _) => return Err(self.fail("ListObjectsV2", &prefix, &err)),
            // An answer that parses as no S3 error at all: a web server, a proxy's login
            // page, the S3 console URL instead of the API endpoint.
            (None, SdkError::ServiceError(_) | SdkError::ResponseError(_)) => format!(
                "{} answered ListObjectsV2 with something that is not an S3 response{}; check the endpoint URL (AWS_ENDPOINT_URL or endpoint in the [s3] config table)",
                self.endpoint,
                status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
            ),
            (None, _) => return Err(self.fail("ListObjectsV2", &prefix, &err)),
        };
        Err(BackendError::Other(what))
    }
}

/// A missing object (not a missing bucket, which must be reported as such).
pub(super) fn is_missing_object<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err.code() {
        Some("NoSuchKey") | Some("NotFound") => true,
        Some(_) => false,
        None => status == Some(404),
    }
}

/// The innermost cause of an error chain ("Connection refused (os error 111)"), which is
/// the part a person can act on; the wrappers above it only say which layer saw it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}

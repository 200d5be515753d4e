//! When a service-account key that a rotation drops can no longer be in use.
//!
//! Every apiserver verifies tokens with each public key in `sa.pub`; taking
//! a key out breaks every token it signed that is still presented. rampart
//! drops one (`drop-old`, or `forget-new` in a rollback once the new key
//! has signed) only when both hold:
//!
//! 1. **Bound tokens have expired.** TokenRequest and projected-volume
//!    tokens never outlive `--service-account-max-token-expiration`
//!    (`security.serviceAccountTokenMaxHours`: the apiserver shortens longer
//!    requests to it, and `--service-account-extend-token-expiration=false`
//!    keeps it from stretching them to a year). The dropped key stopped
//!    signing when the previous step's rollout finished on every host
//!    ([`Rotation::settled_at`], the admin machine's clock), so that long
//!    after it, plus [`SKEW`] for the hosts' clocks, no token it signed is
//!    valid any more.
//! 2. **No legacy token carries it.** Tokens kept in Secrets of type
//!    `kubernetes.io/service-account-token` never expire. A control-plane
//!    host lists them with kubectl and hands back only each token's JWT
//!    header (`{"alg":…,"kid":…}`, not secret); a `kid` that names the
//!    dropped key stops the step, naming the Secrets.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::engine::{step, Env};
use crate::inventory::Inventory;
use crate::pki::rotation::{Rotated, Rotation, Stage};
use crate::remote::script::quote;
use crate::remote::Input;
use crate::rotate::Step;

use super::{RotateError, RotateRun};

/// Allowance for the hosts' clocks running behind the admin machine's.
pub const SKEW: Duration = Duration::minutes(5);

/// What a step waits for before it drops a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// It drops no key that signed tokens.
    Nothing,
    /// The previous step's rollout has not finished, so the wait has not
    /// started (the previous step runs again first).
    Unsettled,
    /// Until every bound token the key signed has expired.
    Until(OffsetDateTime),
}

/// What `step` waits for, given the state dir's record of the rotation.
pub fn wait(step: Step, marker: Option<&Rotation>, max_hours: u32) -> Wait {
    let Some(m) = marker else {
        return Wait::Nothing;
    };
    let signed = match step {
        // The old key signed until `reissue` was rolled out.
        Step::DropOld => m.stage == Stage::Reissue,
        // The new key signed only if the rotation got to `reissue`.
        Step::ForgetNew => m.stage == Stage::AddNew && m.furthest >= Stage::Reissue,
        _ => false,
    };
    if !signed {
        return Wait::Nothing;
    }
    match m
        .settled_at
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
    {
        Some(t) => Wait::Until(t + Duration::hours(i64::from(max_hours)) + SKEW),
        None => Wait::Unsettled,
    }
}

/// The `kid` the apiserver gives tokens signed with the key whose public
/// half is `public_pem`: base64url (no padding) of the SHA-256 of its DER
/// SubjectPublicKeyInfo.
pub fn key_id(public_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(public_pem.as_bytes()).ok()?;
    (pem.label == "PUBLIC KEY").then(|| URL_SAFE_NO_PAD.encode(Sha256::digest(&pem.contents)))
}

/// Lists every service-account-token Secret as `<namespace>/<name>
/// <JWT header segment>` (the header only: the token never leaves the host).
pub fn legacy_tokens_script(inv: &Inventory) -> String {
    let kubectl = format!("{}/kubectl", inv.binaries.dir.trim_end_matches('/'));
    // kubectl's own failure must fail the script (sh has no pipefail).
    format!(
        "list=$({} --kubeconfig /etc/kubernetes/admin.conf get secrets --all-namespaces \
         --field-selector type=kubernetes.io/service-account-token -o {}) || exit $?\n\
         printf '%s\\n' \"$list\" | while read -r name token; do\n\
         \x20 [ -n \"$token\" ] || continue\n\
         \x20 printf '%s %s\\n' \"$name\" \"$(printf '%s' \"$token\" | base64 -d | cut -d. -f1)\"\n\
         done\n",
        quote(&kubectl),
        quote(
            r#"go-template={{range .items}}{{.metadata.namespace}}/{{.metadata.name}} {{index .data "token"}}{{"\n"}}{{end}}"#
        )
    )
}

/// The Secrets in `listing` (from [`legacy_tokens_script`]) whose token
/// `kid` is `kid`.
pub fn signed_with(listing: &str, kid: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, header)| header_kid(header).as_deref() == Some(kid))
        .map(|(name, _)| name.to_string())
        .collect()
}

fn header_kid(segment: &str) -> Option<String> {
    let segment = segment.trim();
    let json = URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(segment))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    v.get("kid")?.as_str().map(str::to_string)
}

/// `t` as RFC 3339 (UTC), for messages and plans.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Refuses `step` while a token the key it drops signed may still be in
/// use (see the module doc); a no-op for steps that drop no signing key.
pub(super) async fn gate(
    env: &Env<'_>,
    s: &RotateRun<'_>,
    the: Step,
    now: OffsetDateTime,
) -> Result<(), RotateError> {
    if s.what != Rotated::ServiceAccountKey {
        return Ok(());
    }
    let hours = env.inv.security.service_account_token_max_hours;
    let reason = match wait(the, s.own_marker(), hours) {
        Wait::Nothing => return Ok(()),
        Wait::Until(t) if t <= now => None,
        Wait::Until(t) => Some(format!(
            "a token the key signed may be valid until {} (security.serviceAccountTokenMaxHours: {hours}, plus {} minutes for clock skew)",
            rfc3339(t),
            SKEW.whole_minutes()
        )),
        Wait::Unsettled => Some("the previous step's rollout has not finished on every host".into()),
    };
    if let Some(reason) = reason {
        return Err(RotateError::TokensLive {
            step: the.name(),
            reason,
        });
    }
    let public =
        crate::pki::key_views::service_account_public(&s.rollout.dir, the == Step::ForgetNew)?;
    let Some(kid) = public.as_deref().and_then(key_id) else {
        return Ok(());
    };
    let host = s
        .first_with(|r| r.control_plane)
        .ok_or_else(|| RotateError::TokensLive {
            step: the.name(),
            reason: "no control-plane host is reachable to list legacy token Secrets".into(),
        })?;
    let listing = step(
        env,
        host,
        "list legacy tokens",
        &legacy_tokens_script(env.inv),
        Input::None,
    )
    .await
    .map_err(|e| RotateError::TokensLive {
        step: the.name(),
        reason: format!("cannot list the legacy token Secrets: {e}"),
    })?;
    let held = signed_with(&String::from_utf8_lossy(&listing.stdout), &kid);
    if !held.is_empty() {
        return Err(RotateError::TokensLive {
            step: the.name(),
            reason: format!(
                "these Secrets hold tokens the key signed, and such tokens never expire: {}; delete and re-create each (the token controller signs the new one with the current key) and tell its users",
                held.join(", ")
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(stage: Stage, furthest: Stage, settled: Option<i64>) -> Rotation {
        Rotation {
            id: "20261202T100000Z".into(),
            stage,
            furthest,
            settled_at: settled,
        }
    }

    /// The wait counts from when the dropped key last signed anywhere.
    #[test]
    fn a_key_is_dropped_only_after_its_tokens_expired() {
        let t0 = 1_800_000_000;
        let at = |h: i64| {
            Wait::Until(
                OffsetDateTime::from_unix_timestamp(t0).unwrap() + Duration::hours(h) + SKEW,
            )
        };
        let m = marker(Stage::Reissue, Stage::Reissue, Some(t0));
        assert_eq!(wait(Step::DropOld, Some(&m), 24), at(24));
        assert_eq!(wait(Step::DropOld, Some(&m), 1), at(1));
        let m = marker(Stage::Reissue, Stage::Reissue, None);
        assert_eq!(wait(Step::DropOld, Some(&m), 24), Wait::Unsettled);
        // A rollback that never let the new key sign drops it at once.
        let m = marker(Stage::AddNew, Stage::AddNew, Some(t0));
        assert_eq!(wait(Step::ForgetNew, Some(&m), 24), Wait::Nothing);
        let m = marker(Stage::AddNew, Stage::DropOld, Some(t0));
        assert_eq!(wait(Step::ForgetNew, Some(&m), 24), at(24));
        assert_eq!(wait(Step::Reissue, Some(&m), 24), Wait::Nothing);
        assert_eq!(wait(Step::DropOld, None, 24), Wait::Nothing);
    }

    #[test]
    fn legacy_tokens_are_matched_by_the_kid_in_their_header() {
        let header =
            |kid: &str| URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#));
        let listing = format!(
            "default/build-bot {}\nkube-system/old {}\nbroken/x not-base64!\nlonely\n",
            header("new-kid"),
            header("old-kid")
        );
        assert_eq!(signed_with(&listing, "old-kid"), ["kube-system/old"]);
        assert!(signed_with(&listing, "gone").is_empty());
    }

    /// The listing runs under sh against a stand-in kubectl printing what
    /// the go-template prints: only each token's header comes back, and
    /// kubectl's failure fails the script.
    #[test]
    fn the_listing_keeps_tokens_on_the_host() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inv = crate::inventory::one_host(Some(dir.path()));
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1"}"#);
        let jwt = format!("{header}.eyJzdWIiOiJzZWNyZXQifQ.c2lnbmF0dXJl");
        let run = |body: &str| {
            let kubectl = dir.path().join("kubectl");
            std::fs::write(&kubectl, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(legacy_tokens_script(&inv))
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let listing = format!("printf 'ci/bot {}\\nci/empty \\n'", STANDARD.encode(&jwt));
        let (code, out) = run(&listing);
        assert_eq!(code, Some(0));
        assert_eq!(out, format!("ci/bot {header}\n"));
        assert!(!out.contains("c2lnbmF0dXJl"));
        assert_eq!(signed_with(&out, "k1"), ["ci/bot"]);
        assert_eq!(run("echo 'connection refused' >&2; exit 1").0, Some(1));
    }

    /// The apiserver's kid, as openssl computes it from the same public key.
    #[test]
    fn the_key_id_is_the_apiservers() {
        let (_, public) =
            crate::pki::issue::service_account_key(crate::inventory::KeyAlgorithm::EcdsaP256)
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.pub");
        std::fs::write(&path, &public).unwrap();
        let sh = format!(
            "openssl pkey -pubin -in {} -outform DER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='",
            path.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(sh)
            .output()
            .unwrap();
        let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            want.len(),
            43,
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(key_id(&public).as_deref(), Some(want.as_str()));
        assert_eq!(key_id("not a key"), None);
    }
}

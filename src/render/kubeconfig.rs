//! Kubeconfig files with embedded credentials (`*-data` fields), as kubeadm writes them.
//!
//! The result holds a private key, so it is a [`Secret`] from the moment it exists.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::pki::Issued;
use crate::secret::Secret;

#[derive(Serialize)]
struct Config<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [NamedCluster<'a>; 1],
    contexts: [NamedContext<'a>; 1],
    #[serde(rename = "current-context")]
    current_context: &'a str,
    preferences: Preferences,
    users: [NamedUser<'a>; 1],
}

#[derive(Serialize)]
struct Preferences {}

#[derive(Serialize)]
struct NamedCluster<'a> {
    name: &'a str,
    cluster: ClusterEntry<'a>,
}

#[derive(Serialize)]
struct ClusterEntry<'a> {
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
    server: &'a str,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: &'a str,
    context: ContextEntry<'a>,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: UserEntry<'a>,
}

#[derive(Serialize)]
struct UserEntry<'a> {
    #[serde(rename = "client-certificate-data")]
    client_certificate_data: String,
    #[serde(rename = "client-key-data")]
    client_key_data: &'a str,
}

/// A kubeconfig for `user` (a label, e.g. `system:node:w1`) talking to `server`
/// of cluster `cluster`, trusting `ca_pem` and authenticating with `cred`.
pub fn kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cred: &Issued,
) -> Result<Secret, serde_yaml::Error> {
    // The encoded key is as sensitive as the key: wiped when dropped.
    let key_data = Zeroizing::new(STANDARD.encode(cred.key_pem.expose()));
    let context = format!("{user}@{cluster}");
    let config = Config {
        api_version: "v1",
        kind: "Config",
        clusters: [NamedCluster {
            name: cluster,
            cluster: ClusterEntry {
                certificate_authority_data: STANDARD.encode(ca_pem),
                server,
            },
        }],
        contexts: [NamedContext {
            name: &context,
            context: ContextEntry { cluster, user },
        }],
        current_context: &context,
        preferences: Preferences {},
        users: [NamedUser {
            name: user,
            user: UserEntry {
                client_certificate_data: STANDARD.encode(&cred.cert_pem),
                client_key_data: &key_data,
            },
        }],
    };
    serde_yaml::to_string(&config).map(Secret::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_base64_credentials_and_a_matching_context() {
        let cred = Issued {
            cert_pem: "CERT".into(),
            key_pem: Secret::from("KEY".to_string()),
        };
        let out = kubeconfig("demo", "https://10.0.0.1:6443", "CA", "admin", &cred).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_slice(out.expose()).unwrap();
        assert_eq!(v["current-context"], "admin@demo");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "demo");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            STANDARD.encode("CA")
        );
        assert_eq!(
            v["users"][0]["user"]["client-certificate-data"],
            STANDARD.encode("CERT")
        );
        assert_eq!(
            v["users"][0]["user"]["client-key-data"],
            STANDARD.encode("KEY")
        );
    }
}

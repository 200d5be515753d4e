//! kubeconfig files with the CA, client certificate and key embedded (base64), the
//! way kubeadm writes admin.conf and friends: one cluster, one user, one context.

use base64::Engine;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::secret::Secret;

use super::Issued;

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Config<'a> {
    // The one camelCase key of a kubeconfig; the rest are kebab-case.
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [Named<'a, ClusterEntry>; 1],
    contexts: [Named<'a, ContextEntry<'a>>; 1],
    current_context: &'a str,
    users: [Named<'a, UserEntry<'a>>; 1],
    preferences: serde_yaml::Mapping,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct ClusterEntry {
    cluster: ClusterData,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterData {
    certificate_authority_data: String,
    server: String,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    context: ContextData<'a>,
}

#[derive(Serialize)]
struct ContextData<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct UserEntry<'a> {
    user: UserData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserData<'a> {
    client_certificate_data: String,
    client_key_data: &'a str,
}

/// A kubeconfig for `user_name` at `server_url`, trusting `ca_pem`, authenticating
/// with `client`'s certificate and key. Secret because it embeds the key.
pub fn kubeconfig(
    cluster_name: &str,
    server_url: &str,
    ca_pem: &str,
    user_name: &str,
    client: &Issued,
) -> Secret {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let key_b64 = Zeroizing::new(b64(client.key_pem.expose()));
    let context = format!("{user_name}@{cluster_name}");
    let config = Config {
        api_version: "v1",
        kind: "Config",
        clusters: [Named {
            name: cluster_name,
            value: ClusterEntry {
                cluster: ClusterData {
                    certificate_authority_data: b64(ca_pem.as_bytes()),
                    server: server_url.to_string(),
                },
            },
        }],
        contexts: [Named {
            name: &context,
            value: ContextEntry {
                context: ContextData {
                    cluster: cluster_name,
                    user: user_name,
                },
            },
        }],
        current_context: &context,
        users: [Named {
            name: user_name,
            value: UserEntry {
                user: UserData {
                    client_certificate_data: b64(client.cert_pem.as_bytes()),
                    client_key_data: &key_b64,
                },
            },
        }],
        preferences: serde_yaml::Mapping::new(),
    };
    // Plain structs of strings: serialisation cannot fail.
    Secret::from(serde_yaml::to_string(&config).expect("kubeconfig serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_everything_base64() {
        let issued = Issued {
            cert_pem: "CERT".into(),
            key_pem: Secret::from("KEY".to_string()),
        };
        let k = kubeconfig(
            "prod",
            "https://api:6443",
            "CA",
            "kubernetes-admin",
            &issued,
        );
        let v: serde_yaml::Value = serde_yaml::from_str(k.expose_str()).unwrap();
        assert_eq!(v["current-context"], "kubernetes-admin@prod");
        assert_eq!(
            v["apiVersion"], "v1",
            "kubectl reads `apiVersion`, not `api-version`"
        );
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://api:6443");
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            "Q0E="
        );
        assert_eq!(v["users"][0]["name"], "kubernetes-admin");
        assert_eq!(v["users"][0]["user"]["client-key-data"], "S0VZ");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "prod");
    }
}

//! The apiserver's EncryptionConfiguration: Secrets encrypted at rest.
//!
//! Built with serde rather than a template so the key passes through as few
//! copies as possible, and the whole file is a [`Secret`].

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::inventory::EncryptionProvider;
use crate::pki::EncryptionKey;
use crate::secret::Secret;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EncryptionConfiguration<'a> {
    api_version: &'static str,
    kind: &'static str,
    resources: [Resources<'a>; 1],
}

#[derive(Serialize)]
struct Resources<'a> {
    resources: [&'static str; 1],
    providers: [Provider<'a>; 2],
}

/// One provider entry: `{secretbox: {keys: …}}` or `{identity: {}}`. A struct of
/// options rather than an enum: serde_yaml 0.9 writes enum variants as YAML tags.
#[derive(Serialize, Default)]
struct Provider<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    secretbox: Option<Keys<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aescbc: Option<Keys<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aesgcm: Option<Keys<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<Empty>,
}

#[derive(Serialize)]
struct Keys<'a> {
    keys: Vec<Key<'a>>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Key<'a> {
    name: &'a str,
    secret: &'a str,
}

/// `encryption-config.yaml`: the chosen provider first with `keys` in
/// order (the first encrypts new writes, every one decrypts: a key
/// rotation's overlap), `identity` last so Secrets written before
/// encryption was enabled stay readable.
pub fn encryption_config(
    provider: EncryptionProvider,
    keys: &[EncryptionKey],
) -> Result<Secret, serde_yaml::Error> {
    let secrets: Vec<Zeroizing<String>> = keys
        .iter()
        .map(|k| Zeroizing::new(STANDARD.encode(k.key.expose())))
        .collect();
    let keys = Some(Keys {
        keys: keys
            .iter()
            .zip(&secrets)
            .map(|(k, secret)| Key {
                name: &k.name,
                secret,
            })
            .collect(),
    });
    let first = match provider {
        EncryptionProvider::Secretbox => Provider {
            secretbox: keys,
            ..Provider::default()
        },
        EncryptionProvider::Aescbc => Provider {
            aescbc: keys,
            ..Provider::default()
        },
        EncryptionProvider::Aesgcm => Provider {
            aesgcm: keys,
            ..Provider::default()
        },
    };
    let identity = Provider {
        identity: Some(Empty {}),
        ..Provider::default()
    };
    let config = EncryptionConfiguration {
        api_version: "apiserver.config.k8s.io/v1",
        kind: "EncryptionConfiguration",
        resources: [Resources {
            resources: ["secrets"],
            providers: [first, identity],
        }],
    };
    serde_yaml::to_string(&config).map(Secret::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, byte: u8) -> EncryptionKey {
        EncryptionKey {
            name: name.into(),
            key: Secret::new(vec![byte; 32]),
        }
    }

    #[test]
    fn provider_first_identity_last_key_base64() {
        let out = encryption_config(EncryptionProvider::Aescbc, &[key("key1", 7)]).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_slice(out.expose()).unwrap();
        let providers = &v["resources"][0]["providers"];
        assert_eq!(v["kind"], "EncryptionConfiguration");
        assert_eq!(v["resources"][0]["resources"][0], "secrets");
        assert_eq!(
            providers[0]["aescbc"]["keys"][0]["secret"],
            STANDARD.encode([7u8; 32])
        );
        assert_eq!(
            providers[1]["identity"],
            serde_yaml::Value::Mapping(serde_yaml::Mapping::new())
        );
        assert_eq!(providers.as_sequence().unwrap().len(), 2);
        assert_eq!(providers[0]["aescbc"]["keys"][0]["name"], "key1");
    }

    /// During a rotation both keys decrypt; the first one encrypts.
    #[test]
    fn every_key_in_order_the_writer_first() {
        let keys = [key("key-20261202T100000Z", 1), key("key1", 2)];
        let out = encryption_config(EncryptionProvider::Secretbox, &keys).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_slice(out.expose()).unwrap();
        let listed = &v["resources"][0]["providers"][0]["secretbox"]["keys"];
        assert_eq!(listed[0]["name"], "key-20261202T100000Z");
        assert_eq!(listed[1]["name"], "key1");
        assert_eq!(listed[1]["secret"], STANDARD.encode([2u8; 32]));
    }
}

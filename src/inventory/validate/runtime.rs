//! `runtime:`: containerd on the nodes.

use super::super::model::Runtime;
use super::super::schema::RawRuntime;
use super::Problems;

/// The pause image of Kubernetes 1.32–1.34 (kubeadm's default for them).
pub const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";

pub(super) fn runtime(raw: &RawRuntime, p: &mut Problems) -> Runtime {
    let sandbox_image = match &raw.sandbox_image {
        Some(image) => {
            if !is_image_reference(image) {
                p.error(
                    "runtime.sandboxImage",
                    format!(
                        "`{}` is not an image reference (`registry/name:tag` or `name@sha256:<64 hex>`, lowercase name)",
                        image
                    ),
                );
            }
            image.clone()
        }
        None => DEFAULT_SANDBOX_IMAGE.to_string(),
    };
    Runtime {
        sandbox_image,
        restrict_oom_score_adj: raw.restrict_oom_score_adj.unwrap_or(false),
    }
}

/// An image reference as containerd parses one (the distribution reference
/// grammar): `[domain[:port]/]path[:tag][@sha256:digest]`, lowercase path
/// components. The character set leaves nothing that TOML, YAML or a shell
/// would read specially.
pub fn is_image_reference(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        let domain = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?";
        regex::Regex::new(&format!(
            r"^(?:{domain}/)?{component}(?:/{component})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[a-f0-9]{{64}})?$"
        ))
        .expect("static regex")
    });
    s.len() <= 255 && re.is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "registry.k8s.io/pause:3.10",
            "pause",
            "localhost:5000/team/pause:1",
            "10.77.0.1:5000/rampart-lab/pause:1",
            "registry.example.com/pause@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(is_image_reference(ok), "{ok}");
        }
        for bad in [
            "",
            "Registry/Pause",
            "pause:3.10\"\nsandbox_image = \"evil",
            "pause:tag with space",
            "a//b",
            "pause@sha256:short",
            "-pause",
        ] {
            assert!(!is_image_reference(bad), "{bad:?}");
        }
    }
}

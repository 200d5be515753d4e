//! `kernel-settings`: sets the kernel values the plan found different from
//! the host's rendered `/etc/sysctl.d/` files (which only act at boot), before
//! anything starts that checks them (the kubelet's protectKernelDefaults).
//!
//! A value the host cannot set is not in the plan's work: it was a
//! preflight error (or, with the kubelet's start skipped, a warning).

use std::fmt::Write as _;

use crate::plan::kernel::{proc_path, SysctlChange};
use crate::remote::script::{at, quote, PRELUDE};
use crate::remote::{BoxFuture, Input};

use super::{for_each, ApplyRun, Ctx, PlannedHost};
use crate::engine::{step, Env, Phase, PhaseError};

pub struct KernelSettings;

fn with_changes(targets: &[PlannedHost]) -> Vec<&PlannedHost> {
    targets
        .iter()
        .filter(|t| !t.plan.sysctls.is_empty() || t.plan.load_modules)
        .collect()
}

/// Loads the modules-load.d modules when `load_modules` (systemd's own
/// loader: built-in modules are fine, and a host that may not load modules,
/// such as a container, skips it by its ConditionCapability), then writes
/// each settable value to `/proc/sys`, as `sysctl -w` would.
pub fn script(load_modules: bool, changes: &[SysctlChange]) -> String {
    let mut s = String::from(PRELUDE);
    if load_modules {
        s.push_str("systemctl restart systemd-modules-load.service\n");
    }
    for c in changes.iter().filter(|c| c.settable) {
        let path = at(&proc_path(&c.key));
        let _ = writeln!(
            s,
            "[ -e {path} ] || {{ echo {} >&2; exit 3; }}\nprintf '%s\\n' {} > {path}",
            quote(&format!(
                "kernel setting {} does not exist here: is its module loaded? (`modprobe br_netfilter` for net.bridge.*)",
                c.key
            )),
            quote(&c.to),
        );
    }
    s
}

impl Phase<ApplyRun<'_>> for KernelSettings {
    fn name(&self) -> &'static str {
        "kernel-settings"
    }
    fn title(&self) -> &'static str {
        "set kernel settings now (sysctl.d acts at boot)"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_changes(&s.targets).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            for_each(ctx, self.name(), with_changes(ctx.targets), move |t| {
                Box::pin(async move {
                    let text = script(t.plan.load_modules, &t.plan.sysctls);
                    step(ctx, t, "sysctl", &text, Input::None).await?;
                    for c in &t.plan.sysctls {
                        ctx.reporter
                            .line(&t.host.name, &format!("kernel {} = {}", c.key, c.to));
                    }
                    Ok(())
                })
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_what_can_be_set() {
        let changes = [
            SysctlChange {
                key: "vm.overcommit_memory".into(),
                from: Some("0".into()),
                to: "1".into(),
                settable: true,
            },
            SysctlChange {
                key: "kernel.panic".into(),
                from: Some("0".into()),
                to: "10".into(),
                settable: false,
            },
        ];
        let text = script(false, &changes);
        assert!(
            text.ends_with("printf '%s\\n' 1 > \"$R\"/proc/sys/vm/overcommit_memory\n"),
            "{text}"
        );
        assert!(!text.contains("kernel/panic"));
    }
}

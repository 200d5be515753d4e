//! The phases that put files on hosts: binaries from the artifacts dir, then
//! the rendered bundle, then systemd's view of it (daemon-reload, verify, enable).
//!
//! Every write is two steps. *Stage* streams the new bytes into hidden
//! `.<name>.rampart-new` files beside their targets (fsynced, mode and owner
//! already set); a dropped connection here changes no real path, and the
//! stage script removes its partial copies on any failed exit. *Commit* then
//! checks every staged sha256 (all or nothing), keeps the previous versions
//! under `/var/lib/rampart/backup/<run>/` and renames the new ones in place.

use crate::plan::desired::Body;
use crate::plan::{FileAction, FileChange, HostPlan, BACKUP_DIR, RECORD};
use crate::remote::script::{self, Attrs, Commit, Staged};
use crate::remote::{BoxFuture, Input};
use crate::render::Service;

use super::{for_each, ApplyRun, Ctx, PlannedHost};
use crate::engine::{step, Env, Phase, PhaseError, StepError};

/// `upload-binaries`: binaries from `binaries.artifacts`, sha256-checked.
pub struct UploadBinaries;

/// `install-files`: the rendered bundle, directories and the host's record.
pub struct InstallFiles;

/// `systemd`: daemon-reload when units changed, `systemd-analyze verify`,
/// enable every service the host runs.
pub struct Systemd;

impl Phase<ApplyRun<'_>> for UploadBinaries {
    fn name(&self) -> &'static str {
        "upload-binaries"
    }
    fn title(&self) -> &'static str {
        "upload binaries"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_work(&s.targets, |p| !p.binaries.is_empty()).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            for_each(
                ctx,
                self.name(),
                with_work(ctx.targets, |p| !p.binaries.is_empty()),
                move |t| Box::pin(upload_binaries(ctx, t)),
            )
            .await
        })
    }
}

/// Binaries are large: one stage per binary, streamed from the local file.
async fn upload_binaries(ctx: &Ctx<'_>, t: &PlannedHost) -> Result<(), StepError> {
    for change in t.plan.binaries.iter().filter(|c| c.needs_upload()) {
        let want = t
            .desired
            .binaries
            .iter()
            .find(|w| w.path == change.path)
            .expect("planned binaries come from the desired state");
        let Body::Artifact { path, size } = &want.body else {
            unreachable!("binaries are artifacts")
        };
        let staged = [staged(change, *size)];
        let name = change.path.rsplit('/').next().unwrap_or(&change.path);
        step(
            ctx,
            t,
            &format!("upload {name}"),
            &script::stage(&staged),
            Input::File(path.clone()),
        )
        .await?;
        if change.path == crate::backup::RAMPART_PATH {
            agent_runs(ctx, t, &change.path).await?;
        }
    }
    commit(ctx, t, &t.plan.binaries, false).await
}

/// The rampart agent is this very binary, built on the admin machine: one
/// linked against a newer glibc than the host has cannot start there. It is
/// run once, staged, before it replaces anything; if it cannot run, the
/// staged copy goes and the host keeps what it had.
async fn agent_runs(ctx: &Ctx<'_>, t: &PlannedHost, path: &str) -> Result<(), StepError> {
    let staged = script::at(&script::staged_path(path));
    let check = format!(
        "{}if ! out=$({staged} --version 2>&1); then rm -f {staged}; printf '%s\\n' \"$out\" >&2; exit 1; fi\n",
        script::PRELUDE
    );
    ctx.reporter
        .step(&t.host.name, "check the uploaded rampart runs");
    let out = t.remote.run(&check, Input::None).await?;
    if out.success() {
        return Ok(());
    }
    Err(StepError::Script {
        step: "run the uploaded rampart agent".into(),
        status: out.status.map_or("signal".into(), |s| s.to_string()),
        stderr: format!(
            "{}: the rampart built on this machine does not start on {} (often a newer glibc here than there); build rampart on a machine no newer than the hosts. Nothing was replaced",
            out.stderr_tail(),
            t.host.name
        ),
    })
}

impl Phase<ApplyRun<'_>> for InstallFiles {
    fn name(&self) -> &'static str {
        "install-files"
    }
    fn title(&self) -> &'static str {
        "install files"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_work(&s.targets, needs_install).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            for_each(
                ctx,
                self.name(),
                with_work(ctx.targets, needs_install),
                move |t| Box::pin(install_files(ctx, t)),
            )
            .await
        })
    }
}

fn needs_install(p: &HostPlan) -> bool {
    !p.files.is_empty() || !p.dirs.is_empty() || !p.users.is_empty() || p.record_changed
}

async fn install_files(ctx: &Ctx<'_>, t: &PlannedHost) -> Result<(), StepError> {
    let record = record_bytes(&t.plan);
    let uploads: Vec<&FileChange> = t.plan.files.iter().filter(|c| c.needs_upload()).collect();
    let mut staged_files: Vec<Staged> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    for change in &uploads {
        let want = t
            .desired
            .files
            .iter()
            .find(|w| w.path == change.path)
            .expect("planned files come from the desired state");
        let Body::Rendered(contents) = &want.body else {
            unreachable!("bundle files are rendered")
        };
        staged_files.push(staged(change, contents.bytes().len() as u64));
        bytes.extend_from_slice(contents.bytes());
    }
    if t.plan.record_changed {
        staged_files.push(Staged {
            path: RECORD.into(),
            mode: 0o600,
            owner: "root".into(),
            group: "root".into(),
            size: record.len() as u64,
        });
        bytes.extend_from_slice(&record);
    }
    if !staged_files.is_empty() {
        let n = staged_files.len();
        step(
            ctx,
            t,
            &format!("stage {}", crate::words::count(n, "file")),
            &script::stage(&staged_files),
            Input::Bytes(bytes),
        )
        .await?;
    }
    commit(ctx, t, &t.plan.files, true).await?;
    Ok(())
}

/// Moves staged files into place (after checking their hashes), applies mode
/// and owner fixes and removes retired files; for the bundle (not binaries)
/// also creates directories and installs the record.
async fn commit(
    ctx: &Ctx<'_>,
    t: &PlannedHost,
    changes: &[FileChange],
    bundle: bool,
) -> Result<(), StepError> {
    let mut c = Commit {
        backup_dir: format!("{BACKUP_DIR}/{}", ctx.stamp),
        ..Default::default()
    };
    for change in changes {
        match change.action {
            FileAction::Remove => c.remove.push(change.path.clone()),
            _ if change.needs_upload() => {
                c.install.push((change.path.clone(), change.sha256.clone()))
            }
            // Only mode or owner differ: fix them in place, no upload.
            _ => c.fix.push(Attrs {
                path: change.path.clone(),
                mode: change.mode,
                owner: change.owner.clone(),
                group: change.group.clone(),
            }),
        }
    }
    if bundle && t.plan.record_changed {
        let record = record_bytes(&t.plan);
        c.install
            .push((RECORD.into(), crate::digest::sha256_hex(&record)));
    }
    if bundle {
        c.users = t.plan.users.clone();
        c.dirs = t
            .plan
            .dirs
            .iter()
            .map(|d| Attrs {
                path: d.path.clone(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            })
            .collect();
    }
    step(ctx, t, "commit", &script::commit(&c), Input::None).await?;
    Ok(())
}

impl Phase<ApplyRun<'_>> for Systemd {
    fn name(&self) -> &'static str {
        "systemd"
    }
    fn title(&self) -> &'static str {
        "reload, verify and enable units"
    }
    fn hosts(&self, s: &ApplyRun) -> usize {
        with_work(&s.targets, needs_systemd).len()
    }
    fn run<'a>(
        &'a self,
        env: &'a Env<'a>,
        s: &'a mut ApplyRun<'_>,
    ) -> BoxFuture<'a, Result<(), PhaseError>> {
        Box::pin(async move {
            let ctx = &Ctx::new(env, s);
            for_each(
                ctx,
                self.name(),
                with_work(ctx.targets, needs_systemd),
                move |t| Box::pin(systemd(ctx, t)),
            )
            .await
        })
    }
}

fn needs_systemd(p: &HostPlan) -> bool {
    p.daemon_reload || !p.enable.is_empty()
}

async fn systemd(ctx: &Ctx<'_>, t: &PlannedHost) -> Result<(), StepError> {
    if t.plan.daemon_reload {
        step(
            ctx,
            t,
            "daemon-reload",
            &script::systemctl("daemon-reload", &[]),
            Input::None,
        )
        .await?;
        verify_units(ctx, t).await?;
    }
    if !t.plan.enable.is_empty() {
        let units: Vec<String> = t.plan.enable.iter().map(|s| s.unit()).collect();
        let units: Vec<&str> = units.iter().map(String::as_str).collect();
        // --no-reload: the units are loaded already (daemon-reload above when
        // they changed); enabling only adds symlinks. Without it systemd
        // reloads a second time, the slowest step of a first apply.
        step(
            ctx,
            t,
            "enable",
            &script::systemctl("enable --no-reload", &units),
            Input::None,
        )
        .await?;
    }
    Ok(())
}

/// `systemd-analyze verify` on the host, over every unit the host runs. A
/// binary that is absent is only tolerated for services whose start phase
/// this run skips (the lab installs units without Kubernetes binaries).
async fn verify_units(ctx: &Ctx<'_>, t: &PlannedHost) -> Result<(), StepError> {
    let units: Vec<String> = t
        .desired
        .services
        .iter()
        .map(|s| crate::plan::unit_path(*s))
        .collect();
    ctx.reporter.step(&t.host.name, "systemd-analyze verify");
    let out = t
        .remote
        .run(&script::verify_units(&units), Input::None)
        .await?;
    if out.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &out.stdout_text();
    let problems = unit_problems(&text, &t.desired.services, ctx.not_starting);
    if problems.is_empty() {
        return Ok(());
    }
    Err(StepError::Script {
        step: "systemd-analyze verify".into(),
        status: out
            .status
            .map_or_else(|| "signal".into(), |s| s.to_string()),
        stderr: problems.join("; "),
    })
}

/// The lines of `systemd-analyze verify` output that are real problems.
/// "Command /usr/local/bin/kubelet is not executable" is not one when the
/// kubelet's start is skipped: the binary is expected to come later.
pub fn unit_problems(output: &str, services: &[Service], not_starting: &[Service]) -> Vec<String> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let missing_binary = l.contains("is not executable") || l.contains("No such file");
            let skipped = services
                .iter()
                .any(|s| not_starting.contains(s) && l.starts_with(&format!("{}.", s.name())));
            !(missing_binary && skipped)
        })
        // systemd explains a failed unit twice; the second line adds nothing.
        .filter(|l| !l.starts_with("Unit ") || !l.contains("failed to load"))
        .map(str::to_string)
        .collect()
}

fn staged(change: &FileChange, size: u64) -> Staged {
    Staged {
        path: change.path.clone(),
        mode: change.mode,
        owner: change.owner.clone(),
        group: change.group.clone(),
        size,
    }
}

/// Targets whose plan has work for a phase, in inventory order.
fn with_work(targets: &[PlannedHost], pred: fn(&HostPlan) -> bool) -> Vec<&PlannedHost> {
    targets.iter().filter(|t| pred(&t.plan)).collect()
}

/// The record written to the host: every path rampart manages there.
pub fn record_bytes(plan: &HostPlan) -> Vec<u8> {
    let record = crate::plan::facts::Record {
        files: plan.record.clone(),
    };
    let mut bytes = serde_json::to_vec_pretty(&record).expect("record serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_fine_only_when_its_start_is_skipped() {
        let out = "kubelet.service: Command /usr/local/bin/kubelet is not executable: No such file or directory\n\
                   Unit kubelet.service failed to load properly, please adjust/correct and reload service manager: No such file or directory\n\
                   etcd.service: Unknown key name 'Foo' in section 'Service', ignoring.\n";
        let services = [Service::Etcd, Service::Kubelet];
        assert_eq!(
            unit_problems(out, &services, &[Service::Kubelet]),
            vec!["etcd.service: Unknown key name 'Foo' in section 'Service', ignoring."]
        );
        assert_eq!(unit_problems(out, &services, &[]).len(), 2);
    }
}

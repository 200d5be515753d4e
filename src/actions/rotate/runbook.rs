//! The rotation runbook (a CA or the service-account key): its steps and
//! what undoes each.

use crate::engine::runbook::{Runbook, RunbookStep};
use crate::pki::rotation::Rotated;
use crate::rotate::{kind, Step};

use super::encryption::Rewrite;
use super::phases::Carry;
use super::RotateRun;

/// add-new, reissue, drop-old, finish; backward: restore-old, reissue-old,
/// forget-new (finish has no undo: the old CA is gone by then).
///
/// The encryption key adds a rewrite after `reissue` (every Secret under
/// the new key before `drop-old`), and one after `reissue-old` in a
/// rollback (every Secret under the old key before `forget-new`).
pub fn rotation<'p, 'r: 'p>(what: Rotated) -> Runbook<'p, RotateRun<'r>> {
    let carry = |step| Carry { step, what };
    let mut reissue = RunbookStep::new(carry(Step::Reissue)).undone_by(carry(Step::ReissueOld));
    let mut steps = vec![RunbookStep::new(carry(Step::AddNew)).undone_by(carry(Step::ForgetNew))];
    if what == Rotated::EncryptionKey {
        reissue = reissue.undone_by(Rewrite(Step::RewriteOld));
        steps.push(reissue);
        steps.push(RunbookStep::new(Rewrite(Step::Rewrite)));
    } else {
        steps.push(reissue);
    }
    steps.push(RunbookStep::new(carry(Step::DropOld)).undone_by(carry(Step::RestoreOld)));
    steps.push(RunbookStep::new(carry(Step::Finish)));
    Runbook {
        kind: kind(what),
        steps,
    }
}

#[cfg(test)]
mod tests {
    use crate::pki::rotation::Rotated;
    use crate::rotate::{backward, forward};

    /// Every kind of rotation: the runbook runs the plan's steps in the
    /// plan's order, both ways.
    #[test]
    fn forward_and_backward_orders_match_the_plan() {
        let names = |v: Vec<&dyn crate::engine::Phase<super::RotateRun>>| {
            v.iter().map(|p| p.name()).collect::<Vec<_>>()
        };
        let want =
            |steps: &[crate::rotate::Step]| steps.iter().map(|s| s.name()).collect::<Vec<_>>();
        for what in [
            Rotated::Etcd,
            Rotated::Kubernetes,
            Rotated::FrontProxy,
            Rotated::ServiceAccountKey,
            Rotated::EncryptionKey,
        ] {
            let book = super::rotation(what);
            assert_eq!(names(book.forward()), want(forward(what)), "{what:?}");
            assert_eq!(names(book.backward()), want(backward(what)), "{what:?}");
        }
    }
}

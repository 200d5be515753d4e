//! The rotation runbook (a CA or the service-account key): its steps and
//! what undoes each.

use crate::engine::runbook::{Runbook, RunbookStep};
use crate::pki::rotation::Rotated;
use crate::rotate::{kind, Step};

use super::phases::Carry;
use super::RotateRun;

/// add-new, reissue, drop-old, finish; backward: restore-old, reissue-old,
/// forget-new (finish has no undo: the old CA is gone by then).
pub fn rotation<'p, 'r: 'p>(what: Rotated) -> Runbook<'p, RotateRun<'r>> {
    let carry = |step| Carry { step, what };
    Runbook {
        kind: kind(what),
        steps: vec![
            RunbookStep::new(carry(Step::AddNew)).undone_by(carry(Step::ForgetNew)),
            RunbookStep::new(carry(Step::Reissue)).undone_by(carry(Step::ReissueOld)),
            RunbookStep::new(carry(Step::DropOld)).undone_by(carry(Step::RestoreOld)),
            RunbookStep::new(carry(Step::Finish)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use crate::rotate::{BACKWARD, FORWARD};

    #[test]
    fn forward_and_backward_orders_match_the_plan() {
        let book = super::rotation(crate::pki::rotation::Rotated::ServiceAccountKey);
        let names = |v: Vec<&dyn crate::engine::Phase<super::RotateRun>>| {
            v.iter().map(|p| p.name()).collect::<Vec<_>>()
        };
        let want =
            |steps: &[crate::rotate::Step]| steps.iter().map(|s| s.name()).collect::<Vec<_>>();
        assert_eq!(names(book.forward()), want(&FORWARD));
        assert_eq!(names(book.backward()), want(&BACKWARD));
    }
}

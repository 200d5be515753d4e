//! The CA rotation runbook: its steps and what undoes each.

use crate::engine::runbook::{Runbook, RunbookStep};
use crate::rotate::{Step, KIND};

use super::phases::Carry;
use super::RotateRun;

/// add-new, reissue, drop-old, finish; backward: restore-old, reissue-old,
/// forget-new (finish has no undo: the old CA is gone by then).
pub fn rotation<'p, 'r: 'p>() -> Runbook<'p, RotateRun<'r>> {
    Runbook {
        kind: KIND,
        steps: vec![
            RunbookStep::new(Carry(Step::AddNew)).undone_by(Carry(Step::ForgetNew)),
            RunbookStep::new(Carry(Step::Reissue)).undone_by(Carry(Step::ReissueOld)),
            RunbookStep::new(Carry(Step::DropOld)).undone_by(Carry(Step::RestoreOld)),
            RunbookStep::new(Carry(Step::Finish)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use crate::rotate::{BACKWARD, FORWARD};

    #[test]
    fn forward_and_backward_orders_match_the_plan() {
        let book = super::rotation();
        let names = |v: Vec<&dyn crate::engine::Phase<super::RotateRun>>| {
            v.iter().map(|p| p.name()).collect::<Vec<_>>()
        };
        let want =
            |steps: &[crate::rotate::Step]| steps.iter().map(|s| s.name()).collect::<Vec<_>>();
        assert_eq!(names(book.forward()), want(&FORWARD));
        assert_eq!(names(book.backward()), want(&BACKWARD));
    }
}

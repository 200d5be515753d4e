//! CIS Kubernetes Benchmark self-check: evaluates a rendered bundle against
//! kube-bench's check definitions.

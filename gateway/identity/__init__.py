"""Workload identity: SPIFFE IDs (`spiffe`), certificate building (`certs`, pure), the certificate
authority on disk (`ca`), join tokens and the control plane's signing (`tokens`, `issuer`, `proof`),
and this process's own identity: joining (`join`), renewal (`renewal`) and the loaded bundle
(`bundle`). Revocation is the next step of issue 12.

Private keys are made where they are used and never cross an API: the CA's keys stay in its
directory, a workload's key stays with the workload (it sends a CSR).
"""

"""Workload identity: SPIFFE IDs (`spiffe`), certificate building (`certs`, pure), the certificate
authority on disk (`ca`). This process's certificate bundle (join, renewal) comes next (issue 12).

Private keys are made where they are used and never cross an API: the CA's keys stay in its
directory, a workload's key stays with the workload (it sends a CSR).
"""

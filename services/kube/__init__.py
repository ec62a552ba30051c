"""Kubernetes Jobs through the `kubernetes` Python client: the job backend of the tuning worker and of
`qanchor train submit` (docs/jobs.md).

    settings.py   KubeJobSettings (QANCHOR_KUBE_*): where to connect, image, GPUs, node selector, tolerations, TTL
    manifests.py  pure builders: a tuning Job, a pretraining Job (Indexed + headless Service for torchrun c10d)
    backend.py    KubeJobBackend: submit, watch, stream logs, read the result, cancel (delete with propagation)
    entry.py      what a Job's container runs around the real command: progress lines and the result message
"""

"""The operator's tools: what a person or a fleet's monitoring reads.

Owns: the aws_logger_status table, the state file beside each spool and `status` reading it
(`status`), the Prometheus text file (`metrics`), and the `status`, `check` and `help`
commands (`commands`).

May import: everything but the application modules (`extension`, `cli`): it reads what the
stages publish and never changes it.
"""

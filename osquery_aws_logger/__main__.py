"""`python -m osquery_aws_logger`: the same as the osquery-aws-logger command."""

from .cli import main

raise SystemExit(main())

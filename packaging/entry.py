"""PyInstaller's entry point for the packaged extension: the `osquery-aws-logger` command."""

from osquery_aws_logger.cli import main

raise SystemExit(main())

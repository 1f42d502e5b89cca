"""The fleet simulation (issue 21): thousands of hosts running the extension's own delivery code
against a model of Kinesis, Firehose and STS, in virtual time. `make simulate`; see sim/run.py.

Layout: `spool` (an in-memory spool double), `model` (AWS and the network), `host` (the one
module that imports the extension), `fleet` (the event loop), `scenarios`, `run`, `chart`.
"""

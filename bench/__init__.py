"""`make bench`: the extension measured side by side with its floors (see bench/README.md)."""
